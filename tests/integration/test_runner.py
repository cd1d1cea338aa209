"""The runner through the real ``fab`` CLI: many hosts, bad hosts, reports and bad input.

The play is ``fab bootstrap --check`` (read-only, and valid on a fresh host),
over lab2 and, where needed, ``ghost``: an inventory entry with lab2's
connection settings but an unused address of the lab subnet (.250), so
nothing answers there.

Whether a run touched lab2 is read from lab2's sshd journal: every login is an
"Accepted publickey ... port N" line.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import LAB_SUBNET, TestLab, fab

GHOST = str(ipaddress.ip_network(LAB_SUBNET).network_address + 250)
# os_hardening's: the banners, limits, modprobe, profile, coredump, sysctl and needrestart
# files, its packages, and one command per login.defs key.
OS_HARDENING_OPS = ["template", "template", "template", "directory", "template", "template",
                    "directory", "template", "template", "directory", "file", "packages",
                    *["command"] * 5]
BOOTSTRAP_OPS = ["absent", "template", "update", "packages", "hostname", "user", "authorized_key",
                 "file", "template", "template", "service", "service", *OS_HARDENING_OPS,
                 "template", "service", "command", "template", "service", "command"]


@pytest.fixture(scope="module")
def lab2(test_lab: TestLab) -> HostSpec:
    return test_lab.host("lab2")


@pytest.fixture
def write_inventory(test_lab: TestLab, lab2: HostSpec, tmp_path: Path):
    """Write an inventory of ``names`` (lab2 and/or ghost, in the order given); ghost gets .250."""
    lab = yaml.safe_load(test_lab.inventory_path.read_text())
    real = lab["all"]["children"]["app"]["hosts"]["lab2"]

    def write(names: list[str], **override: str) -> Path:
        hosts = {n: {**real, **override} if n == "lab2" else {**real, "ansible_host": GHOST}
                 for n in names}
        path = tmp_path / "hosts.yml"
        path.write_text(yaml.safe_dump({"all": {"children": {"app": {"hosts": hosts}}}},
                                       sort_keys=False))
        return path

    return write


class Logins:
    """SSH logins to a host from now on, read from its sshd journal entries.

    Entries are matched by time (controller and containers share one clock) and
    the watcher's own connections are left out by their source port. Before
    reading, a fresh login of our own acts as a barrier: once the journal shows
    it, it shows every login before it.
    """

    def __init__(self, spec: HostSpec, conn: Connection) -> None:
        self.spec, self.conn = spec, conn
        self.ours = {_port(conn)}
        self.t0 = time.time()

    def _accepted(self) -> list[tuple[float, str]]:
        res = self.conn.run("journalctl -q --no-pager -o json SYSLOG_IDENTIFIER=sshd -g '^Accepted '")
        assert res.ok, res.err
        entries = [json.loads(line) for line in res.out.splitlines()]
        return [(int(e["_SOURCE_REALTIME_TIMESTAMP"]) / 1e6, e["MESSAGE"]) for e in entries]

    def since(self) -> list[str]:
        barrier = Connection.open(self.spec)
        port = _port(barrier)
        self.ours.add(port)
        barrier.close()
        deadline = time.monotonic() + 10
        entries = self._accepted()
        while not any(_port_of(m) == port for _, m in entries):
            assert time.monotonic() < deadline, "sshd journal lags by more than 10 s"
            time.sleep(0.1)
            entries = self._accepted()
        return [m for t, m in entries if t >= self.t0 and _port_of(m) not in self.ours]


def _port(conn: Connection) -> int:
    return conn.fabric.client.get_transport().sock.getsockname()[1]


def _port_of(message: str) -> int | None:
    found = re.search(r" port (\d+) ", message)
    return int(found.group(1)) if found else None


@pytest.fixture
def logins(lab2: HostSpec, connect) -> Logins:
    return Logins(lab2, connect(lab2))


def recap(text: str) -> dict[str, list[str]]:
    """Rows of the RECAP table, by host: ok, changed, failed, unreachable[, stats...]."""
    lines = text.splitlines()
    start = lines.index("RECAP")
    assert lines[start + 1].split()[:5] == ["host", "ok", "changed", "failed", "unreachable"]
    return {ln.split()[0]: ln.split()[1:] for ln in lines[start + 2:] if ln.strip()}


def host_lines(text: str, host: str) -> list[str]:
    """What was printed about ``host`` before the recap: results, diffs aside, and errors."""
    lines = text.splitlines()
    lines = lines[:lines.index("RECAP")] if "RECAP" in lines else lines
    return [ln for ln in lines if ln.startswith((f"{host}: ", f"{host} "))]


def test_parallel_run_with_an_unreachable_host(write_inventory, logins: Logins,
                                               tmp_path: Path) -> None:
    inventory = write_inventory(["ghost", "lab2"])  # the dead host first
    report = tmp_path / "run.json"
    proc = fab("bootstrap", "--check", "--json", str(report), inventory=inventory, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.strip() == "bootstrap: 1 of 2 host(s) failed"

    ghost = host_lines(proc.stdout, "ghost")
    assert len(ghost) == 1, proc.stdout
    assert re.fullmatch(rf"ghost: unreachable at {re.escape(GHOST)}:22: \S.*", ghost[0]), ghost

    rows = recap(proc.stdout)
    assert list(rows) == ["ghost", "lab2"]
    assert rows["ghost"] == ["0", "0", "0", "1"]
    assert rows["lab2"][2:] == ["0", "0"] and int(rows["lab2"][0]) == len(BOOTSTRAP_OPS)

    # lab2 did not wait for ghost: its results came first and it finished long before.
    lines = proc.stdout.splitlines()
    assert lines.index(host_lines(proc.stdout, "lab2")[0]) < lines.index(ghost[0])
    hosts = json.loads(report.read_text())["hosts"]
    assert hosts["lab2"]["seconds"] < hosts["ghost"]["seconds"]
    assert len(logins.since()) == 1


def test_wrong_ssh_key_is_one_line(write_inventory, lab2: HostSpec, tmp_path: Path) -> None:
    key = tmp_path / "throwaway"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "throwaway",
                    "-f", str(key)], check=True, timeout=30)
    inventory = write_inventory(["lab2"], ansible_ssh_private_key_file=str(key))
    proc = fab("bootstrap", "--check", inventory=inventory, env={"SSH_AUTH_SOCK": ""},
               timeout=60)
    assert proc.returncode == 2
    assert host_lines(proc.stdout, "lab2") == [
        f"lab2: authentication failed for debian@{lab2.address} ({key})"]
    assert recap(proc.stdout)["lab2"] == ["0", "0", "0", "1"]
    assert proc.stderr.strip() == "bootstrap: 1 of 1 host(s) failed"


def test_json_report_and_stats(write_inventory, logins: Logins, tmp_path: Path) -> None:
    inventory = write_inventory(["lab2"])
    report = tmp_path / "reports" / "bootstrap.json"
    proc = fab("bootstrap", "--check", "--stats", "--json", str(report), inventory=inventory,
               timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    doc = json.loads(report.read_text())
    assert (doc["play"], doc["check"], list(doc["hosts"])) == ("bootstrap", True, ["lab2"])
    host = doc["hosts"]["lab2"]
    ops = [r["op"] for r in host["results"]]
    assert ops == BOOTSTRAP_OPS, " ".join(ops)
    assert all(set(r) == {"op", "target", "changed", "failed", "reason", "error", "diff", "seconds"}
               for r in host["results"])
    by_op = {(r["op"], r["target"]): r for r in host["results"]}
    assert by_op[("hostname", "lab2")]["changed"] is False
    assert by_op[("user", "deploy")]["changed"] is True
    assert by_op[("user", "deploy")]["reason"] == "created"
    sudoers = by_op[("file", "/etc/sudoers.d/90-keel-deploy")]
    assert sudoers["diff"].endswith("@@ -0,0 +1 @@\n+deploy ALL=(ALL) NOPASSWD:ALL\n")
    assert host["ok"] == len(BOOTSTRAP_OPS) and host["failed"] is False
    assert host["changed"] == sum(r["changed"] for r in host["results"])

    # Check mode: the facts, one probe per operation, one command each, and the role's two
    # reads (which security sources apt has, what sshd offers).
    assert host["round_trips"] == host["commands"] == 1 + len(BOOTSTRAP_OPS) + 2
    lines = proc.stdout.splitlines()
    header = lines[lines.index("RECAP") + 1]
    assert re.sub(r"\s+", " ", header).strip() == (
        "host ok changed failed unreachable round trips commands connect s total s")
    row = recap(proc.stdout)["lab2"]
    assert row[:6] == [str(host["ok"]), str(host["changed"]), "0", "0",
                       str(host["round_trips"]), str(host["commands"])]
    connect_s, total_s = float(row[6]), float(row[7])
    assert 0 < connect_s < total_s < 30
    assert len(logins.since()) == 1  # one SSH connection for the whole run


def test_serial_max_fail_skips_the_rest(write_inventory, logins: Logins, tmp_path: Path) -> None:
    inventory = write_inventory(["ghost", "lab2"])
    report = tmp_path / "run.json"
    proc = fab("bootstrap", "--check", "--serial", "1", "--max-fail", "0", "--json", str(report),
               inventory=inventory, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "bootstrap: 2 of 2 host(s) failed"
    assert len(host_lines(proc.stdout, "ghost")) == 1
    assert host_lines(proc.stdout, "lab2") == ["lab2: skipped: an earlier batch failed"]
    hosts = json.loads(report.read_text())["hosts"]
    assert hosts["ghost"]["unreachable"] is True
    assert (hosts["lab2"]["skipped"], hosts["lab2"]["results"], hosts["lab2"]["round_trips"]) == (
        True, [], 0)
    assert logins.since() == []


def test_limit_unknown_group_touches_no_host(write_inventory, logins: Logins) -> None:
    inventory = write_inventory(["lab2", "ghost"])
    proc = fab("bootstrap", "--check", "--limit", "nosuchgroup", inventory=inventory, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == "--limit: no host or group matches 'nosuchgroup'"
    assert logins.since() == []


def test_malformed_yaml_inventory_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("all:\n  hosts:\n    lab2:\n      ansible_host: 10.0.0.1\n"
                    "      ansible_port: 22: 22\n")
    proc = fab("bootstrap", "--check", inventory=path, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"{path}:5: mapping values are not allowed here"
