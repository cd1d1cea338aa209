"""Reaching hosts the ways Fabric users already do: ``-H``, and ``~/.ssh/config``
with IdentityFile and ProxyJump (checked with the direct route blocked)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.inventory import HostSpec
from tests.conftest import TestLab, fab

BLOCK_TABLE = "kt_block"


@pytest.fixture
def lab_pair(test_lab: TestLab, deployed: HostSpec) -> tuple[HostSpec, HostSpec]:
    """(the jump host: lab1, bootstrapped, so only its deploy user may log in; the target: lab2)."""
    return deployed, test_lab.host("lab2")


@pytest.fixture
def direct_route_blocked(lab_pair: tuple[HostSpec, HostSpec]) -> Iterator[None]:
    """Drop the controller's own SSH packets to the target: only a jump gets there."""
    _, target = lab_pair
    rules = (f"table ip {BLOCK_TABLE} {{\n chain out {{\n  type filter hook output priority 0;\n"
             f"  ip daddr {target.address} tcp dport 22 drop\n }}\n}}\n")
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "ip", BLOCK_TABLE], check=False)


def test_ssh_config_identityfile_and_proxyjump(lab_pair, direct_route_blocked,
                                               tmp_path: Path) -> None:
    jump, target = lab_pair
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host target-via-jump\n  HostName {target.address}\n  User debian\n"
        f"  IdentityFile {target.key_file}\n  ProxyJump jumphost\n\n"
        f"Host jumphost\n  HostName {jump.address}\n  User deploy\n  IdentityFile {jump.key_file}\n")
    # Only names: everything else comes from ~/.ssh/config.
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"[app]\ntarget-via-jump\ndirect ansible_host={target.address} "
                         f"ansible_user=debian ansible_ssh_private_key_file={target.key_file}\n")
    env = {"HOME": str(home)}
    via_jump = fab("bootstrap", "--check", "--limit", "target-via-jump", inventory=inventory, env=env,
                   timeout=120)
    assert via_jump.returncode == 0, via_jump.stdout + via_jump.stderr
    assert "target-via-jump" in via_jump.stdout
    direct = fab("bootstrap", "--check", "--limit", "direct", inventory=inventory, env=env,
                 timeout=120)
    assert direct.returncode != 0
    assert f"direct: unreachable at {target.address}:22" in direct.stdout


def test_fabric_dash_h_adhoc_host(lab_pair) -> None:
    _, target = lab_pair
    proc = fab("-i", str(target.key_file), "-H", f"debian@{target.address}", "bootstrap", "--check",
               timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recap = proc.stdout.split("RECAP", 1)[1]
    assert target.address in recap
