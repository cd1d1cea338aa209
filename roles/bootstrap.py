"""bootstrap: make a fresh Debian host safe to deploy to. Run once, as the initial sudo user.

Order matters: the deploy user and its key come first, and sshd is hardened
only after a fresh login as that user (with sudo) has worked, so nobody is
locked out. If that login fails, the run stops and sshd stays as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keel.errors import HostError
from keel.host import Host
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
    # Set the hostname to the inventory name.
    "set_hostname": True,
    # Restrict SSH logins to these users (empty: no restriction).
    "ssh_allow_users": [],
}

HANDLERS = {
    "reload sshd": lambda host: systemd.reload(host, "ssh"),
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
    apt.update(host, cache_valid_time=v["apt_cache_valid_time"])
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
    systemd.service(host, "unattended-upgrades", enabled=v["unattended_upgrades"],
                    running=v["unattended_upgrades"])
    # timesyncd is enabled; systemd itself skips it in containers, where the
    # host owns the clock, so "running" is not asked for.
    systemd.service(host, "systemd-timesyncd", enabled=True, running=None)

    files.template(host, "nftables.conf.j2", "/etc/nftables.conf", mode="0755",
                   validate="nft -c -f %s", notify="reload firewall")
    systemd.service(host, "nftables", enabled=True, running=True)

    hardening = ("sshd-hardening.conf.j2", "/etc/ssh/sshd_config.d/10-keel.conf")
    if not host.check and host.would_change(files.template, *hardening):
        reason = host.login_check(user)
        if reason:
            raise HostError(host.name, f"login as {user} failed ({reason}); "
                                       "sshd left unhardened")
    files.template(host, *hardening, validate="sshd -t -f %s", notify="reload sshd")
    systemd.service(host, "ssh", enabled=True, running=True)
