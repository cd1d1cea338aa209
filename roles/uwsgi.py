"""uwsgi: each app's uWSGI ini (templates/uwsgi.ini.j2) and systemd unit (templates/uwsgi.service.j2).

Handlers per app: ``restart <app>`` when the unit, ini, venv or env file
changed (systemd re-reads the environment only on restart), and
``reload <app>`` (graceful, SIGHUP) when only the release changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keel.host import Host
from keel.ops import files, systemd
from roles import apps

DEFAULTS: dict[str, Any] = {}
INI_DIR = "/etc/uwsgi-apps"

#: Host-side Python, prepended to the scripts that read a uWSGI stats socket
#: (the deploy's chain reload, ``fab status``): the socket's JSON as a dict.
READ_STATS = r"""
import json, socket
def read_stats(path, timeout=5):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return json.loads(data)
"""


def apply(host: Host) -> None:
    files.directory(host, INI_DIR, owner="root", group="root", mode="0755")
    nginx_group = host.vars["nginx_group"]
    for app in apps.resolve(host):
        restart, reload = f"restart {app['name']}", f"reload {app['name']}"
        # Readable by the app user: the master re-reads it on reload, after the uid drop.
        # A changed ini needs only a graceful reload (SIGHUP: the master re-execs).
        files.template(host, "uwsgi.ini.j2", app["ini_path"], owner="root", group=app["group"],
                       mode="0640", app=app, nginx_group=nginx_group, notify=reload)
        files.template(host, "uwsgi.service.j2", f"/etc/systemd/system/{app['unit']}",
                       app=app, nginx_group=nginx_group, notify=restart)
        started = systemd.service(host, app["unit"], enabled=True, running=True)
        if "started" in started.reason:  # just started with everything new: nothing to redo
            host.notified[:] = [n for n in host.notified if n not in (restart, reload)]


def handlers(host: Host) -> dict[str, Callable[[Host], Any]]:
    out: dict[str, Callable[[Host], Any]] = {}
    for app in apps.resolve(host):
        unit = app["unit"]
        out[f"restart {app['name']}"] = lambda h, u=unit: systemd.restart(h, u)
    for app in apps.resolve(host):
        unit, restart = app["unit"], f"restart {app['name']}"
        out[f"reload {app['name']}"] = (
            lambda h, u=unit, r=restart: None if r in h.handled else systemd.reload(h, u)
        )
    return out
