"""Real framework apps deployed unchanged, with inventory settings only, and their data kept.

The Flask tutorial's flaskr (tests/apps/flaskr) runs on the shared deployed
host (lab1) beside the example app, under its own server_name: its instance/
folder is a shared path, its database is created by a run-once ``setup``, and
each deploy, rollback and failed migration is checked against the posts.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import ROOT, TestLab, fab
from tests.integration.fixture_apps import (
    DJANGO,
    Browser,
    Flaskr,
    deploy_django,
    deploy_flaskr,
    remove_app,
    titles,
)


@pytest.fixture(scope="module")
def flaskr(tmp_path_factory: pytest.TempPathFactory, test_lab: TestLab,
           deployed: HostSpec) -> Iterator[Flaskr]:
    app = Flaskr(tmp_path_factory.mktemp("flaskr"))
    yield app
    # Leave lab1 with the example app only.
    remove_app(deployed, "flaskr")


def _fab(test_lab: TestLab, app: Flaskr, *args: str):
    return fab(*args, "--limit", "lab1", inventory=app.inventory(test_lab))


def _host(deployed: HostSpec, cmd: str) -> str:
    conn = Connection.open(deployed, user="deploy")
    try:
        res = conn.run(cmd)
        assert res.ok, res.err
        return res.out
    finally:
        conn.close()


def test_flaskr_deploys_unchanged_and_keeps_its_data(test_lab: TestLab, deployed: HostSpec,
                                                      flaskr: Flaskr) -> None:
    first = deploy_flaskr(test_lab, flaskr)
    assert first.returncode == 0, first.stdout[-3000:]
    assert "flaskr: setup: flask --app flaskr init-db" in first.stdout
    # instance/ is the host's, linked from the release; the local one never went up.
    out = _host(deployed, "readlink /srv/flaskr/current/instance; stat -c %U "
                          "/srv/flaskr/shared/instance; head -c 15 /srv/flaskr/shared/instance/*")
    assert out.splitlines() == ["/srv/flaskr/shared/instance", "flaskr", "SQLite format 3"], out
    # verify asks flaskr's root (it has no /healthz), as the canary and the gate did.
    verify = fab("verify", "--limit", "lab1", inventory=flaskr.inventory(test_lab))
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-2000:]
    b = Browser(deployed.address)
    code = b.request("/auth/register", {"username": "ada", "password": "pw1"})[0]
    assert code == 302, _host(deployed, "journalctl -u flaskr -n 30 --no-pager")
    assert b.request("/auth/login", {"username": "ada", "password": "pw1"})[0] == 302
    assert b.request("/create", {"title": "before", "body": "first post"})[0] == 302
    assert titles(b) == ["before"]

    # A code change: a new release; setup does not run again, the posts stay.
    flaskr.change()
    second = deploy_flaskr(test_lab, flaskr)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "setup" not in second.stdout
    assert titles(b) == ["before"]
    # Its snapshot holds the database as a whole SQLite file (backup API), one post in it.
    check = ("import sqlite3, sys, tarfile; t = tarfile.open(sys.argv[1]); "
             "t.extract('instance/flaskr.sqlite', '/tmp/keel-snap-check'); "
             "c = sqlite3.connect('/tmp/keel-snap-check/instance/flaskr.sqlite'); "
             "print(c.execute('pragma integrity_check').fetchone()[0], "
             "c.execute('select count(*) from post').fetchone()[0], sorted(t.getnames()))")
    out = _host(deployed, f"rm -rf /tmp/keel-snap-check; python3 -c \"{check}\" "
                          "$(ls -1t /srv/flaskr/snapshots/*.tar | head -n 1); "
                          "rm -rf /tmp/keel-snap-check")
    assert out.startswith("ok 1 ['instance', 'instance/flaskr.sqlite', 'state'"), out
    assert b.request("/create", {"title": "after", "body": "second post"})[0] == 302
    assert titles(b) == ["after", "before"]

    # A migration that deletes the posts and then fails: the data is exactly as it was.
    flaskr.change()
    bad = ("python -c \"import sqlite3; c = sqlite3.connect('instance/flaskr.sqlite'); "
           "c.execute('DELETE FROM post'); c.commit()\" && echo 'migration 7 failed' >&2 && exit 3")
    failed = deploy_flaskr(test_lab, flaskr, pre_start=[bad])
    assert failed.returncode != 0
    lines = [ln for ln in failed.stdout.splitlines() if ln.startswith("lab1: ")]
    assert len(lines) == 1 and lines[0].endswith("migration 7 failed (data restored as before)"), (
        failed.stdout[-3000:])
    assert titles(b) == ["after", "before"]

    # Rollback: the first release, with the data as it left it (the snapshot taken
    # before the second release): the post made under the second is gone.
    second_release = _host(deployed, "readlink /srv/flaskr/current").strip().rsplit("/", 1)[1]
    rolled = _fab(test_lab, flaskr, "rollback", "--app", "flaskr")
    assert rolled.returncode == 0, rolled.stdout[-3000:]
    assert titles(b) == ["before"]
    # Forward again to the second release: its data as the rollback found it.
    forward = _fab(test_lab, flaskr, "rollback", "--app", "flaskr", "--to", second_release)
    assert forward.returncode == 0, forward.stdout[-3000:]
    assert titles(b) == ["after", "before"]
    # --keep-data: the release changes, the data does not.
    kept = _fab(test_lab, flaskr, "rollback", "--app", "flaskr", "--keep-data")
    assert kept.returncode == 0, kept.stdout[-3000:]
    assert titles(b) == ["after", "before"]
    # Snapshots go with their releases: one per release on disk at most... and a bound.
    snaps = _host(deployed, "ls /srv/flaskr/snapshots").split()
    releases = _host(deployed, "ls /srv/flaskr/releases").split()
    assert snaps and all(s.split(".", 1)[0] in releases for s in snaps), (snaps, releases)


def test_rerun_setup_runs_it_again_after_a_snapshot(test_lab: TestLab, deployed: HostSpec,
                                                    flaskr: Flaskr) -> None:
    """--rerun-setup runs init-db again (which empties the blog), with a snapshot first."""
    before = set(_host(deployed, "ls /srv/flaskr/snapshots 2>/dev/null; true").split())
    proc = deploy_flaskr(test_lab, flaskr, "--rerun-setup")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "flaskr: setup: flask --app flaskr init-db" in proc.stdout
    assert titles(Browser(deployed.address)) == []
    after = set(_host(deployed, "ls /srv/flaskr/snapshots").split())
    assert after - before, (before, after)
    again = deploy_flaskr(test_lab, flaskr)
    assert again.returncode == 0 and "setup" not in again.stdout, again.stdout[-3000:]


def _error_line(proc: Any) -> str:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("lab1: ")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stdout[-3000:]
    return lines[0]


def test_a_failing_build_setup_or_health_path_changes_nothing(test_lab: TestLab,
                                                              deployed: HostSpec,
                                                              flaskr: Flaskr) -> None:
    """Each is one line naming the host, the app and the cause; the live release keeps
    serving and the data stays exactly as it was."""
    b = Browser(deployed.address)
    assert b.request("/auth/register", {"username": "bob", "password": "pw2"})[0] == 302
    assert b.request("/auth/login", {"username": "bob", "password": "pw2"})[0] == 302
    assert b.request("/create", {"title": "kept", "body": "must survive"})[0] == 302
    live = _host(deployed, "readlink /srv/flaskr/current").strip()
    releases = _host(deployed, "ls /srv/flaskr/releases").split()

    def unchanged() -> None:
        assert _host(deployed, "readlink /srv/flaskr/current").strip() == live
        assert titles(b) == ["kept"]

    # A build that fails: its release is removed, nothing else moved.
    flaskr.change()
    line = _error_line(deploy_flaskr(test_lab, flaskr, build=["echo 'assets: npm: not found' >&2; exit 2"]))
    assert line.startswith("lab1: command flaskr: build: ") and "npm: not found" in line, line
    unchanged()
    assert _host(deployed, "ls /srv/flaskr/releases").split() == releases
    # A setup that empties the blog and then fails (asked to run again): data restored.
    wipe = ("python -c \"import sqlite3; c = sqlite3.connect('instance/flaskr.sqlite'); "
            "c.execute('DELETE FROM post'); c.commit()\" && echo 'seed data: bad row' >&2 && exit 4")
    line = _error_line(deploy_flaskr(test_lab, flaskr, "--rerun-setup", setup=[wipe]))
    assert line.startswith("lab1: command flaskr: setup: "), line
    assert line.endswith("seed data: bad row (data restored as before)"), line
    unchanged()
    # A health path the app does not have: the canary refuses the release.
    line = _error_line(deploy_flaskr(test_lab, flaskr, health_path="/no-such-page"))
    assert line.startswith("lab1: command flaskr: canary of release "), line
    assert "/no-such-page answered 404" in line, line
    unchanged()
    ok = deploy_flaskr(test_lab, flaskr)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert titles(b) == ["kept"]


def test_an_app_that_left_the_inventory_is_reported_then_pruned(
        test_lab: TestLab, deployed: HostSpec, flaskr: Flaskr) -> None:
    plan = fab("plan", "--limit", "lab1", inventory=test_lab.inventory_path)
    assert plan.returncode == 0, plan.stdout[-3000:]
    assert "app flaskr on lab1 is no longer in the inventory" in plan.stdout, plan.stdout[-3000:]
    assert Browser(deployed.address).request("/")[0] == 200  # plan changed nothing
    pruned = fab("deploy", "--limit", "lab1", "--prune", inventory=test_lab.inventory_path)
    assert pruned.returncode == 0, pruned.stdout[-3000:]
    assert "flaskr: no longer in the inventory: removed (data kept)" in pruned.stdout
    left = _host(deployed, "systemctl is-active flaskr.service; ls /etc/nginx/sites-enabled "
                           "/etc/uwsgi-apps; ls /srv/flaskr/shared/instance; true").split()
    assert "flaskr" not in left and "flaskr.ini" not in left and "flaskr.sqlite" in left, left
    # flaskr.test now reaches the default site (the example app), not flaskr.
    assert "Flaskr" not in Browser(deployed.address).request("/")[1]
    again = fab("deploy", "--limit", "lab1", inventory=test_lab.inventory_path)
    assert again.returncode == 0 and "no longer in the inventory" not in again.stdout


def test_shared_path_escaping_the_release_is_refused(test_lab: TestLab, deployed: HostSpec,
                                                     flaskr: Flaskr) -> None:
    proc = fab("plan", "--limit", "lab1",
               inventory=flaskr.inventory(test_lab, shared_paths=["../etc"]))
    assert proc.returncode != 0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("lab1: ")]
    assert lines == ["lab1: app flaskr: shared_paths: '../etc' is not a path inside the release"], (
        proc.stdout[-2000:])


def test_a_src_layout_project_is_imported_from_its_release(test_lab: TestLab, deployed: HostSpec,
                                                            tmp_path: Path) -> None:
    """A pyproject project in the src layout (src/<package>/) deploys unchanged: uWSGI and
    the app's commands import it from the release's src/."""
    src = tmp_path / "shop"
    (src / "src" / "shop").mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        '[project]\nname = "shop"\nversion = "1.0"\ndependencies = []\n\n'
        '[build-system]\nrequires = ["flit_core<4"]\nbuild-backend = "flit_core.buildapi"\n')
    (src / "src" / "shop" / "__init__.py").write_text(
        "from shop.views import application\n")
    (src / "src" / "shop" / "views.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'shop from src']\n")
    hello = yaml.safe_load((ROOT / "inventory" / "group_vars" / "app.yml").read_text())["apps"]
    app = {"name": "shop", "source": str(src), "module": "shop:application",
           "server_name": "shop.test", "health_path": "/",
           "pre_start": ["python -c 'import shop.views'"]}
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    shutil.copy(test_lab.inventory_path, inv / "lab.yml")
    (inv / "group_vars" / "app.yml").write_text(yaml.safe_dump({"apps": [*hello, app]}))
    try:
        proc = fab("deploy", "--limit", "lab1", inventory=inv / "lab.yml")
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert Browser(deployed.address, "shop.test").request("/") == (200, "shop from src")
    finally:
        remove_app(deployed, "shop")


@pytest.fixture(scope="module")
def mysite(tmp_path_factory: pytest.TempPathFactory, test_lab: TestLab,
           deployed: HostSpec) -> Iterator[Path]:
    src = tmp_path_factory.mktemp("mysite") / "mysite"
    shutil.copytree(ROOT / "tests" / "apps" / "mysite", src)
    yield src
    remove_app(deployed, "mysite")


def test_stock_django_deploys_unchanged_and_keeps_its_data(test_lab: TestLab, deployed: HostSpec,
                                                           mysite: Path) -> None:
    first = deploy_django(test_lab, mysite)
    assert first.returncode == 0, first.stdout[-3000:]
    assert "mysite: build: python manage.py collectstatic --noinput" in first.stdout
    b = Browser(deployed.address, DJANGO)
    assert b.request("/")[0] == 404  # a stock project: the health path is the admin's
    verify = fab("verify", "--limit", "lab1", inventory=mysite.parent / "inventory" / "lab.yml")
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-2000:]
    # Static files from the build, served by nginx from the frozen release.
    code, css = b.request("/static/polls/style.css")
    assert code == 200 and "green" in css
    assert b.request("/static/admin/css/base.css")[0] == 200
    assert _host(deployed, "stat -c %U:%a /srv/mysite/current/staticfiles/polls/style.css"
                 ).strip() == "root:644"
    # The admin: log in (the superuser from setup), add a question, list it.
    token = b.csrf("/admin/login/")
    code, _ = b.request("/admin/login/?next=/admin/", {
        "username": "admin", "password": "lab-only-admin-pw", "csrfmiddlewaretoken": token,
        "next": "/admin/"})
    assert code == 302
    token = b.csrf("/admin/polls/question/add/")
    code, body = b.request("/admin/polls/question/add/", {
        "question_text": "What's up?", "pub_date_0": "2026-01-01", "pub_date_1": "12:00:00",
        "csrfmiddlewaretoken": token, "_save": "Save"})
    assert code == 302, body[-2000:]
    assert "What&#x27;s up?" in b.request("/admin/polls/question/")[1]
    # A code change: built again, migrated, setup not rerun (createsuperuser would fail).
    with open(mysite / "polls" / "views.py", "a") as fh:
        fh.write(f"\n# change {uuid.uuid4().hex}\n")
    second = deploy_django(test_lab, mysite)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "build" in second.stdout and "setup" not in second.stdout
    assert "What&#x27;s up?" in b.request("/admin/polls/question/")[1]
