"""Shared fixtures: a test lab of real nspawn hosts, torn down even when tests fail.

The test lab is separate from the one ``fab lab.up`` makes (its own name,
bridge, subnet and nft table), so running the suite never touches a demo lab.
Set ``KEEL_TEST_LAB`` / ``KEEL_TEST_SUBNET`` to run two suites side by side.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel import control
from keel.connection import Connection
from keel.inventory import HostSpec, Inventory
from keel.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
LAB_NAME = os.environ.get("KEEL_TEST_LAB", "ktest")
LAB_SUBNET = os.environ.get("KEEL_TEST_SUBNET", "10.83.7.0/24")
# A lab runs one Debian release: Debian 13 hosts get a lab of their own (default: the
# test lab's name + "t", third octet + 100).
_a, _b, _c, _rest = LAB_SUBNET.split(".", 3)
TRIXIE_LAB = os.environ.get("KEEL_TEST_TRIXIE_LAB", LAB_NAME + "t")
TRIXIE_SUBNET = os.environ.get("KEEL_TEST_TRIXIE_SUBNET",
                               f"{_a}.{_b}.{(int(_c) + 100) % 256}.{_rest}")
# The suite's `fab` runs keep their SSH connections (keel.control) as a user's would, in a
# directory of the suite's own (mode 0700), whose control processes are ended at the end.
# (One directory per session, though pytest imports this file twice: as conftest and as
# tests.conftest.)
if "KEEL_TEST_CONTROL_DIR" not in os.environ:
    os.environ["KEEL_TEST_CONTROL_DIR"] = tempfile.mkdtemp(prefix="keel-control-test-")
CONTROL_DIR = Path(os.environ["KEEL_TEST_CONTROL_DIR"])
os.environ["KEEL_CONTROL_DIR"] = str(CONTROL_DIR)


@atexit.register
def _remove_control_dir() -> None:
    control.stop_all(CONTROL_DIR)
    shutil.rmtree(CONTROL_DIR, ignore_errors=True)


def lab_leftovers(lab: Lab) -> list[str]:
    """Everything a lab can leave on the controller, as human-readable lines."""
    left = []
    if Path(f"/sys/class/net/{lab.bridge}").exists():
        left.append(f"bridge {lab.bridge}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += [f"veth {ln.split(':')[1].strip()}" for ln in links.splitlines()
             if f"vb-{lab.name}-" in ln]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    if lab.nft_table in tables:
        left.append(f"nft table {lab.nft_table}")
    with open("/proc/mounts") as fh:
        # Mount points in the lab's own dir: "labs/kt1/" is not "labs/kt1t/" (the Debian 13
        # lab beside it, whose overlay options may name other paths).
        left += [f"mount {ln.split()[1]}" for ln in fh
                 if ln.split()[1].startswith(f"{lab.dir}/")]
    procs = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    left += [f"process {ln.strip()}" for ln in procs.splitlines()
             if "systemd-nspawn" in ln and f"--machine={lab.name}-" in ln]
    if (lab.dir / "hosts").exists() and any((lab.dir / "hosts").iterdir()):
        left.append(f"host dirs in {lab.dir / 'hosts'}")
    return left


class TestLab:
    """The suite's lab: hosts are started on demand and shared by name."""

    __test__ = False  # not a test class

    def __init__(self, tmp: Path, name: str = LAB_NAME, subnet: str = LAB_SUBNET,
                 release: str = "bookworm") -> None:
        self.lab = Lab(name, subnet)
        self.release = release
        self.inventory_path = tmp / "inventory" / "lab.yml"
        # Reuse the project's group_vars so the example app is what gets deployed.
        (tmp / "inventory").mkdir(parents=True, exist_ok=True)
        (tmp / "inventory" / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")

    def hosts(self, count: int) -> list[HostSpec]:
        self.lab.up(count=count, release=self.release)
        self.lab.write_inventory(self.inventory_path)
        return Inventory.load(self.inventory_path).hosts()[:count]

    def host(self, name: str) -> HostSpec:
        index = int(name.removeprefix("lab"))
        return self.hosts(index)[index - 1]


@pytest.fixture(scope="session")
def test_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestLab]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (systemd-nspawn): run `make test` as root")
    tl = TestLab(tmp_path_factory.mktemp("lab"))
    tl.lab.down()  # stale state from a crashed earlier run
    try:
        yield tl
    finally:
        tl.lab.down()
        control.stop_all(CONTROL_DIR)
    left = lab_leftovers(tl.lab) + [f"control process {c}" for c in control.running(CONTROL_DIR)]
    assert not left, f"lab left things behind: {left}"


@pytest.fixture
def connect():
    """Open agent connections to specs; closed at teardown."""
    opened: list[Connection] = []

    def _open(spec: HostSpec, user: str | None = None) -> Connection:
        conn = Connection.open(spec, user=user)
        opened.append(conn)
        return conn

    yield _open
    for c in opened:
        c.close()


def fab(*args: str, inventory: Path | None = None, check: bool = False,
        env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real ``fab`` CLI from the project dir, as a user would."""
    cmd = [sys.executable, "-m", "fabric", *args]
    if inventory is not None and args and not args[0].startswith("lab."):
        cmd += ["--inventory", str(inventory)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"fab {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# Host roles in the test lab (started on first use, shared across modules):
#   lab1  bootstrapped and deployed once, shared by tests that leave it serving
#   lab2  raw operation tests on a fresh, un-bootstrapped host
#   lab3  multi-app and lockout tests
@pytest.fixture(scope="session")
def deployed(test_lab: TestLab) -> HostSpec:
    """lab1 after `fab bootstrap` and `fab deploy` (run through the real CLI)."""
    spec = test_lab.host("lab1")
    fab("bootstrap", "--limit", "lab1", inventory=test_lab.inventory_path, check=True)
    fab("deploy", "--limit", "lab1", inventory=test_lab.inventory_path, check=True)
    return spec
