"""Kept SSH connections (keel.control): reused by the next run, private, bounded, honest about host keys."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from keel import control
from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import CONTROL_DIR, LAB_NAME, TestLab, fab
from tests.integration.conftest import run_ok

# A throwaway ed25519 key: what a host would present after a reinstall.
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPQKfios5SVGi1I4VjGPaGzC6+dehIdcxwPcqghduIFX"


def _wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _kept(address: str, serving: bool = True) -> list[dict[str, object]]:
    """The control processes for ``address`` (only those serving already, or all)."""
    return [c for c in control.running(CONTROL_DIR)
            if c["address"] == address and (c["serving"] or not serving)]


@pytest.fixture
def no_control() -> Iterator[None]:
    control.stop_all(CONTROL_DIR)
    yield
    control.stop_all(CONTROL_DIR)


@pytest.fixture
def logins(deployed: HostSpec) -> Iterator[Callable[[], int]]:
    """Counts the controller's new TCP connections to lab1's sshd (an nft counter on SYNs)."""
    table = f"{LAB_NAME}_ctl"
    rules = (f"table ip {table} {{\n chain out {{\n  type filter hook output priority 0;\n"
             f"  ip daddr {deployed.address} tcp dport 22 tcp flags & (syn | ack) == syn counter\n"
             " }\n}\n")
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)

    def count() -> int:
        out = subprocess.run(["nft", "-j", "list", "table", "ip", table], capture_output=True,
                             text=True, check=True).stdout
        return sum(e["rule"]["expr"][-1]["counter"]["packets"]
                   for e in json.loads(out)["nftables"] if "rule" in e)

    try:
        yield count
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], check=False)


def _plan(inventory: Path, *extra: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return fab("plan", "--limit", "lab1", *extra, inventory=inventory, env=env, timeout=120)


def test_next_run_reuses_the_connection(test_lab: TestLab, deployed: HostSpec, no_control,
                                        logins) -> None:
    before = logins()
    first = _plan(test_lab.inventory_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _wait_for(lambda: _kept(deployed.address)), "no control process was left"
    directory = CONTROL_DIR.lstat()
    assert stat.S_IMODE(directory.st_mode) == 0o700 and directory.st_uid == os.geteuid()
    for sock in CONTROL_DIR.glob("*.sock"):
        assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
    after_first = logins()  # the run's own connection and the control process's
    assert after_first == before + 2, (before, after_first)
    for _ in range(2):
        again = _plan(test_lab.inventory_path, "--stats")
        assert again.returncode == 0, again.stdout + again.stderr
    assert logins() == after_first, "a run with a kept connection logged in again"
    fresh = _plan(test_lab.inventory_path, "--no-persist")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert logins() == after_first + 1


def test_the_next_runs_channel_waits_unprivileged(test_lab: TestLab, deployed: HostSpec,
                                                  no_control, root: Connection) -> None:
    """Made ahead so that a run waits no round trip for sshd to start its command; between
    runs only a shell of the login user waits there, and another command gets its own channel."""
    proc = _plan(test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _wait_for(lambda: _kept(deployed.address)), "no control process was left"

    def processes() -> list[tuple[str, str]]:
        # Not this fixture's own agent, nor the sudo and sh above it.
        out = run_ok(root, "p=$$; while [ \"$p\" -gt 1 ]; do printf '%s ' $p; "
                           "p=$(ps -o ppid= -p $p | tr -d ' '); done; echo; "
                           "ps -eo pid=,user=,args=").splitlines()
        ours = set(out[0].split())
        return [(user, args) for pid, user, args in (ln.split(None, 2) for ln in out[1:])
                if pid not in ours]

    def waiting() -> list[tuple[str, str]]:
        return [p for p in processes() if "IFS= read -r go" in p[1]]

    assert _wait_for(waiting), "no channel was made ahead for the next run"
    assert {user for user, _ in waiting()} == {"deploy"}
    assert _wait_for(lambda: not [p for p in processes()
                                  if p[0] == "root" and "b64decode" in p[1]]), \
        "a privileged agent outlived its run"
    again = _plan(test_lab.inventory_path, "--stats")
    assert again.returncode == 0, again.stdout + again.stderr
    name = next(CONTROL_DIR.glob("*.sock")).stem
    pipe = control.session(name, "echo another command", 10)
    assert pipe is not None
    try:
        assert pipe.readline() == b"another command\n"
    finally:
        pipe.close()


def test_no_persist_leaves_nothing(test_lab: TestLab, deployed: HostSpec, no_control) -> None:
    proc = _plan(test_lab.inventory_path, "--no-persist")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    off = _plan(test_lab.inventory_path, env={"KEEL_CONTROL_PERSIST": "0"})
    assert off.returncode == 0, off.stdout + off.stderr
    time.sleep(1)  # a control process would have taken its lock at once
    assert not _kept(deployed.address, serving=False)


def test_bootstrap_ends_kept_connections(test_lab: TestLab, deployed: HostSpec,
                                         no_control) -> None:
    """It changes how logins work: an older login must not stay usable through a kept one."""
    proc = _plan(test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _wait_for(lambda: _kept(deployed.address)), "no control process was left"
    boot = fab("bootstrap", "--check", "--limit", "lab1", inventory=test_lab.inventory_path,
               timeout=300)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert not _kept(deployed.address, serving=False)


def test_idle_lifetime_is_bounded(test_lab: TestLab, deployed: HostSpec, no_control) -> None:
    proc = _plan(test_lab.inventory_path, env={"KEEL_CONTROL_PERSIST": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _wait_for(lambda: _kept(deployed.address)), "no control process was left"
    t0 = time.monotonic()
    assert _wait_for(lambda: not _kept(deployed.address, serving=False), timeout=15), \
        "it outlived its lifetime"
    assert time.monotonic() - t0 < 10


def test_a_host_that_vanishes_ends_its_kept_connection(test_lab: TestLab, deployed: HostSpec,
                                                       no_control) -> None:
    """A host gone without closing TCP (crash, cut cable): the kept connection notices and
    ends, long before its idle lifetime, so the next run connects anew instead of waiting."""
    proc = _plan(test_lab.inventory_path, env={"KEEL_CONTROL_PERSIST": "600"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _wait_for(lambda: _kept(deployed.address)), "no control process was left"
    table = f"{LAB_NAME}_cut"
    subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
        f"table ip {table} {{\n chain out {{\n  type filter hook output priority 0;\n"
        f"  ip daddr {deployed.address} tcp dport 22 drop\n }}\n}}\n"))
    try:
        gone = _wait_for(lambda: not _kept(deployed.address, serving=False),
                         timeout=10 * control.DEAD_PEER_SECONDS)
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], check=False)
    assert gone, "the kept connection outlived its host"
    again = _plan(test_lab.inventory_path)
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_directory_others_can_enter_is_not_used(test_lab: TestLab, deployed: HostSpec,
                                                  tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    proc = _plan(test_lab.inventory_path, env={"KEEL_CONTROL_DIR": str(shared)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    time.sleep(1)
    assert not list(shared.iterdir())
    assert control.control_dir() == CONTROL_DIR  # the suite's own is fine


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    return next(ln for ln in proc.stdout.splitlines() if ln.startswith("lab1: "))


def test_host_key_is_checked_again_for_every_run(test_lab: TestLab, deployed: HostSpec,
                                                 no_control, tmp_path: Path) -> None:
    """A changed or removed known_hosts entry refuses a kept connection as it refuses a new one."""
    known = tmp_path / "known_hosts"
    lines = [ln for ln in test_lab.lab.known_hosts.read_text().splitlines()
             if ln.split(" ", 1)[0] == deployed.address]
    known.write_text("\n".join(lines) + "\n")
    inv = yaml.safe_load(test_lab.inventory_path.read_text())
    host = inv["all"]["children"]["app"]["hosts"]["lab1"]
    host["ansible_ssh_common_args"] = (f"-o UserKnownHostsFile={known} "
                                       "-o StrictHostKeyChecking=yes")
    inventory = tmp_path / "inv" / "lab.yml"
    inventory.parent.mkdir()
    (inventory.parent / "group_vars").symlink_to(test_lab.inventory_path.parent / "group_vars")
    inventory.write_text(yaml.safe_dump(inv))
    ok = _plan(inventory)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert _wait_for(lambda: _kept(deployed.address)), "no control process was left"

    known.write_text(f"{deployed.address} {OTHER_KEY}\n")
    kept = _plan(inventory)
    new = _plan(inventory, "--no-persist")
    assert kept.returncode != 0 and new.returncode != 0
    assert _one_line(kept) == _one_line(new)
    assert re.fullmatch(r"lab1: host key mismatch for \S+: refusing to connect", _one_line(kept))
    assert _wait_for(lambda: not _kept(deployed.address, serving=False), timeout=5), \
        "a refused one lives on"


def test_plan_is_the_same_through_a_kept_connection(test_lab: TestLab, deployed: HostSpec, no_control,
                                         tmp_path: Path) -> None:
    """Through a kept connection the plan is the same, operation for operation."""
    reports = []
    for extra in (["--no-persist"], [], []):
        report = tmp_path / f"plan{len(reports)}.json"
        proc = _plan(test_lab.inventory_path, "--json", str(report), *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        host = json.loads(report.read_text())["hosts"]["lab1"]
        reports.append([(r["op"], r["target"], r["changed"], r["reason"]) for r in host["results"]])
        if not extra:
            _wait_for(lambda: _kept(deployed.address))
    assert reports[0] == reports[1] == reports[2]
