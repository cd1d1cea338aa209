"""app: ship the code as a release, its settings, its state dir, and point ``current`` at it.

A release is the app's source tree, uploaded once to
``/srv/<app>/releases/<release>/`` (the release id is a digest of the tree);
``pre_start`` commands run inside it, as the app user, before ``current``
switches to it.
"""

from __future__ import annotations

from typing import Any

from keel.host import Host
from keel.operation import q
from keel.ops import files, server
from roles import apps

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


def _as_app_user(app: dict[str, Any], cmd: str) -> str:
    """``cmd`` run in the release, as the app user, with its settings and venv."""
    inner = (f"set -a; . {q(app['env_file'])}; set +a; "
             f"export APP_STATE_DIR={q(app['state_dir'])} APP_RELEASE={q(app['release'])} "
             f"PATH={q(app['venv'] + '/bin')}:$PATH; {cmd}")
    return f"runuser -u {q(app['user'])} -- sh -c {q(inner)}"


def apply(host: Host) -> None:
    for app in apps.resolve(host):
        root, group, restart = app["root"], app["group"], f"restart {app['name']}"
        # releases/ is traversable (0751) so nginx can serve static files from
        # the code; shared/ (settings, state) is closed to everyone but the app.
        files.directory(host, f"{root}/releases", owner="root", group=group, mode="0751")
        files.directory(host, f"{root}/shared", owner="root", group=group, mode="0750")
        files.directory(host, app["state_dir"], owner=app["user"], group=group, mode="0750")
        files.template(host, "app.env.j2", app["env_file"], owner="root", group=group,
                       mode="0640", secret=True, app=app, notify=restart)
        files.tree(host, app["source"], app["release_dir"], owner="root", group=group,
                   name=app["release_dir"])
        venv_key = app["venv"].rsplit("/", 1)[1]
        marker = f"{app['release_dir']}/.keel-import-ok-{venv_key}"
        server.command(
            host, _as_app_user(app, f"python -c {q(IMPORT_CHECK)} {q(app['module'])}")
            + f" && touch {q(marker)}",
            creates=marker, chdir=app["release_dir"],
            name=f"{app['name']}: import {app['module']} in release {app['release']}",
        )
        for i, cmd in enumerate(app["pre_start"]):
            # Once per release; the marker is written (by root) only on success.
            marker = f"{app['release_dir']}/.keel-pre-start-{i}"
            server.command(
                host, _as_app_user(app, cmd) + f" && touch {q(marker)}",
                creates=marker, chdir=app["release_dir"], name=f"{app['name']}: {cmd}",
            )
        files.symlink(host, app["code_dir"], f"releases/{app['release']}", notify=restart)
