"""app: ship the code as a release, its settings, its state dir, and point ``current`` at it.

A release is the app's source tree, uploaded once to
``/srv/<app>/releases/<release>/`` (the release id is a digest of the tree);
``pre_start`` commands run inside it, as the app user, before ``current``
switches to it, and then a canary (``roles/uwsgi.py``) starts the new unit,
ini and env file from it and asks for its health.
"""

from __future__ import annotations

import hashlib
from typing import Any

from keel.host import Host
from keel.operation import q
from keel.ops import files, server
from roles import apps, uwsgi

DEFAULTS: dict[str, Any] = {}

# Imports module:callable the way uWSGI will (calling it for "pkg:factory()"),
# so a release that cannot even load never becomes current.
IMPORT_CHECK = """
import importlib, sys
spec = sys.argv[1]
mod, _, attr = spec.partition(":")
obj = importlib.import_module(mod)
name = attr.removesuffix("()") or "application"
app = getattr(obj, name)
if attr.endswith("()"):
    app = app()
if not callable(app):
    sys.exit(f"{spec} is not a WSGI callable")
"""


def _as_app_user(app: dict[str, Any], cmd: str, env_file: str) -> str:
    """``cmd`` run in the release, as the app user, with the settings of ``env_file`` and its venv."""
    inner = (f"set -a; . {q(env_file)}; set +a; "
             f"export APP_STATE_DIR={q(app['state_dir'])} APP_RELEASE={q(app['release'])} "
             f"PATH={q(app['venv'] + '/bin')}:$PATH; {cmd}")
    return f"runuser -u {q(app['user'])} -- sh -c {q(inner)}"


def apply(host: Host) -> None:
    for app in apps.resolve(host):
        root, group, rel = app["root"], app["group"], app["release_dir"]
        # releases/ is traversable (0751) so nginx can serve static files from
        # the code; shared/ (settings, state) is closed to everyone but the app.
        files.directory(host, f"{root}/releases", owner="root", group=group, mode="0751")
        files.directory(host, f"{root}/shared", owner="root", group=group, mode="0750")
        files.directory(host, app["state_dir"], owner=app["user"], group=group, mode="0750")
        # The new settings go to a candidate file first: the checks below run
        # with them, and the live env file changes only once they pass.
        env = host.render("app.env.j2", app=app)
        candidate = app["env_file"] + ".candidate"
        files.file(host, candidate, env, owner="root", group=group, mode="0640", secret=True)
        files.tree(host, app["source"], rel, owner="root", group=group, name=rel)
        files.file(host, f"{rel}/RELEASE", app["release"] + "\n", group=group)
        files.symlink(host, f"{rel}/.venv", f"../../venvs/{app['venv'].rsplit('/', 1)[1]}")
        # Each check runs again whenever what it depends on changes.
        code = _key(app["venv"], app["module"])
        _once(host, app, candidate, f"import-ok-{code}",
              f"python -c {q(IMPORT_CHECK)} {q(app['module'])}",
              f"import {app['module']} in release {app['release']}")
        for cmd in app["pre_start"]:
            _once(host, app, candidate, f"pre-start-{_key(cmd, env)}", cmd, cmd)
        # The new unit, ini and settings, started for real beside the live service.
        script, tested = uwsgi.canary(host, app, candidate)
        marker = f"{rel}/.keel-canary-ok-{_key(code, env, tested)}"
        server.command(host, f"{script}\ntouch {q(marker)}", creates=marker,
                       name=f"{app['name']}: canary of release {app['release']}")
        # systemd reads the environment only when it starts the service.
        files.file(host, app["env_file"], env, owner="root", group=group, mode="0640",
                   secret=True, notify=f"restart {app['name']}", op_name="template")


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _once(host: Host, app: dict[str, Any], env_file: str, marker: str, cmd: str, label: str) -> None:
    """Run ``cmd`` in the release as the app user, once: the marker is written only on success."""
    path = f"{app['release_dir']}/.keel-{marker}"
    server.command(host, _as_app_user(app, cmd, env_file) + f" && touch {q(path)}", creates=path,
                   chdir=app["release_dir"], name=f"{app['name']}: {label}")
