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


def apply(host: Host) -> None:
    for app in apps.resolve(host):
        root, group, restart = app["root"], app["group"], f"restart {app['name']}"
        for sub in ("releases", "shared"):
            files.directory(host, f"{root}/{sub}", owner="root", group=group, mode="0750")
        files.directory(host, app["state_dir"], owner=app["user"], group=group, mode="0750")
        files.template(host, "app.env.j2", app["env_file"], owner="root", group=group,
                       mode="0640", secret=True, app=app, notify=restart)
        files.tree(host, app["source"], app["release_dir"], owner="root", group=group)
        for i, cmd in enumerate(app["pre_start"]):
            # Runs once per release, as the app user, with its settings and venv;
            # the marker is written (by root) only when the command succeeds.
            marker = f"{app['release_dir']}/.keel-pre-start-{i}"
            inner = (f"set -a; . {q(app['env_file'])}; set +a; "
                     f"export APP_STATE_DIR={q(app['state_dir'])} "
                     f"PATH={q(app['venv'] + '/bin')}:$PATH; {cmd}")
            server.command(
                host, f"runuser -u {q(app['user'])} -- sh -c {q(inner)} && touch {q(marker)}",
                creates=marker, chdir=app["release_dir"], name=f"{app['name']}: {cmd}",
            )
        files.symlink(host, app["code_dir"], f"releases/{app['release']}", notify=restart)
