"""Rendering of the hardening templates: sshd, nftables, apt security sources,
unattended-upgrades and nginx's sandbox drop-in. ``nft -c`` and
``systemd-analyze security --offline`` judge them where they are installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest

from roles import bootstrap, nginx

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"


def render(name: str, **context: Any) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template(name).render(**context)


def sshd(**over: Any) -> dict[str, str]:
    ctx = {**bootstrap.DEFAULTS, "ssh_kex_algorithms": ["sntrup761x25519-sha512@openssh.com",
                                                        "curve25519-sha256"],
           "ssh_rsa_host_key": False, "ssh_allow_groups": ["deploy"], "ssh_deny_users": ["debian"],
           **over}
    lines = [ln.split(None, 1) for ln in render("sshd-hardening.conf.j2", **ctx).splitlines()
             if ln.strip() and not ln.startswith("#")]
    return {k: v for k, v in lines}


def test_sshd_modern_algorithms() -> None:
    cfg = sshd()
    assert cfg["KexAlgorithms"] == "sntrup761x25519-sha512@openssh.com,curve25519-sha256"
    macs = cfg["MACs"].split(",")
    assert all(m.endswith("-etm@openssh.com") and "sha1" not in m for m in macs)
    assert "nistp" not in cfg["HostKeyAlgorithms"] and "rsa" not in cfg["HostKeyAlgorithms"]
    assert cfg["HostKey"] == "/etc/ssh/ssh_host_ed25519_key"
    assert cfg["MaxStartups"] == "10:30:60"
    assert cfg["AllowGroups"] == "deploy" and cfg["DenyUsers"] == "debian"
    assert "AllowUsers" not in cfg


def test_sshd_rsa_only_when_strong() -> None:
    text = render("sshd-hardening.conf.j2", **{**bootstrap.DEFAULTS, "ssh_kex_algorithms": ["x"],
                  "ssh_rsa_host_key": True, "ssh_allow_groups": [], "ssh_deny_users": []})
    assert "HostKey /etc/ssh/ssh_host_rsa_key" in text
    assert "rsa-sha2-512," in text and "ssh-rsa" not in text
    assert "AllowGroups" not in text and "DenyUsers" not in text


def nftables(**over: Any) -> str:
    return render("nftables.conf.j2", **{**bootstrap.DEFAULTS, **over})


def test_nftables_limits_new_ssh_connections() -> None:
    text = nftables()
    assert ("tcp dport 22 ct state new add @ssh_meter4 { ip saddr limit rate over 60/minute"
            " burst 30 packets } drop") in text
    # The limit comes before the accept.
    assert text.index("@ssh_meter6 {") < text.index("tcp dport { 22, 80, 443 } accept")
    assert "ssh_meter" not in nftables(ssh_rate_limit="")


@pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0, reason="nft -c needs root")
def test_nft_accepts_the_ruleset(tmp_path: Path) -> None:
    conf = tmp_path / "nftables.conf"
    conf.write_text(nftables())
    done = subprocess.run(["nft", "-c", "-f", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_security_sources() -> None:
    ctx = {**bootstrap.DEFAULTS, "codename": "trixie", "components": ["main"]}
    deb822 = render("apt-security.sources.j2", **ctx)
    assert "Suites: trixie-security\n" in deb822
    assert "URIs: http://security.debian.org/debian-security\n" in deb822
    one_line = render("apt-security.list.j2", **{**ctx, "codename": "bookworm"})
    assert "deb http://security.debian.org/debian-security bookworm-security main" in one_line


def test_unattended_upgrades_takes_security_and_never_reboots() -> None:
    text = render("unattended-upgrades.j2")
    assert '"origin=Debian,codename=${distro_codename}-security,label=Debian-Security";' in text
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in text


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_nginx_dropin_exposure(tmp_path: Path) -> None:
    """The distribution's unit (as Debian ships it) plus our drop-in, rated offline."""
    unit = tmp_path / "nginx.service"
    # Offline, systemd-analyze reads one unit file, not its drop-ins: appended here.
    unit.write_text("[Unit]\nDescription=nginx\n\n[Service]\nType=forking\n"
                    "PIDFile=/run/nginx.pid\nExecStart=/usr/sbin/nginx\n\n"
                    + render("nginx-hardening.conf.j2") + "\n")
    done = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": "",
                               "SYSTEMD_COLORS": "0"})
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    match = re.search(r"Overall exposure level for nginx\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 3.5, done.stdout


def test_nginx_dropin_path() -> None:
    assert nginx.HARDENING_DROPIN.startswith("/etc/systemd/system/nginx.service.d/")
    text = render("nginx-hardening.conf.j2")
    assert "CAP_NET_BIND_SERVICE" in text and "ProtectSystem=strict" in text


def test_sysctl_forwarding_comes_first() -> None:
    """Setting net.ipv4.conf.all.forwarding resets accept_redirects: it must be applied first."""
    keys = [ln.split(" = ")[0] for ln in render("os-hardening-sysctl.conf.j2", **bootstrap.DEFAULTS)
            .splitlines() if ln and not ln.startswith("#")]
    assert keys[0] == "net.ipv4.conf.all.forwarding"
    assert "net.ipv4.conf.all.accept_redirects" in keys
    assert len(keys) == len(bootstrap.DEFAULTS["sysctl_hardening"])


def test_os_hardening_files() -> None:
    profile = render("os-hardening-profile.sh.j2", **bootstrap.DEFAULTS)
    assert "ulimit -c 0" in profile and "umask 027" in profile and "TMOUT=900" in profile
    modprobe = render("os-hardening-modprobe.conf.j2")
    assert "install usb-storage /bin/false" in modprobe and "install dccp /bin/false" in modprobe
    assert "Storage=none" in render("os-hardening-coredump.conf.j2")
    banner = render("issue.j2", **bootstrap.DEFAULTS).lower()
    # Lynis wants five of its keywords in a legal banner.
    assert sum(w in banner for w in ("access", "authori", "monitor", "law", "report", "audit")) >= 5


def test_sshd_lynis_settings() -> None:
    cfg = sshd()
    assert (cfg["MaxAuthTries"], cfg["MaxSessions"], cfg["AllowTcpForwarding"]) == ("3", "2", "local")


def test_nginx_dropin_extra_lines() -> None:
    text = render("nginx-hardening.conf.j2", nginx_hardening_extra=["ReadWritePaths=/srv/logs"])
    assert text.rstrip().endswith("ReadWritePaths=/srv/logs")
