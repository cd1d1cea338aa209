"""Debian 13 (trixie): bootstrap -> deploy -> verify of the example app, then a code change
deployed under load; the host then measured as on Debian 12 (ssh-audit, Lynis); last, the
fixture apps (flaskr, a stock Django project) deployed beside the example app.

A lab runs one Debian release, so trixie hosts get a lab of their own
(``TRIXIE_LAB``/``TRIXIE_SUBNET`` in tests/conftest.py), torn down at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.connection import Connection
from tests.conftest import ROOT, TRIXIE_LAB, TRIXIE_SUBNET, TestLab, fab, lab_leftovers
from tests.integration.conftest import Variant, _version, assert_lynis_rates_well
from tests.integration.fixture_apps import DJANGO, Browser, Flaskr, deploy_django, deploy_flaskr, titles
from tests.load import Load


@pytest.fixture(scope="module")
def trixie_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestLab]:
    tl = TestLab(tmp_path_factory.mktemp("trixie"), TRIXIE_LAB, TRIXIE_SUBNET, "trixie")
    tl.lab.down()
    try:
        yield tl
    finally:
        tl.lab.down()
    assert not lab_leftovers(tl.lab), lab_leftovers(tl.lab)


def test_trixie_bootstrap_deploy_verify(trixie_lab: TestLab, tmp_path: Path) -> None:
    spec = trixie_lab.host("lab1")
    inv = trixie_lab.inventory_path
    fab("bootstrap", "--limit", "lab1", inventory=inv, check=True)
    fab("deploy", "--limit", "lab1", inventory=inv, check=True)
    proc = fab("verify", "--limit", "lab1", inventory=inv)
    assert proc.returncode == 0, proc.stdout[-3000:]
    conn = Connection.open(spec, user="deploy")
    try:
        assert "VERSION_CODENAME=trixie" in conn.run("cat /etc/os-release").out
        python = conn.run("python3 -V").out.split()[1]
    finally:
        conn.close()
    variant = Variant(tmp_path, python)
    release = variant.change()
    with Load(f"http://{spec.address}/version", connections=4, max_seconds=240) as load:
        proc = fab("deploy", "--limit", "lab1", "--extra-vars", variant.extra(), inventory=inv)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert _version(spec) == (200, release)
    assert load.result is not None and load.result.errors == 0, load.result


def test_trixie_measured(trixie_lab: TestLab, capsys: pytest.CaptureFixture[str]) -> None:
    """The host the test above deployed (else bootstrapped and deployed here): ssh-audit finds
    no failure, Lynis rates it >= 80."""
    spec = trixie_lab.host("lab1")
    for task in ("bootstrap", "deploy"):  # no changes after the test above
        fab(task, "--limit", "lab1", inventory=trixie_lab.inventory_path, check=True)
    # No DHEat rate test: it floods sshd until MaxStartups refuses logins for a while
    # (the throttle itself is measured in test_security.py).
    audit = subprocess.run([str(Path(sys.executable).parent / "ssh-audit"), "-n",
                            "--skip-rate-test", spec.address],
                           capture_output=True, text=True, timeout=180).stdout
    assert "# key exchange algorithms" in audit, audit[-2000:]
    assert "[fail]" not in audit, [ln for ln in audit.splitlines() if "[fail]" in ln]
    conn = Connection.open(spec, user="deploy")
    try:
        with capsys.disabled():
            assert_lynis_rates_well(conn, "trixie")
    finally:
        conn.close()


def test_trixie_real_apps(trixie_lab: TestLab, tmp_path: Path) -> None:
    """The fixture apps deploy unchanged on Debian 13 too: flaskr from its pyproject.toml
    alone (no requirements file), keeping its posts across a code change; the stock
    Django project built, migrated and served with its static files."""
    spec = trixie_lab.host("lab1")
    for task in ("bootstrap", "deploy"):  # no changes after the tests above
        fab(task, "--limit", "lab1", inventory=trixie_lab.inventory_path, check=True)
    app = Flaskr(tmp_path)
    (app.dir / "requirements.txt").unlink()
    first = deploy_flaskr(trixie_lab, app)
    assert first.returncode == 0, first.stdout[-3000:]
    b = Browser(spec.address)
    assert b.request("/auth/register", {"username": "ada", "password": "pw1"})[0] == 302
    assert b.request("/auth/login", {"username": "ada", "password": "pw1"})[0] == 302
    assert b.request("/create", {"title": "on trixie", "body": "kept"})[0] == 302
    app.change()
    second = deploy_flaskr(trixie_lab, app)
    assert second.returncode == 0 and "setup" not in second.stdout, second.stdout[-3000:]
    assert titles(b) == ["on trixie"]

    src = tmp_path / "mysite"
    shutil.copytree(ROOT / "tests" / "apps" / "mysite", src)
    django = deploy_django(trixie_lab, src)
    assert django.returncode == 0, django.stdout[-3000:]
    d = Browser(spec.address, DJANGO)
    assert d.request("/admin/login/")[0] == 200
    code, css = d.request("/static/polls/style.css")
    assert code == 200 and "green" in css
