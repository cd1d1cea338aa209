"""The fixture apps of tests/apps (flaskr, a stock Django project): deployed beside the
example app with inventory settings only, and driven over HTTP like a user would."""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

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


def deploy_flaskr(test_lab: TestLab, app: Flaskr, *args: str, **overrides: object):
    return fab("deploy", "--limit", "lab1", *args, inventory=app.inventory(test_lab, **overrides))


def titles(browser: Browser) -> list[str]:
    code, body = browser.request("/")
    assert code == 200, body[-500:]
    return [ln.strip().removeprefix("<h1>").removesuffix("</h1>") for ln in body.splitlines()
            if ln.strip().startswith("<h1>") and ln.strip() not in ("<h1>Flaskr</h1>",)
            and "Posts" not in ln]


DJANGO = "django.test"


def deploy_django(test_lab: TestLab, src: Path) -> Any:
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


def remove_app(spec: HostSpec, name: str) -> None:
    """Leave the host as if app ``name`` had never been deployed beside the example app:
    its units, site, ini, /srv/<name>, user and group gone, nginx reloaded."""
    conn = Connection.open(spec, user="deploy")
    try:
        conn.run(f"systemctl disable --now {name}.service {name}.socket; "
                 f"rm -f /etc/systemd/system/{name}.* /etc/nginx/sites-enabled/{name} "
                 f"/etc/nginx/sites-available/{name} /etc/uwsgi-apps/{name}.ini; "
                 f"systemctl daemon-reload; systemctl reload nginx; rm -rf /srv/{name}; "
                 f"userdel {name}; groupdel {name}; true")
    finally:
        conn.close()
