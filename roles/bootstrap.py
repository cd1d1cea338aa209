"""bootstrap: make a fresh Debian host safe to deploy to. Run once, as the initial sudo user.

Order matters: the deploy user and its key come first, and sshd is hardened
only after a fresh login as that user (with sudo) has worked, so nobody is
locked out. If that login fails, the run stops and sshd stays as it was. The
hardened sshd is then proven by another fresh login before it stays; if that
fails, the previous settings are restored. Only then is the initial login user
(the one this run came in as) locked out of SSH and sudo (``initial_user: lock``).

``os_hardening`` adds the OS settings an audit (Lynis) asks for and that cost
the apps nothing (docs/security.md lists them, and what is left and why).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from keel.errors import HostError
from keel.host import Host
from keel.operation import q
from keel.ops import apt, files, server, systemd

DEFAULTS: dict[str, Any] = {
    # Installed on every host.
    "base_packages": ["ca-certificates", "curl", "sudo", "openssh-server", "nftables",
                      "unattended-upgrades", "systemd-timesyncd", "python3"],
    # How old (seconds) apt's package lists may be before `apt-get update`.
    "apt_cache_valid_time": 3600,
    # The user later runs log in as, with passwordless sudo.
    "deploy_user": "deploy",
    # Its public key; empty means "<ansible_ssh_private_key_file>.pub" on the controller.
    "deploy_user_key": "",
    # Inbound TCP ports the firewall allows (SSH, HTTP, HTTPS).
    "firewall_allow_tcp": [22, 80, 443],
    "unattended_upgrades": True,
    # Add the release's security suite to apt's sources if no source has it yet.
    "apt_security_updates": True,
    "apt_security_mirror": "http://security.debian.org/debian-security",
    # Set the hostname to the inventory name.
    "set_hostname": True,
    # Restrict SSH logins to these users (empty: no restriction).
    "ssh_allow_users": [],
    # Only members of these groups may log in over SSH; empty: the deploy user's
    # own group (plus the initial user's with initial_user: keep).
    "ssh_allow_groups": [],
    # MaxStartups: refuse new unauthenticated connections at random from the
    # first number on (30 % of them), all of them from the third.
    "ssh_max_startups": "10:30:60",
    # nftables: drop new SSH connections from a source beyond this rate ("" = no limit).
    "ssh_rate_limit": "60/minute",
    "ssh_rate_burst": 30,
    "ssh_port": 22,
    # "local" lets ProxyJump through this host and nothing else; "no" (Lynis' wish)
    # makes it useless as a jump host; "yes" allows remote (-R) forwards too.
    "ssh_allow_tcp_forwarding": "local",
    # Keys tried per connection: an agent holding more keys needs IdentitiesOnly/IdentityFile.
    "ssh_max_auth_tries": 3,
    # Sessions per connection: keel uses 2 at most (its agent and a log stream);
    # more only for ControlMaster users who multiplex many shells over one connection.
    "ssh_max_sessions": 2,
    # The image's initial login user (the one bootstrap logs in as, e.g. debian,
    # admin, ubuntu), once the deploy user is proven: "lock" removes its sudo
    # rights and SSH access, "keep" leaves it as it is.
    "initial_user": "lock",
    # OS settings an audit (Lynis) asks for and that cost the apps nothing:
    # login banner, no core dumps, no USB/FireWire storage or rare protocols,
    # stricter login.defs, idle interactive shells logged out (docs/security.md).
    "os_hardening": True,
    "login_banner": ("Authorized access only. Unauthorized use is prohibited and may be reported "
                     "to law enforcement. All connections are monitored and audited."),
    # Audit helpers: per-user temp dirs, password quality rules, package checksums,
    # changelogs of upgrades, process accounting, and needrestart, which lists the
    # services an upgrade left on old libraries (list only: it restarts nothing).
    "os_hardening_packages": ["libpam-tmpdir", "libpam-pwquality", "debsums",
                              "apt-listchanges", "acct", "needrestart"],
    # Kernel settings (/etc/sysctl.d/60-keel.conf), applied in this order. A host that
    # routes (containers, VPN) needs net.ipv4.conf.all.forwarding: 1 here. Forwarding
    # comes first: setting it resets net.ipv4.conf.all.accept_redirects.
    "sysctl_hardening": {
        "net.ipv4.conf.all.forwarding": 0,
        "dev.tty.ldisc_autoload": 0, "fs.protected_fifos": 2, "fs.protected_regular": 2,
        "fs.protected_symlinks": 1, "fs.protected_hardlinks": 1, "fs.suid_dumpable": 0,
        "kernel.core_uses_pid": 1, "kernel.ctrl-alt-del": 0, "kernel.dmesg_restrict": 1,
        "kernel.kptr_restrict": 2, "kernel.perf_event_paranoid": 3,
        "kernel.unprivileged_bpf_disabled": 1, "kernel.sysrq": 0,
        "net.ipv4.conf.all.log_martians": 1,
        "net.ipv4.conf.default.log_martians": 1, "net.ipv4.conf.all.rp_filter": 1,
        "net.ipv4.conf.all.send_redirects": 0, "net.ipv4.conf.all.accept_redirects": 0,
        "net.ipv4.conf.default.accept_redirects": 0, "net.ipv4.conf.all.accept_source_route": 0,
        "net.ipv4.conf.default.accept_source_route": 0, "net.ipv6.conf.all.accept_redirects": 0,
        "net.ipv6.conf.default.accept_redirects": 0, "net.ipv4.tcp_syncookies": 1,
    },
    # Seconds an idle interactive shell stays (0: forever).
    "shell_idle_timeout": 900,
    # /etc/login.defs: new files 027, SHA-512 rounds, password ageing (deploy users have no password).
    "login_defs": {"UMASK": "027", "SHA_CRYPT_MIN_ROUNDS": "5000", "SHA_CRYPT_MAX_ROUNDS": "10000",
                   "PASS_MIN_DAYS": "1", "PASS_MAX_DAYS": "365"},
}

SSHD_CONF = "/etc/ssh/sshd_config.d/10-keel.conf"
# Key exchanges in order of preference; each is used only if the host's OpenSSH knows it.
KEX_PREFERENCE = ["mlkem768x25519-sha256", "sntrup761x25519-sha512",
                  "sntrup761x25519-sha512@openssh.com", "curve25519-sha256",
                  "curve25519-sha256@libssh.org"]
# Releases whose apt sources are still one-line .list files; later ones use deb822.
ONE_LINE_SOURCES = ("buster", "bullseye", "bookworm")
SECURITY_SOURCES = "/etc/apt/sources.list.d/keel-security"
# ssh-audit fails RSA host keys below this size.
MIN_RSA_BITS = 3072

# Each key of the file whose /proc/sys entry is writable (in a container the
# kernel's own are not): systemd-sysctl applies them at boot where it may.
APPLY_SYSCTL = (
    "grep -E '^[a-z]' /etc/sysctl.d/60-keel.conf | while read -r k _ v; do"
    ' [ -w "/proc/sys/$(echo "$k" | tr . /)" ] || continue; sysctl -q -w "$k=$v"; done'
)

HANDLERS = {
    "reload sshd": lambda host: systemd.reload(host, "ssh"),
    "apply sysctl": lambda host: server.command(host, APPLY_SYSCTL, name="apply sysctl"),
    "reload firewall": lambda host: systemd.reload(host, "nftables"),
}


def _deploy_key(host: Host) -> str:
    """``deploy_user_key``, else the public half of the key this run logged in with."""
    key = host.vars["deploy_user_key"]
    if key:
        return str(key)
    for private in host.key_files():
        pub = Path(private + ".pub")
        if pub.is_file():
            return pub.read_text().strip()
    raise HostError(host.name, "deploy_user_key is not set and no public key sits beside the "
                               "login key (<key>.pub)")


def apply(host: Host) -> None:
    v = host.vars
    added = v["apt_security_updates"] and security_sources(host)
    apt.update(host, cache_valid_time=0 if added else v["apt_cache_valid_time"])
    apt.packages(host, v["base_packages"], cache_valid_time=v["apt_cache_valid_time"])
    if v["set_hostname"]:
        server.hostname(host, host.name)

    user = v["deploy_user"]
    server.user(host, user, system=False, shell="/bin/bash", create_home=True,
                groups=["sudo"])
    server.authorized_key(host, user, _deploy_key(host))
    files.file(host, f"/etc/sudoers.d/90-keel-{user}", f"{user} ALL=(ALL) NOPASSWD:ALL\n",
               mode="0440", validate="visudo -cqf %s")

    files.template(host, "auto-upgrades.j2", "/etc/apt/apt.conf.d/20auto-upgrades")
    files.template(host, "unattended-upgrades.j2", "/etc/apt/apt.conf.d/52keel-unattended-upgrades")
    systemd.service(host, "unattended-upgrades", enabled=v["unattended_upgrades"],
                    running=v["unattended_upgrades"])
    # timesyncd is enabled; systemd itself skips it in containers, where the
    # host owns the clock, so "running" is not asked for.
    systemd.service(host, "systemd-timesyncd", enabled=True, running=None)

    if v["os_hardening"]:
        os_hardening(host)

    files.template(host, "nftables.conf.j2", "/etc/nftables.conf", mode="0755",
                   validate="nft -c -f %s", notify="reload firewall")
    systemd.service(host, "nftables", enabled=True, running=True)

    _harden_sshd(host, user)
    if _initial_user(host) and v["initial_user"] == "lock":
        lock_initial_user(host, _initial_user(host))


def security_sources(host: Host) -> bool:
    """The release's security suite in apt's sources (ours only if no other source has it).

    One-line ``keel-security.list`` up to bookworm, deb822 ``keel-security.sources``
    after (trixie's own sources are deb822). True if it was just added or changed.
    """
    codename = host.facts.os_codename
    if host.facts.os_id != "debian" or not codename:
        return False
    suite = f"{codename}-security"
    res = host.run(
        f"grep -lsE '^[^#]*[[:space:]]{suite}([[:space:]]|$)' /etc/apt/sources.list"
        f" /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources"
        f" | grep -v '^{SECURITY_SOURCES}' || true")
    ours, other = (".list", ".sources") if codename in ONE_LINE_SOURCES else (".sources", ".list")
    files.absent(host, SECURITY_SOURCES + other)
    if res.out.strip():  # the image or the user already has it
        return files.absent(host, SECURITY_SOURCES + ours).changed
    return files.template(host, f"apt-security{ours}.j2", SECURITY_SOURCES + ours,
                          codename=codename, components=["main"]).changed


def os_hardening(host: Host) -> None:
    """Small OS settings an audit asks for (see ``os_hardening`` in DEFAULTS)."""
    for path in ("/etc/issue", "/etc/issue.net"):
        files.template(host, "issue.j2", path)
    files.template(host, "os-hardening-limits.conf.j2", "/etc/security/limits.d/10-keel.conf")
    files.directory(host, "/etc/modprobe.d", mode="0755")
    files.template(host, "os-hardening-modprobe.conf.j2", "/etc/modprobe.d/10-keel.conf")
    files.template(host, "os-hardening-profile.sh.j2", "/etc/profile.d/10-keel.sh")
    files.directory(host, "/etc/systemd/coredump.conf.d", mode="0755")
    files.template(host, "os-hardening-coredump.conf.j2", "/etc/systemd/coredump.conf.d/10-keel.conf")
    files.template(host, "os-hardening-sysctl.conf.j2", "/etc/sysctl.d/60-keel.conf",
                   notify="apply sysctl")
    # Before needrestart is installed, so that it never restarts a service by itself.
    files.directory(host, "/etc/needrestart/conf.d", mode="0755")
    files.file(host, "/etc/needrestart/conf.d/10-keel.conf",
               "# Managed by keel: list the services to restart, never restart them.\n"
               "$nrconf{restart} = 'l';\n")
    apt.packages(host, host.vars["os_hardening_packages"])
    for key, value in host.vars["login_defs"].items():
        # One line for the key (a commented-out default "#KEY value" goes too; prose
        # comments that merely name it stay): tools read the first or all of them.
        defs = "/etc/login.defs"
        server.command(
            host, f"sed -i -E '/^#?{key}[[:space:]]/d' {defs}"
                  f" && printf '%s\\t%s\\n' {key} {q(str(value))} >> {defs}",
            unless=f"[ \"$(grep -cE '^#?{key}[[:space:]]' {defs})\" = 1 ]"
                   f" && grep -qE '^{key}[[:space:]]+{value}$' {defs}",
            name=f"login.defs {key} {value}")


def _initial_user(host: Host) -> str | None:
    """The user this run logged in as, unless it is root or the deploy user."""
    login = host.spec.user
    return None if login in (None, "root", host.vars["deploy_user"]) else login


def _sshd_settings(host: Host) -> dict[str, Any]:
    """What the sshd template needs from the host: known key exchanges, a strong RSA key."""
    res = host.run("ssh -Q kex; echo --; f=/etc/ssh/ssh_host_rsa_key.pub;"
                   " [ -e $f ] && ssh-keygen -lf $f | cut -d' ' -f1 || true")
    known, _, rsa_bits = res.out.partition("--")
    kex = [k for k in KEX_PREFERENCE if k in known.split()]
    if not kex:
        raise HostError(host.name, "this OpenSSH knows no curve25519 key exchange; "
                                   "sshd left unhardened")
    v = host.vars
    groups = list(v["ssh_allow_groups"]) or [v["deploy_user"]]
    initial = _initial_user(host)
    if not v["ssh_allow_groups"] and initial and v["initial_user"] == "keep":
        groups.append(initial)
    deny = [initial] if initial and v["initial_user"] == "lock" else []
    return {"ssh_kex_algorithms": kex, "ssh_rsa_host_key": int(rsa_bits.strip() or 0) >= MIN_RSA_BITS,
            "ssh_allow_groups": groups, "ssh_deny_users": deny}


def _harden_sshd(host: Host, user: str) -> None:
    """The sshd drop-in, kept only if a fresh login as ``user`` works with it."""
    server.command(host, "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key",
                   creates="/etc/ssh/ssh_host_ed25519_key")
    settings = _sshd_settings(host)
    hardening = ("sshd-hardening.conf.j2", SSHD_CONF)
    if host.check or not host.would_change(files.template, *hardening, **settings):
        files.template(host, *hardening, validate="sshd -t -f %s", **settings)
        systemd.service(host, "ssh", enabled=True, running=True)
        return
    reason = host.login_check(user)
    if reason:
        raise HostError(host.name, f"login as {user} failed ({reason}); sshd left unhardened")
    prev = f"{SSHD_CONF}.keel-prev"
    server.command(host, f"rm -f {prev}; [ ! -e {SSHD_CONF} ] || cp -p {SSHD_CONF} {prev}",
                   name="keep the previous sshd settings")
    files.template(host, *hardening, validate="sshd -t -f %s", **settings)
    systemd.service(host, "ssh", enabled=True, running=True)
    systemd.reload(host, "ssh")
    reason = _fresh_login(host, user)
    if reason:
        server.command(host, f"if [ -e {prev} ]; then mv -f {prev} {SSHD_CONF};"
                             f" else rm -f {SSHD_CONF}; fi; systemctl reload ssh",
                       name="restore the previous sshd settings")
        raise HostError(host.name, f"a fresh login as {user} failed with the hardened sshd "
                                   f"({reason}); previous sshd settings restored")
    server.command(host, f"rm -f {prev}", name="drop the previous sshd settings")


def _fresh_login(host: Host, user: str, timeout: float = 10.0) -> str | None:
    """``host.login_check(user)`` once the reloaded sshd listens again (a reload
    re-executes sshd, which closes its listening socket for a moment)."""
    port = int(host.vars["ssh_port"])
    host.run(f"for i in $(seq 100); do ss -ltnH 'sport = :{port}' | grep -q . && exit 0;"
             " sleep 0.1; done; exit 1")
    deadline = time.monotonic() + timeout
    while True:
        reason = host.login_check(user)
        if reason is None or "unreachable" not in reason or time.monotonic() > deadline:
            return reason
        time.sleep(0.2)


def lock_initial_user(host: Host, login: str) -> None:
    """Take sudo from ``login`` (group sudo, its lines in /etc/sudoers.d); sshd denies it."""
    # Lines granting it in sudoers.d (cloud-init's 90-cloud-init-users) go; a
    # file left empty goes too. visudo checks the result, else it is put back.
    script = (
        f"u={login}; gpasswd -d \"$u\" sudo >/dev/null 2>&1 || true;"
        " for f in /etc/sudoers.d/*; do grep -qs \"^$u[[:space:]]\" \"$f\" || continue;"
        " cp -p \"$f\" \"$f.keel-prev\"; sed -i \"/^$u[[:space:]]/d\" \"$f\";"
        " if ! visudo -cq; then mv -f \"$f.keel-prev\" \"$f\"; echo \"$f: visudo failed\" >&2; exit 1; fi;"
        " rm -f \"$f.keel-prev\"; grep -q '[^[:space:]]' \"$f\" || rm -f \"$f\"; done"
    )
    unless = (f"! id -nG {login} 2>/dev/null | grep -qw sudo"
              f" && ! grep -qs '^{login}[[:space:]]' /etc/sudoers.d/*")
    res = server.command(host, script, unless=unless, name=f"lock the initial user {login}")
    if res.changed:
        host.say(f"initial user {login}: sudo rights and SSH access removed "
                 f"(initial_user: lock); log in as {host.vars['deploy_user']}")
