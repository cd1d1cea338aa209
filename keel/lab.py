"""The local lab: throwaway Debian hosts booted with ``systemd-nspawn --boot``.

Each host is a copy-on-write overlay of one cached base image built by
mmdebstrap, boots systemd as PID 1 in its own network namespace, hangs off a
bridge on the controller with a static address, and reaches the Debian archive
and PyPI through an nftables masquerade rule. The lab writes an ordinary
Ansible YAML inventory, so every task can target it like any other fleet.

State lives under ``KEEL_LAB_DIR`` (default ``/var/lib/keel-lab``)::

    images/<release>-<digest>/rootfs    cached base images (read-only lower layers)
    cache/debs, cache/pip               shared .deb and wheel caches (lab-only speed-up)
    ssh/id_ed25519                      the lab's login key, generated once
    <lab>/hosts/<name>/                 upper, work, merged, console.log, host.json
    <lab>/net.json                      what the lab changed on the controller

Example::

    lab = Lab()
    hosts = lab.up(count=2, release="bookworm")
    lab.write_inventory(Path("inventory/lab.yml"))
    lab.down()
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

RELEASES = ("bookworm", "trixie")
LOGIN_USER = "debian"
MIRROR = "http://deb.debian.org/debian"
# What a fresh Debian cloud VM has: init, sshd, sudo, python3, TLS roots, ip.
# Nothing the toolkit's roles install (no nginx, no venv, no uwsgi).
IMAGE_PACKAGES = (
    "systemd-sysv", "dbus", "openssh-server", "sudo", "python3", "ca-certificates",
    "iproute2", "iputils-ping", "curl", "netbase", "less",
)
# Image recipe version: bump when the build steps change so caches rebuild.
IMAGE_RECIPE = "3"
MIN_FREE_BYTES = 2 * 1024**3
HOST_READY_TIMEOUT = 120.0
CONTROLLER_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Every host's systemd, journald and logind take inotify instances from the
# controller's root user (one kernel), 128 by default: that runs out at about
# ten hosts, and then `journalctl --follow` on a host stops following.
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
MIN_INOTIFY_INSTANCES = 1024


# Keeps a host up across guest reboots, as a VM's hypervisor does: systemd-nspawn
# exits with 133 when the container asks for a reboot, and this boots it again
# (same overlay, address and host key). Any other exit (a poweroff, a crash) ends
# it. SIGTERM/SIGINT/SIGHUP go to nspawn (a clean poweroff) and stop the loop.
SUPERVISOR = r"""
import signal, subprocess, sys
child, stopping = None, False
def stop(sig, frame):
    global stopping
    stopping = True
    if child is not None:
        child.send_signal(sig)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, stop)
rc = 0
while not stopping:
    child = subprocess.Popen(sys.argv[1:])
    rc = child.wait()
    if rc != 133:
        break
sys.exit(rc)
"""
REBOOT_STATUS = 133


class LabError(Exception):
    """A one-line reason the lab cannot do what was asked."""


@dataclass
class LabHost:
    """One lab host as recorded in ``host.json``."""

    name: str
    address: str
    release: str
    pid: int
    started: float
    machine: str

    @property
    def alive(self) -> bool:
        return _pid_alive(self.pid)


def default_lab_dir() -> Path:
    return Path(os.environ.get("KEEL_LAB_DIR", "/var/lib/keel-lab"))


class Lab:
    """A named set of lab hosts sharing one bridge, one subnet and one nft table.

    Several labs can coexist (the test suite uses its own) as long as their
    names and subnets differ. Images, caches and the SSH key are shared.
    """

    def __init__(
        self,
        name: str = "keel",
        subnet: str | None = None,
        root: Path | None = None,
    ) -> None:
        if not name.isalnum() or len(name) > 8:
            raise LabError(f"lab name {name!r} must be 1-8 letters or digits")
        self.name = name
        self.root = root or default_lab_dir()
        self.dir = self.root / "labs" / name
        self.subnet = ipaddress.ip_network(
            subnet or os.environ.get("KEEL_LAB_SUBNET", "10.83.0.0/24")
        )
        self.bridge = f"{name}br0"
        self.nft_table = f"{name}_lab"
        self.gateway = str(next(self.subnet.hosts()))

    # ----------------------------------------------------------------- paths
    @property
    def key_file(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def _host_dir(self, name: str) -> Path:
        return self.dir / "hosts" / name

    # ------------------------------------------------------------ lifecycle
    def up(self, count: int = 1, release: str = "bookworm") -> list[LabHost]:
        """Ensure ``count`` running hosts of ``release``; return them all.

        Stale state from a crash is cleaned first. Hosts already running are
        kept; missing ones are created, so ``up`` is cheap to repeat.
        """
        self.preflight(release)
        self.clean_stale()
        hosts = self.hosts()
        others = [h for h in hosts if h.release != release]
        if others:
            raise LabError(
                f"lab {self.name!r} already runs {others[0].release} hosts; "
                "run 'fab lab.down' first"
            )
        image = ensure_image(self.root, release)
        self._ensure_key()
        self._network_up()
        taken = {h.name for h in hosts}
        new_names = [f"lab{i}" for i in range(1, 250) if f"lab{i}" not in taken]
        new_names = new_names[: max(0, count - len(hosts))]
        try:
            started = [self._start_host(n, image, release) for n in new_names]
            for host in started:
                self._wait_ready(host)
        except BaseException:
            for n in new_names:  # half-created hosts help nobody
                self._stop_host(self._host_dir(n))
            if not self.hosts():
                self._network_down()
            raise
        return self.hosts()

    def down(self) -> None:
        """Stop every host and undo every change to the controller. Idempotent."""
        from keel import control  # the kept SSH connections to this lab's hosts go first

        control.stop_all(where=lambda c: _in_subnet(str(c.get("address")), self.subnet))
        hosts_dir = self.dir / "hosts"
        if hosts_dir.is_dir():
            for hdir in sorted(hosts_dir.iterdir()):
                self._stop_host(hdir)
        for machine in _orphan_machines(self.name):  # containers whose records are gone
            _kill_cgroup(machine)
            _remove_cgroup(machine)
        self._network_down()
        with contextlib.suppress(FileNotFoundError):
            self.known_hosts.unlink()
        if self.dir.is_dir():
            shutil.rmtree(self.dir, ignore_errors=True)

    def clean_stale(self) -> None:
        """Remove hosts whose nspawn process died (a crash, a killed run)."""
        hosts_dir = self.dir / "hosts"
        if not hosts_dir.is_dir():
            return
        for hdir in sorted(hosts_dir.iterdir()):
            host = _read_host(hdir)
            if host is None or not host.alive:
                self._stop_host(hdir)
        if not any(hosts_dir.iterdir()):
            self._network_down()

    def hosts(self) -> list[LabHost]:
        hosts_dir = self.dir / "hosts"
        if not hosts_dir.is_dir():
            return []
        found = [_read_host(d) for d in sorted(hosts_dir.iterdir())]
        return sorted((h for h in found if h), key=lambda h: int(h.name[3:]))

    def status(self) -> list[dict[str, str]]:
        """Rows of name, address, state and uptime for ``fab lab.status``."""
        rows = []
        for h in self.hosts():
            state = _systemd_state(h) if h.alive else "stopped"
            uptime = _format_seconds(time.time() - h.started) if h.alive else "-"
            rows.append(
                {"name": h.name, "address": h.address, "release": h.release,
                 "state": state, "uptime": uptime}
            )
        return rows

    def restart(self, name: str) -> LabHost:
        """Reboot one host as a power cycle would: stop nspawn, boot it again."""
        hdir = self._host_dir(name)
        host = _read_host(hdir)
        if host is None:
            raise LabError(f"{name}: no such lab host")
        _terminate(host.pid)
        _run(["umount", str(hdir / "merged")], check=False)
        image = ensure_image(self.root, host.release)
        new = self._boot(hdir, host.name, host.address, image, host.release)
        self._wait_ready(new)
        return new

    # ------------------------------------------------------------ inventory
    def write_inventory(self, path: Path) -> Path:
        """Write a standard Ansible YAML inventory: all -> app -> lab hosts."""
        hosts = {
            h.name: {
                "ansible_host": h.address,
                "ansible_port": 22,
                "ansible_user": LOGIN_USER,
                "ansible_ssh_private_key_file": str(self.key_file),
                "ansible_ssh_common_args": (
                    f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes"
                ),
            }
            for h in self.hosts()
        }
        doc = {"all": {"children": {"app": {"hosts": hosts}}}}
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# Written by 'fab lab.up' for lab {self.name!r}. Regenerated on every run.\n"
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        return path

    # -------------------------------------------------------------- checks
    def preflight(self, release: str) -> None:
        """Refuse early, before anything is created, with a one-line reason."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root: run as root (systemd-nspawn and mounts need it)")
        if release not in RELEASES:
            raise LabError(f"unknown release {release!r}: choose one of {', '.join(RELEASES)}")
        for tool, pkg in (("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap"),
                          ("nft", "nftables"), ("ip", "iproute2"), ("ssh-keygen", "openssh-client")):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} is missing: install it with 'apt-get install {pkg}'")
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free < MIN_FREE_BYTES:
            raise LabError(
                f"not enough disk under {self.root}: {free / 2**30:.1f} GiB free, "
                f"{MIN_FREE_BYTES / 2**30:.0f} GiB needed"
            )
        clash = self._subnet_clash()
        if clash:
            raise LabError(f"lab subnet {self.subnet} is already in use: {clash}")

    def _subnet_clash(self) -> str | None:
        routes = json.loads(_run(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]")
        for r in routes:
            dst, dev = r.get("dst", ""), r.get("dev", "")
            if dev == self.bridge or dst in ("", "default") or r.get("type") in ("local", "broadcast"):
                continue
            try:
                net = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if net.version == 4 and net.overlaps(self.subnet):
                return f"route {dst} via {dev or '?'}"
        addrs = json.loads(_run(["ip", "-j", "addr"]).stdout or "[]")
        for link in addrs:
            if link.get("ifname") == self.bridge:
                continue
            for a in link.get("addr_info", []):
                if a.get("family") == "inet" and ipaddress.ip_address(a["local"]) in self.subnet:
                    return f"address {a['local']} on {link['ifname']}"
        return None

    # ------------------------------------------------------------- network
    def _network_up(self) -> None:
        net_file = self.dir / "net.json"
        self.dir.mkdir(parents=True, exist_ok=True)
        if not net_file.exists():
            forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
            inotify = INOTIFY_INSTANCES.read_text().strip()
            net_file.write_text(json.dumps({"ip_forward": forward, "inotify_instances": inotify}))
        if int(INOTIFY_INSTANCES.read_text()) < MIN_INOTIFY_INSTANCES:
            INOTIFY_INSTANCES.write_text(str(MIN_INOTIFY_INSTANCES))
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        _run(["nft", "delete", "table", "ip", self.nft_table], check=False)
        rules = f"""
table ip {self.nft_table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {self.subnet} oifname != "{self.bridge}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{self.bridge}" accept
        oifname "{self.bridge}" ct state established,related accept
    }}
}}
"""
        _run(["nft", "-f", "-"], input=rules)

    def _network_down(self) -> None:
        _run(["nft", "delete", "table", "ip", self.nft_table], check=False)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _run(["ip", "link", "del", self.bridge], check=False)
        net_file = self.dir / "net.json"
        if net_file.exists():
            saved = json.loads(net_file.read_text())
            if not self._other_labs_running():
                Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.get("ip_forward", "0"))
                if saved.get("inotify_instances"):
                    INOTIFY_INSTANCES.write_text(saved["inotify_instances"])
            net_file.unlink()

    def _other_labs_running(self) -> bool:
        labs = self.root / "labs"
        return any(
            (d / "net.json").exists() for d in labs.iterdir() if d.name != self.name
        ) if labs.is_dir() else False

    # --------------------------------------------------------------- hosts
    def _ensure_key(self) -> None:
        if not self.key_file.exists():
            self.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "keel-lab",
                  "-f", str(self.key_file)])

    def _address_for(self, name: str) -> str:
        return str(self.subnet.network_address + 10 + int(name[3:]))

    def _start_host(self, name: str, image: Path, release: str) -> LabHost:
        hdir = self._host_dir(name)
        if hdir.exists():
            self._stop_host(hdir)
        for sub in ("upper", "work", "merged"):
            (hdir / sub).mkdir(parents=True)
        address = self._address_for(name)
        merged = hdir / "merged"
        _mount_overlay(image, hdir)
        try:
            self._customize_host(merged, name, address)
        finally:
            _run(["umount", str(merged)], check=False)
        return self._boot(hdir, name, address, image, release)

    def _customize_host(self, root: Path, name: str, address: str) -> None:
        """Give the host its identity: hostname, address, host key, login key."""
        (root / "etc/hostname").write_text(f"{name}\n")
        (root / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost\n"
        )
        (root / "etc/machine-id").write_text(os.urandom(16).hex() + "\n")
        network = root / "etc/systemd/network/10-lab.network"
        network.write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={address}/{self.subnet.prefixlen}\nGateway={self.gateway}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        hostkey = root / "etc/ssh/ssh_host_ed25519_key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}",
              "-f", str(hostkey)])
        pub = self.key_file.with_suffix(".pub").read_text()
        for home, uid in ((root / "root", 0), (root / "home" / LOGIN_USER, 1000)):
            ssh = home / ".ssh"
            ssh.mkdir(mode=0o700, exist_ok=True)
            (ssh / "authorized_keys").write_text(pub)
            (ssh / "authorized_keys").chmod(0o600)
            for p in (ssh, ssh / "authorized_keys"):
                os.chown(p, uid, uid)
        hostpub = hostkey.with_suffix(".pub").read_text().split()
        line = f"{address} {hostpub[0]} {hostpub[1]}\n"
        kh = self.known_hosts.read_text().splitlines(keepends=True) if self.known_hosts.exists() else []
        kh = [ln for ln in kh if not ln.startswith(f"{address} ")] + [line]
        self.known_hosts.write_text("".join(kh))

    def _boot(self, hdir: Path, name: str, address: str, image: Path, release: str) -> LabHost:
        merged = hdir / "merged"
        machine = f"{self.name}-{name}"
        cache = self.root / "cache"
        (cache / "pip").mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(merged):
            # Seed the upper layer before mounting: overlayfs wants it left alone after.
            _seed_debs(cache / "debs", hdir / "upper/var/cache/apt/archives")
            _mount_overlay(image, hdir)
        log = open(hdir / "console.log", "ab")  # noqa: SIM115 - handed to the child
        cmd = [
            "systemd-nspawn", "--boot", "--quiet", "--register=no",
            *([] if _host_has_systemd() else ["--keep-unit"]),
            f"--machine={machine}", f"--directory={merged}", f"--network-bridge={self.bridge}",
            "--resolv-conf=copy-host", "--timezone=copy", "--link-journal=no",
            "--console=read-only", f"--bind={cache / 'pip'}:/var/cache/lab-pip",
        ]
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, *cmd],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if _host_has_systemd() else lambda: _enter_cgroup(machine),
        )
        log.close()
        host = LabHost(name, address, release, proc.pid, time.time(), machine)
        (hdir / "host.json").write_text(json.dumps(asdict(host)))
        return host

    def _wait_ready(self, host: LabHost) -> None:
        """Wait until sshd accepts a TCP connection and speaks SSH."""
        deadline = time.monotonic() + HOST_READY_TIMEOUT
        while time.monotonic() < deadline:
            if not host.alive:
                tail = (self._host_dir(host.name) / "console.log").read_text(errors="replace")
                raise LabError(f"{host.name}: container exited during boot: {tail.strip()[-200:]}")
            with contextlib.suppress(OSError), socket.create_connection((host.address, 22), 0.5) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return
            time.sleep(0.1)
        tail = (self._host_dir(host.name) / "console.log").read_text(errors="replace").strip()
        last = tail.splitlines()[-1][-160:] if tail else "no console output"
        raise LabError(f"{host.name}: sshd not ready after {HOST_READY_TIMEOUT:.0f} s "
                       f"(console: {last})")

    def _stop_host(self, hdir: Path) -> None:
        host = _read_host(hdir)
        if host is not None:
            _terminate(host.pid)
            # If nspawn died without cleaning up (a crash), its container may
            # still run, orphaned; killing it also frees its veth and netns.
            _kill_cgroup(host.machine)
        merged = hdir / "merged"
        if os.path.ismount(merged):
            _run(["umount", str(merged)], check=False)
            if os.path.ismount(merged):
                _run(["umount", "-l", str(merged)], check=False)
        if host is not None:
            _harvest_debs(hdir / "upper/var/cache/apt/archives", self.root / "cache" / "debs")
            propagate = Path("/run/systemd/nspawn/propagate") / host.machine
            shutil.rmtree(propagate, ignore_errors=True)
            _remove_cgroup(host.machine)
        shutil.rmtree(hdir, ignore_errors=True)


# ----------------------------------------------------------------- image
def image_dir(root: Path, release: str) -> Path:
    digest = hashlib.sha256(
        "|".join((IMAGE_RECIPE, release, *IMAGE_PACKAGES)).encode()
        + _controller_ca_bundle()
    ).hexdigest()[:12]
    return root / "images" / f"{release}-{digest}"


def ensure_image(root: Path, release: str) -> Path:
    """Build the base image for ``release`` once; return its rootfs."""
    target = image_dir(root, release)
    rootfs = target / "rootfs"
    if (target / "ok").exists():
        return rootfs
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    tmp = target / "rootfs.tmp"
    proc = _run(
        ["mmdebstrap", "--variant=minbase", "--quiet",
         f"--include={','.join(IMAGE_PACKAGES)}", release, str(tmp), MIRROR],
        check=False,
    )
    if proc.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LabError(f"image build for {release} failed: {last[0]}")
    _prepare_image(tmp)
    _lab_only_trust_controller_ca(tmp)
    tmp.rename(rootfs)
    (target / "ok").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    for old in (root / "images").glob(f"{release}-*"):
        if old != target and not _image_in_use(old):
            shutil.rmtree(old, ignore_errors=True)
    return rootfs


def _prepare_image(root: Path) -> None:
    """Make the rootfs behave like a fresh cloud VM under nspawn."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # each host gets its own key
    (root / "etc/machine-id").write_text("")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    unit = next(p for p in (root / "lib/systemd/system/systemd-networkd.service",
                            root / "usr/lib/systemd/system/systemd-networkd.service") if p.exists())
    (wants / "systemd-networkd.service").symlink_to("/" + str(unit.relative_to(root)))
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    # The login user, as cloud-init would make it: passwordless sudo.
    _run(["chroot", str(root), "useradd", "--create-home", "--uid", "1000",
          "--shell", "/bin/bash", "--groups", "sudo", LOGIN_USER])
    sudoers = root / "etc/sudoers.d/90-cloud-init-users"
    sudoers.write_text(f"{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    # apt-get keeps .debs by default; say so, since the lab harvests them.
    (root / "etc/apt/apt.conf.d/90lab-keep-debs").write_text(
        'APT::Keep-Downloaded-Packages "true";\nBinary::apt::APT::Keep-Downloaded-Packages "true";\n'
    )


def _lab_only_trust_controller_ca(root: Path) -> None:
    """LAB ONLY: trust the controller's CA bundle inside the host.

    TLS egress on lab controllers may be re-signed by a local CA; without it
    pip on the host fails with CERTIFICATE_VERIFY_FAILED. Real servers never
    get this: it is not part of any role. The shared pip cache is lab-only too.
    """
    bundle = _controller_ca_bundle()
    if bundle:
        dest = root / "usr/local/share/ca-certificates/lab-controller-bundle.crt"
        dest.write_bytes(bundle)
        _run(["chroot", str(root), "update-ca-certificates", "--fresh"], check=False)
    (root / "etc/pip.conf").write_text(
        "# LAB ONLY: written by the lab, not by any role.\n[global]\n"
        "cert = /etc/ssl/certs/ca-certificates.crt\ncache-dir = /var/cache/lab-pip\n"
    )


def _controller_ca_bundle() -> bytes:
    try:
        return CONTROLLER_CA_BUNDLE.read_bytes()
    except OSError:
        return b""


def _image_in_use(image: Path) -> bool:
    needle = str(image / "rootfs")
    with open("/proc/mounts") as mounts:
        return any(needle in line for line in mounts)


# --------------------------------------------------------------- cgroups
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "keel-lab"


def _host_has_systemd() -> bool:
    """On a systemd controller nspawn gets its own scope; elsewhere we make one."""
    return Path("/run/systemd/system").is_dir()


def _cgroup_dirs(machine: str) -> list[Path]:
    if (CGROUP_ROOT / "cgroup.procs").exists():  # pure cgroup v2
        return [CGROUP_ROOT / CGROUP_PARENT / machine]
    # Hybrid or v1: systemd's own hierarchies, plus memory so a host can be measured.
    return [CGROUP_ROOT / h / CGROUP_PARENT / machine for h in ("systemd", "unified", "memory")
            if (CGROUP_ROOT / h / "cgroup.procs").exists()]


def _enter_cgroup(machine: str) -> None:
    """Runs in the nspawn child before exec: give each container its own cgroup.

    Without a host systemd, nspawn would otherwise put every container in the
    controller's root cgroup, and their systemd instances would trip over each
    other's units (status=219/CGROUP).
    """
    for d in _cgroup_dirs(machine):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(str(os.getpid()))


def _orphan_machines(lab: str) -> list[str]:
    names = set()
    for d in _cgroup_dirs(f"{lab}-*"):
        names.update(p.name for p in d.parent.glob(d.name) if p.is_dir())
    return sorted(names)


def _kill_cgroup(machine: str, timeout: float = 10.0) -> None:
    """SIGKILL every process left in a host's cgroups and wait until they are gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set()
        for d in _cgroup_dirs(machine):
            for procs in d.rglob("cgroup.procs") if d.is_dir() else []:
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_cgroup(machine: str) -> None:
    for d in _cgroup_dirs(machine):
        if d.is_dir():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            d.parent.rmdir()  # only succeeds once the last host is gone


def memory_bytes(host: LabHost) -> int | None:
    """Memory charged to a host's cgroup (v1 memory controller or v2), if known."""
    for name in ("memory.current", "memory.usage_in_bytes"):
        for d in _cgroup_dirs(host.machine):
            with contextlib.suppress(OSError, ValueError):
                return int((d / name).read_text())
    return None


# --------------------------------------------------------------- helpers
def _mount_overlay(image: Path, hdir: Path) -> None:
    _run(["mount", "-t", "overlay", "overlay", "-o",
          f"lowerdir={image},upperdir={hdir / 'upper'},workdir={hdir / 'work'}",
          str(hdir / "merged")])


def _seed_debs(cache: Path, archives: Path) -> None:
    """Hard-link cached .debs into the host so apt finds them already fetched."""
    if not cache.is_dir():
        return
    archives.mkdir(parents=True, exist_ok=True)
    for deb in cache.glob("*.deb"):
        dest = archives / deb.name
        if not dest.exists():
            with contextlib.suppress(OSError):
                os.link(deb, dest)


def _harvest_debs(archives: Path, cache: Path) -> None:
    """Keep the .debs a host downloaded, for the next host (lab-only cache)."""
    if not archives.is_dir():
        return
    cache.mkdir(parents=True, exist_ok=True)
    for deb in archives.glob("*.deb"):
        dest = cache / deb.name
        if not dest.exists():
            with contextlib.suppress(OSError):
                tmp = dest.with_suffix(".part")
                shutil.copyfile(deb, tmp)
                tmp.rename(dest)


def _read_host(hdir: Path) -> LabHost | None:
    try:
        return LabHost(**json.loads((hdir / "host.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm_ok = "systemd-nspawn" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return stat.split(") ", 1)[1][0] != "Z" and comm_ok
    except (OSError, IndexError):
        return False


def _terminate(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM nspawn (a clean poweroff of the container), then SIGKILL."""
    if not _pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)


def _systemd_state(host: LabHost) -> str:
    proc = _run(["nsenter", "-t", _container_init(host.pid), "-m", "-u", "-i", "-n", "-p",
                 "systemctl", "is-system-running"], check=False)
    return proc.stdout.strip() or "unknown"


def _children(pid: int | str) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return []


def _container_init(supervisor_pid: int) -> str:
    """The container's PID 1: the child of nspawn, itself the supervisor's child."""
    for nspawn in _children(supervisor_pid):
        kids = _children(nspawn)
        if kids:
            return kids[0]
    return str(supervisor_pid)


def _format_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _run(cmd: list[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{' '.join(cmd[:3])} failed: {err[-1] if err else proc.returncode}")
    return proc


def _in_subnet(address: str, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_address(address) in subnet
    except ValueError:
        return False
