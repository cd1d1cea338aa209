"""The lab itself: two fresh hosts that behave like cloud VMs, and a clean teardown."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.connection import Connection
from keel.inventory import Inventory
from keel.lab import Lab, LabError
from tests.conftest import ROOT, lab_leftovers

# A lab of its own, so teardown can be checked without disturbing shared hosts.
NAME, SUBNET = "ktlab", "10.83.8.0/24"


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, list]]:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root")
    lab = Lab(NAME, SUBNET)
    lab.down()
    inv = tmp_path_factory.mktemp("inv") / "lab.yml"
    try:
        lab.up(count=2)
        lab.write_inventory(inv)
        yield lab, Inventory.load(inv).hosts()
    finally:
        lab.down()


def test_inventory_is_standard_ansible_yaml(two_hosts) -> None:
    lab, hosts = two_hosts
    assert [h.name for h in hosts] == ["lab1", "lab2"]
    for h in hosts:
        assert "app" in h.groups and "all" in h.groups
        assert h.user == "debian" and h.port == 22
        assert h.key_file == str(lab.key_file)
        assert h.address.startswith("10.83.8.")


@pytest.mark.parametrize("index", [0, 1])
def test_host_is_like_a_fresh_cloud_vm(two_hosts, index: int) -> None:
    _, hosts = two_hosts
    spec, other = hosts[index], hosts[1 - index]
    conn = Connection.open(spec)  # SSH as the login user, then sudo -n for the agent
    try:
        assert conn.fabric.user == "debian"
        who = conn.run("id -u; logname 2>/dev/null || ps -o user= -p $(ps -o ppid= -p $PPID)")
        assert who.out.split()[0] == "0", who
        state = conn.run("systemctl is-system-running; systemctl --failed --no-legend --plain")
        first = state.out.split("\n", 1)
        assert first[0] in ("running", "degraded"), state.out
        assert first[0] == "running", f"{spec.name} degraded because of: {first[1].strip()}"
        sudo = conn.run("runuser -u debian -- sudo -n true")
        assert sudo.ok, sudo.err
        nothing = conn.run("command -v nginx uwsgi; ls /srv; getent passwd deploy hello")
        assert nothing.out.strip() == "", f"{spec.name} is not fresh: {nothing.out}"
        apt = conn.run("apt-get -q update 2>&1 | tail -1")
        assert apt.ok and "Reading package lists" in apt.out, apt.out
        # pip reaches the index over verified TLS (the lab trusts the controller's CA).
        pip = conn.run(
            "apt-get -qq install -y --no-install-recommends python3-pip >/dev/null 2>&1 && "
            "python3 -m pip download --no-deps --no-cache-dir -q -d /tmp/pipcheck six==1.16.0 "
            "&& ls /tmp/pipcheck && rm -rf /tmp/pipcheck"
        )
        assert pip.ok and "six-1.16.0" in pip.out, pip.err[-500:]
        ping = conn.run(f"ping -c1 -W2 {other.address} >/dev/null && "
                        f"timeout 3 bash -c 'exec 3<>/dev/tcp/{other.address}/22' && echo reach")
        assert ping.out.strip() == "reach", f"{spec.name} cannot reach {other.name}: {ping.err}"
    finally:
        conn.close()


def test_up_keeps_running_hosts_and_status_lists_them(two_hosts) -> None:
    lab, _ = two_hosts
    before = {h.name: h.pid for h in lab.hosts()}
    after = {h.name: h.pid for h in lab.up(count=2)}
    assert after == before
    rows = lab.status()
    assert [(r["name"], r["state"]) for r in rows] == [("lab1", "running"), ("lab2", "running")]


def _wait_rebooted(spec, marker: str, timeout: float = 180) -> Connection:
    """Wait until ``spec`` answers SSH again without ``marker`` (a file in its /run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = Connection.open(spec)
        except Exception:  # down, or sshd not up yet
            time.sleep(0.5)
            continue
        if conn.run(f"test -e {marker}").rc != 0:
            return conn
        conn.close()
        time.sleep(0.5)
    pytest.fail(f"{spec.name} did not come back from its reboot in {timeout:.0f} s")


def test_guest_reboot_comes_back_like_a_vm(two_hosts) -> None:
    """`systemctl reboot` inside a host: it boots again, same address, disk and host key."""
    lab, hosts = two_hosts
    spec = hosts[1]
    record = {h.name: h for h in lab.hosts()}[spec.name]
    conn = Connection.open(spec)
    key = conn.run("cat /etc/ssh/ssh_host_ed25519_key.pub").out
    conn.run("echo kept > /var/tmp/keel-disk-check; touch /run/keel-before-reboot; "
             "systemd-run --on-active=1 systemctl reboot")
    conn.close()
    conn = _wait_rebooted(spec, "/run/keel-before-reboot")
    try:
        assert conn.run("cat /var/tmp/keel-disk-check").out.strip() == "kept"
        assert conn.run("cat /etc/ssh/ssh_host_ed25519_key.pub").out == key
        state = conn.run("systemctl is-system-running --wait").out.strip()
        assert state == "running", state
    finally:
        conn.close()
    after = {h.name: h for h in lab.hosts()}[spec.name]
    assert after.pid == record.pid and after.alive  # the same lab host, never re-created
    assert {r["name"]: r["state"] for r in lab.status()}[spec.name] == "running"


def test_guest_poweroff_stays_down(two_hosts) -> None:
    lab, hosts = two_hosts
    spec = hosts[1]
    conn = Connection.open(spec)
    conn.run("systemd-run --on-active=1 systemctl poweroff")
    conn.close()
    record = {h.name: h for h in lab.hosts()}[spec.name]
    deadline = time.monotonic() + 60
    while record.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not record.alive, f"{spec.name} kept running after a poweroff"
    assert {r["name"]: r["state"] for r in lab.status()}[spec.name] == "stopped"


def test_down_leaves_nothing_behind() -> None:
    lab = Lab(NAME, SUBNET)
    lab.up(count=1)
    assert lab_leftovers(lab), "a running lab should be visible to the leftover check"
    lab.down()
    assert lab_leftovers(lab) == []
    lab.down()  # idempotent
    assert lab_leftovers(lab) == []


def test_up_cleans_state_left_by_a_crash() -> None:
    lab = Lab(NAME, SUBNET)
    try:
        (host,) = lab.up(count=1)
        os.killpg(host.pid, 9)  # the controller "crashes": nspawn dies without cleanup
        subprocess.run(["sleep", "0.5"])
        hosts = lab.up(count=1)
        assert hosts[0].pid != host.pid and hosts[0].alive
    finally:
        lab.down()
    assert lab_leftovers(lab) == []


# ---------------------------------------------------------------- bad input
def _lab_up(*args: str, env: dict[str, str] | None = None, unprivileged: bool = False):
    cmd = [sys.executable, "-m", "fabric", "lab.up", *args]
    if unprivileged:
        # A fresh user namespace: the same files are readable, but we are not root.
        cmd = ["unshare", "--user", *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KEEL_LAB_SUBNET": "10.83.6.0/24", **(env or {})})


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def _nothing_created() -> None:
    assert not Path("/sys/class/net/keelbr0").exists() or _default_lab_running()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "keel_lab" not in tables or _default_lab_running()


def _default_lab_running() -> bool:
    return bool(Lab().hosts())


def test_bad_release() -> None:
    proc = _lab_up("--release", "buster")
    _assert_one_line_error(proc, "lab.up: unknown release 'buster': choose one of bookworm, trixie")
    _nothing_created()


def test_not_root() -> None:
    proc = _lab_up(unprivileged=True)
    _assert_one_line_error(proc, "lab.up: the lab needs root")


def test_missing_tool(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ip", "nft", "ssh-keygen", "mmdebstrap"):  # everything but systemd-nspawn
        (bindir / tool).symlink_to(shutil.which(tool))
    proc = _lab_up(env={"PATH": str(bindir)})
    _assert_one_line_error(
        proc, "systemd-nspawn is missing: install it with 'apt-get install systemd-container'")


def test_subnet_in_use() -> None:
    subprocess.run(["ip", "link", "add", "kttaken0", "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.83.6.77/24", "dev", "kttaken0"], check=True)
        proc = _lab_up()
        _assert_one_line_error(proc, "lab subnet 10.83.6.0/24 is already in use")
    finally:
        subprocess.run(["ip", "link", "del", "kttaken0"], check=False)


def test_not_enough_disk(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], check=True)
    try:
        proc = _lab_up(env={"KEEL_LAB_DIR": str(small)})
        _assert_one_line_error(proc, f"not enough disk under {small}")
        assert not (small / "labs").exists() and not (small / "images").exists()
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_lab_error_is_one_line() -> None:
    with pytest.raises(LabError) as exc:
        Lab("bad name!")
    assert "\n" not in str(exc.value)
