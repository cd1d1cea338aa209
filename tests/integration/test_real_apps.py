"""Real framework apps deployed unchanged, with inventory settings only, and their data kept.

The Flask tutorial's flaskr (tests/apps/flaskr) runs on the shared deployed
host (lab1) beside the example app, under its own server_name: its instance/
folder is a shared path, its database is created by a run-once ``setup``, and
each deploy, rollback and failed migration is checked against the posts.
"""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
import yaml

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import ROOT, TestLab, fab

NAME = "flaskr.test"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """A client with a cookie jar that talks to one server_name on a lab host."""

    def __init__(self, address: str, name: str = NAME) -> None:
        self.base, self.name = f"http://{address}", name
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(CookieJar()), _NoRedirect())

    def csrf(self, path: str) -> str:
        """The CSRF token of the Django form at ``path``."""
        code, body = self.request(path)
        assert code == 200, body[-500:]
        return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)  # type: ignore[union-attr]

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers={"Host": self.name})
        try:
            with self.opener.open(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


class Flaskr:
    """A copy of the fixture app, deployed beside the example app."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "flaskr"
        shutil.copytree(ROOT / "tests" / "apps" / "flaskr", self.dir)
        # A developer's local instance folder: must never reach the host.
        (self.dir / "instance").mkdir()
        (self.dir / "instance" / "flaskr.sqlite").write_text("a local dev database\n")

    def change(self) -> None:
        with open(self.dir / "flaskr" / "blog.py", "a") as fh:
            fh.write(f"\n# change {uuid.uuid4().hex}\n")

    def inventory(self, test_lab: TestLab, **overrides: object) -> Path:
        """The lab's inventory with flaskr beside the example app in group_vars/app.yml."""
        hello = yaml.safe_load((ROOT / "inventory" / "group_vars" / "app.yml").read_text())["apps"]
        app = {"name": "flaskr", "source": str(self.dir), "module": "flaskr:create_app()",
               "server_name": NAME, "shared_paths": ["instance"],
               "setup": ["flask --app flaskr init-db"], **overrides}
        inv = self.dir.parent / "inventory"
        (inv / "group_vars").mkdir(parents=True, exist_ok=True)
        shutil.copy(test_lab.inventory_path, inv / "lab.yml")
        (inv / "group_vars" / "app.yml").write_text(yaml.safe_dump({"apps": [*hello, app]}))
        return inv / "lab.yml"


@pytest.fixture(scope="module")
def flaskr(tmp_path_factory: pytest.TempPathFactory, test_lab: TestLab,
           deployed: HostSpec) -> Iterator[Flaskr]:
    app = Flaskr(tmp_path_factory.mktemp("flaskr"))
    yield app
    # Leave lab1 with the example app only.
    conn = Connection.open(deployed, user="deploy")
    try:
        conn.run("systemctl disable --now flaskr.service flaskr.socket; "
                 "rm -f /etc/systemd/system/flaskr.* /etc/nginx/sites-enabled/flaskr "
                 "/etc/nginx/sites-available/flaskr /etc/uwsgi-apps/flaskr.ini; "
                 "systemctl daemon-reload; systemctl reload nginx; rm -rf /srv/flaskr")
    finally:
        conn.close()


def _deploy(test_lab: TestLab, app: Flaskr, *args: str, **overrides: object):
    return fab("deploy", "--limit", "lab1", *args, inventory=app.inventory(test_lab, **overrides))


def _fab(test_lab: TestLab, app: Flaskr, *args: str):
    return fab(*args, "--limit", "lab1", inventory=app.inventory(test_lab))


def _titles(browser: Browser) -> list[str]:
    code, body = browser.request("/")
    assert code == 200, body[-500:]
    return [ln.strip().removeprefix("<h1>").removesuffix("</h1>") for ln in body.splitlines()
            if ln.strip().startswith("<h1>") and ln.strip() not in ("<h1>Flaskr</h1>",)
            and "Posts" not in ln]


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
    first = _deploy(test_lab, flaskr)
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
    assert _titles(b) == ["before"]

    # A code change: a new release; setup does not run again, the posts stay.
    flaskr.change()
    second = _deploy(test_lab, flaskr)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "setup" not in second.stdout
    assert _titles(b) == ["before"]
    assert b.request("/create", {"title": "after", "body": "second post"})[0] == 302
    assert _titles(b) == ["after", "before"]

    # A migration that deletes the posts and then fails: the data is exactly as it was.
    flaskr.change()
    bad = ("python -c \"import sqlite3; c = sqlite3.connect('instance/flaskr.sqlite'); "
           "c.execute('DELETE FROM post'); c.commit()\" && echo 'migration 7 failed' >&2 && exit 3")
    failed = _deploy(test_lab, flaskr, pre_start=[bad])
    assert failed.returncode != 0
    lines = [ln for ln in failed.stdout.splitlines() if ln.startswith("lab1: ")]
    assert len(lines) == 1 and lines[0].endswith("migration 7 failed (data restored as before)"), (
        failed.stdout[-3000:])
    assert _titles(b) == ["after", "before"]

    # Rollback: the first release, with the data as it left it (the snapshot taken
    # before the second release): the post made under the second is gone.
    second_release = _host(deployed, "readlink /srv/flaskr/current").strip().rsplit("/", 1)[1]
    rolled = _fab(test_lab, flaskr, "rollback", "--app", "flaskr")
    assert rolled.returncode == 0, rolled.stdout[-3000:]
    assert _titles(b) == ["before"]
    # Forward again to the second release: its data as the rollback found it.
    forward = _fab(test_lab, flaskr, "rollback", "--app", "flaskr", "--to", second_release)
    assert forward.returncode == 0, forward.stdout[-3000:]
    assert _titles(b) == ["after", "before"]
    # --keep-data: the release changes, the data does not.
    kept = _fab(test_lab, flaskr, "rollback", "--app", "flaskr", "--keep-data")
    assert kept.returncode == 0, kept.stdout[-3000:]
    assert _titles(b) == ["after", "before"]
    # Snapshots go with their releases: one per release on disk at most... and a bound.
    snaps = _host(deployed, "ls /srv/flaskr/snapshots").split()
    releases = _host(deployed, "ls /srv/flaskr/releases").split()
    assert snaps and all(s.split(".", 1)[0] in releases for s in snaps), (snaps, releases)


def test_rerun_setup_runs_it_again_after_a_snapshot(test_lab: TestLab, deployed: HostSpec,
                                                    flaskr: Flaskr) -> None:
    """--rerun-setup runs init-db again (which empties the blog), with a snapshot first."""
    before = set(_host(deployed, "ls /srv/flaskr/snapshots 2>/dev/null; true").split())
    proc = _deploy(test_lab, flaskr, "--rerun-setup")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "flaskr: setup: flask --app flaskr init-db" in proc.stdout
    assert _titles(Browser(deployed.address)) == []
    after = set(_host(deployed, "ls /srv/flaskr/snapshots").split())
    assert after - before, (before, after)
    again = _deploy(test_lab, flaskr)
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
        assert _titles(b) == ["kept"]

    # A build that fails: its release is removed, nothing else moved.
    flaskr.change()
    line = _error_line(_deploy(test_lab, flaskr, build=["echo 'assets: npm: not found' >&2; exit 2"]))
    assert line.startswith("lab1: command flaskr: build: ") and "npm: not found" in line, line
    unchanged()
    assert _host(deployed, "ls /srv/flaskr/releases").split() == releases
    # A setup that empties the blog and then fails (asked to run again): data restored.
    wipe = ("python -c \"import sqlite3; c = sqlite3.connect('instance/flaskr.sqlite'); "
            "c.execute('DELETE FROM post'); c.commit()\" && echo 'seed data: bad row' >&2 && exit 4")
    line = _error_line(_deploy(test_lab, flaskr, "--rerun-setup", setup=[wipe]))
    assert line.startswith("lab1: command flaskr: setup: "), line
    assert line.endswith("seed data: bad row (data restored as before)"), line
    unchanged()
    # A health path the app does not have: the canary refuses the release.
    line = _error_line(_deploy(test_lab, flaskr, health_path="/no-such-page"))
    assert line.startswith("lab1: command flaskr: canary of release "), line
    assert "/no-such-page answered 404" in line, line
    unchanged()
    ok = _deploy(test_lab, flaskr)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert _titles(b) == ["kept"]


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


DJANGO = "django.test"


@pytest.fixture(scope="module")
def mysite(tmp_path_factory: pytest.TempPathFactory, test_lab: TestLab,
           deployed: HostSpec) -> Iterator[Path]:
    src = tmp_path_factory.mktemp("mysite") / "mysite"
    shutil.copytree(ROOT / "tests" / "apps" / "mysite", src)
    yield src
    _host(deployed, "systemctl disable --now mysite.service mysite.socket; "
                    "rm -f /etc/systemd/system/mysite.* /etc/nginx/sites-enabled/mysite "
                    "/etc/nginx/sites-available/mysite /etc/uwsgi-apps/mysite.ini; "
                    "systemctl daemon-reload; systemctl reload nginx; rm -rf /srv/mysite")


def _deploy_django(test_lab: TestLab, src: Path) -> Any:
    hello = yaml.safe_load((ROOT / "inventory" / "group_vars" / "app.yml").read_text())["apps"]
    app = {"name": "mysite", "source": str(src), "module": "mysite.wsgi:application",
           "server_name": DJANGO, "static_dir": "staticfiles", "shared_paths": ["media"],
           "env": {"DJANGO_SECRET_KEY": "lab-only-django-secret", "DJANGO_ALLOWED_HOSTS": DJANGO,
                   "DJANGO_SQLITE_PATH": "/srv/mysite/shared/state/db.sqlite3",
                   "DJANGO_SUPERUSER_PASSWORD": "lab-only-admin-pw"},
           "build": ["python manage.py collectstatic --noinput"],
           "setup": ["python manage.py migrate --noinput",
                     "python manage.py createsuperuser --noinput --username admin "
                     "--email admin@example.org"],
           "pre_start": ["python manage.py migrate --noinput"],
           "health_path": "/admin/"}
    inv = src.parent / "inventory"
    (inv / "group_vars").mkdir(parents=True, exist_ok=True)
    shutil.copy(test_lab.inventory_path, inv / "lab.yml")
    (inv / "group_vars" / "app.yml").write_text(yaml.safe_dump({"apps": [*hello, app]}))
    return fab("deploy", "--limit", "lab1", inventory=inv / "lab.yml")


def test_stock_django_deploys_unchanged_and_keeps_its_data(test_lab: TestLab, deployed: HostSpec,
                                                           mysite: Path) -> None:
    first = _deploy_django(test_lab, mysite)
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
    second = _deploy_django(test_lab, mysite)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "build" in second.stdout and "setup" not in second.stdout
    assert "What&#x27;s up?" in b.request("/admin/polls/question/")[1]
