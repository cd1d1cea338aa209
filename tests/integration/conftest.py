"""What the integration modules that change the shared deployed host (lab1) share:
a copy of the example app to change and deploy, and small probes of lab1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.connection import Connection
from keel.inventory import HostSpec
from keel.ops.files import tree_digest
from roles import apps
from tests.conftest import ROOT, TestLab, fab


def _version(spec: HostSpec) -> tuple[int, str]:
    proc = subprocess.run(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}",
                           f"http://{spec.address}/version"], capture_output=True, text=True)
    body, _, code = proc.stdout.rpartition("\n")
    release = json.loads(body)["release"] if code == "200" else ""
    return int(code or 0), release


class Variant:
    """A copy of the example app that tests change and deploy."""

    def __init__(self, tmp: Path, python_version: str) -> None:
        self.dir = tmp / "app"
        shutil.copytree(ROOT / "app", self.dir, ignore=shutil.ignore_patterns("__pycache__"))
        self.python_version = python_version
        self.uwsgi_version = apps.APP_DEFAULTS["uwsgi_version"]
        self.n = 0

    def change(self) -> str:
        """Change the code; return the release id it will deploy as."""
        self.n += 1
        with open(self.dir / "hello" / "views.py", "a") as fh:  # unique across tests and runs
            fh.write(f"\n# change {self.n} {uuid.uuid4().hex}\n")
        return self.release

    @property
    def release(self) -> str:
        """The release id keel gives this code with its requirements (roles/apps.py)."""
        requirements = ((self.dir / "requirements.txt").read_text().rstrip("\n")
                        + f"\nuwsgi=={self.uwsgi_version}\n")
        return apps.release_id(tree_digest(self.dir),
                               apps.venv_id(requirements, self.python_version))

    def extra(self, **overrides: object) -> str:
        app = {"name": "hello", "source": str(self.dir), "module": "hello:create_app()",
               "env": {"APP_SECRET_KEY": "lab-only-secret-change-me"},
               "pre_start": ["python -m hello.migrate"], **overrides}
        return json.dumps({"apps": [app]})


@pytest.fixture(scope="session")
def host_python(deployed: HostSpec) -> str:
    conn = Connection.open(deployed, user="deploy")
    try:
        return conn.run("python3 -V").out.split()[1]
    finally:
        conn.close()


@pytest.fixture
def variant(tmp_path: Path, test_lab: TestLab, deployed: HostSpec,
            host_python: str) -> Iterator[Variant]:
    yield Variant(tmp_path, host_python)
    # Back to the example app from the repo, healthy.
    fab("deploy", "--limit", "lab1", inventory=test_lab.inventory_path, check=True)


def _deploy(test_lab: TestLab, variant: Variant, **overrides: object):
    return fab("deploy", "--limit", "lab1", "--extra-vars", variant.extra(**overrides),
               inventory=test_lab.inventory_path)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("lab1: ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def root(deployed: HostSpec) -> Iterator[Connection]:
    """A root agent on lab1, as the deploy user logs in (bootstrap locks the initial one)."""
    conn = Connection.open(deployed, user="deploy")
    yield conn
    conn.close()


def run_ok(conn: Connection, script: str) -> str:
    """``script``'s output; a failure fails the test with its stderr."""
    res = conn.run(script)
    assert res.ok, f"{script}: {res.err}"
    return res.out


LYNIS_MIN = 80
SECURITY_DOC = ROOT / "docs" / "security.md"


def lynis_audit(conn: Connection) -> tuple[int, list[str], list[str]]:
    """Install Lynis (Debian's package: on the test host only) and audit the host.

    Returns the hardening index and the IDs of its warnings and suggestions.
    About two minutes: run it once per release.
    """
    run_ok(conn, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
                 " -o DPkg::Lock::Timeout=120 lynis >/dev/null")
    run_ok(conn, "lynis audit system --quick --no-colors >/dev/null 2>&1")
    report = run_ok(conn, "cat /var/log/lynis-report.dat")
    found = re.search(r"^hardening_index=(\d+)$", report, re.M)
    assert found, report[-1000:]
    warnings = sorted(set(re.findall(r"^warning\[\]=([A-Z]+-\d+)\|", report, re.M)))
    suggestions = sorted(set(re.findall(r"^suggestion\[\]=([A-Z]+-\d+)\|", report, re.M)))
    return int(found.group(1)), warnings, suggestions


def assert_lynis_rates_well(conn: Connection, release: str) -> None:
    """Lynis' index >= LYNIS_MIN, and each finding left is explained in docs/security.md."""
    index, warnings, suggestions = lynis_audit(conn)
    print(f"\nLynis ({release}): hardening index {index}; warnings {warnings}; "
          f"suggestions {suggestions}")
    assert index >= LYNIS_MIN, f"Lynis hardening index {index} < {LYNIS_MIN} on {release}"
    doc = SECURITY_DOC.read_text()
    unexplained = [t for t in warnings + suggestions if f"`{t}`" not in doc]
    assert not unexplained, f"Lynis findings not explained in docs/security.md: {unexplained}"
