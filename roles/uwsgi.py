"""uwsgi: each app's uWSGI ini, systemd unit and socket unit, and the canary that tests them.

Templates: ``templates/uwsgi.ini.j2`` (the ini), ``templates/uwsgi.service.j2``
(the unit) and ``templates/uwsgi.socket.j2`` (the listening socket, which
systemd holds so that it outlives every restart of the service).

Handlers per app: ``restart <app>`` when the unit or the env file changed
(systemd reads both only at start; requests wait in the socket meanwhile),
``reload <app>`` (graceful, SIGHUP: the master re-execs and re-reads the ini)
when only the ini changed, and ``restart <app> socket`` when the socket unit
itself changed (which restarts the service too, and is the one change that
briefly refuses connections).

Before any of those can take traffic, :func:`canary` starts a throwaway copy
of the new unit and ini, from the new release and with the new env file, in a
run directory of its own, and asks it for its health.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

from keel.host import Host
from keel.operation import q
from keel.ops import files, server, systemd
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


# Runs on the host: a graceful reload of the unit, then wait until every worker that
# was alive has been replaced and every worker accepts requests. ``systemctl
# reload`` returns as soon as SIGHUP is sent; the reload itself (old workers
# finishing their requests, the master re-executing, new workers importing the
# app) is what the deploy must wait for before it calls the app healthy.
RELOADED = READ_STATS + r"""
import subprocess, sys, time
stats, timeout, unit = sys.argv[1], float(sys.argv[2]), sys.argv[3]
def workers():
    return read_stats(stats)["workers"]
try:
    old = {w["pid"] for w in workers() if w["pid"] > 0}
except (OSError, ValueError):  # not running: start it
    sys.exit(subprocess.run(["systemctl", "reload-or-restart", unit]).returncode)
subprocess.run(["systemctl", "reload", unit], check=True)
deadline = time.monotonic() + timeout
now = []
while time.monotonic() < deadline:
    time.sleep(0.2)
    try:
        now = workers()
    except (OSError, ValueError):  # the master is re-executing
        continue
    if now and all(w["pid"] > 0 and w["accepting"] for w in now) and not old & {w["pid"] for w in now}:
        sys.exit(0)
left = [str(w["id"]) for w in now if w["pid"] in old or w["pid"] <= 0]
sys.exit(f"graceful reload did not finish in {timeout:.0f}s; waiting for worker(s) {', '.join(left)}")
"""


def reload_and_wait(host: Host, app: dict[str, Any]) -> Any:
    """Graceful reload (SIGHUP) of ``app``'s service, done when every worker is new and accepts."""
    timeout = 2 * int(app["harakiri"]) + 30  # worker-reload-mercy is harakiri
    return server.command(
        host, f"python3 -c {q(RELOADED)} {q(app['stats_socket'])} {timeout} {q(app['unit'])}",
        name=f"{app['name']}: graceful reload")


def socket_unit(app: dict[str, Any]) -> str:
    return f"{app['name']}.socket"


def _handler_names(app: dict[str, Any]) -> tuple[str, str, str]:
    """(restart the socket and the service, restart the service, reload the service)."""
    return f"restart {app['name']} socket", f"restart {app['name']}", f"reload {app['name']}"


def apply(host: Host) -> None:
    files.directory(host, INI_DIR, owner="root", group="root", mode="0755")
    nginx_group = host.vars["nginx_group"]
    for app in apps.resolve(host):
        restart_socket, restart, reload = names = _handler_names(app)
        # Readable by the app user: the master, running as that user, reads it (and re-reads it on reload).
        # A changed ini needs only a graceful reload (SIGHUP: the master re-execs).
        files.template(host, "uwsgi.ini.j2", app["ini_path"], owner="root", group=app["group"],
                       mode="0640", app=app, nginx_group=nginx_group, notify=reload)
        files.template(host, "uwsgi.socket.j2", f"/etc/systemd/system/{socket_unit(app)}",
                       app=app, nginx_group=nginx_group, notify=restart_socket)
        files.template(host, "uwsgi.service.j2", f"/etc/systemd/system/{app['unit']}",
                       app=app, nginx_group=nginx_group, notify=restart)
        # Enabled for boot; started by the service, which Requires= it. (systemd refuses
        # to start a socket on its own while its service runs without it.)
        systemd.service(host, socket_unit(app), enabled=True, running=None)
        started = systemd.service(host, app["unit"], enabled=True, running=True)
        if "started" in started.reason:  # just started with everything new: nothing to redo
            host.notified[:] = [n for n in host.notified if n not in names]


def handlers(host: Host) -> dict[str, Callable[[Host], Any]]:
    """Per app, in this order; each is skipped when one before it already did its work."""
    out: dict[str, Callable[[Host], Any]] = {}
    for app in apps.resolve(host):
        # Both in one job: systemd orders the service's stop before the socket's
        # (re)start, and the service's start after it.
        sock, unit = socket_unit(app), app["unit"]
        out[_handler_names(app)[0]] = lambda h, s=sock, u=unit: systemd.restart(h, s, u)
    for app in apps.resolve(host):
        unit, (restart_socket, restart, _) = app["unit"], _handler_names(app)
        out[restart] = (lambda h, u=unit, s=restart_socket:
                        None if s in h.handled else systemd.restart(h, u))
    for app in apps.resolve(host):
        restart_socket, restart, reload = _handler_names(app)
        out[reload] = (lambda h, a=app, done=(restart_socket, restart):
                       None if set(done) & set(h.handled) else reload_and_wait(h, a))
    return out


# ------------------------------------------------------------------ canary
def canary_app(app: dict[str, Any], env_file: str) -> dict[str, Any]:
    """``app`` as its canary runs it: the new release, ``env_file``, one worker, own run dir."""
    name = f"{app['name']}-canary"
    return {**app, "canary": True, "unit": f"{name}.service", "code_dir": app["release_dir"],
            "env_file": env_file, "ini_path": f"/run/uwsgi-apps/{name}.ini",
            "socket": f"/run/{name}/uwsgi.sock", "stats_socket": f"/run/{name}/stats.sock",
            "processes": 1, "cheaper": 0}


def canary(host: Host, app: dict[str, Any], env_file: str) -> tuple[str, str]:
    """(a root shell script that proves the new unit + ini + env + release healthy, a key of
    everything it tests). The script exits non-zero with a one-line reason on stderr.

    The canary is the real unit and ini, rendered for a runtime unit
    (``/run/systemd/system/<app>-canary.service``) with its own run directory
    and an HTTP socket, started from the new release with ``env_file``: a
    broken unit directive, an ini option uWSGI rejects, a venv that cannot
    start or an app that does not answer are all found here, while the live
    service keeps serving. It is stopped and removed whatever the outcome.
    """
    c = canary_app(app, env_file)
    nginx_group = host.vars["nginx_group"]
    ini = host.render("uwsgi.ini.j2", app=c, nginx_group=nginx_group)
    unit = host.render("uwsgi.service.j2", app=c, nginx_group=nginx_group)
    run_dir = c["socket"].rsplit("/", 1)[0]
    unit_path = f"/run/systemd/system/{c['unit']}"
    name = app["server_name"].split()[0]
    name = "localhost" if name in ("_", "") else name

    def b64(text: str) -> str:
        return q(base64.b64encode(text.encode()).decode())

    script = f"""
set +e  # every failure is handled below, with its reason
u={q(c['unit'])}; t=$(mktemp -d)
# journal lines that say nothing about why: uWSGI's hook notes and systemd's own summaries
quiet='^$|^running "|Failed with result|Failed to start|Consumed .* CPU|Deactivated|^Stopp|^Start'
quiet="$quiet|process exited, code="
done_() {{ systemctl stop "$u" >/dev/null 2>&1; rm -f {q(unit_path)} {q(c['ini_path'])}
  systemctl daemon-reload; systemctl reset-failed "$u" >/dev/null 2>&1; rm -rf "$t"; }}
# $1: what went wrong; the journal's last telling line says why, unless $2 says it already
fail() {{ why=$2; [ -n "$why" ] ||
    why=$(journalctl -u "$u" --since "@$since" -o cat --no-pager 2>/dev/null |
          grep -Ev "$quiet" | tail -n 1)
  done_; echo "$1${{why:+: $why}}" >&2; exit 1; }}
mkdir -p /run/uwsgi-apps
echo {b64(ini)} | base64 -d > {q(c['ini_path'])}
chown root:{q(app['group'])} {q(c['ini_path'])}; chmod 0640 {q(c['ini_path'])}
echo {b64(unit)} | base64 -d > {q(unit_path)}
systemctl daemon-reload
since=$(date +%s)
systemctl start "$u" 2>/dev/null || fail "its service did not start"
probe() {{ curl -s -o "$t/body" -w '%{{http_code}}' --max-time 5 -H {q('Host: ' + name)} \
    --unix-socket {q(run_dir + '/http.sock')} "http://localhost$1" 2>/dev/null; }}
{apps.health_check(app)}
# Until it answers healthy; an unhealthy answer ten times in a row is its verdict.
code=000; same=0; path=/healthz
for i in $(seq 1 150); do
  last=$code
  code=$(probe /healthz)
  [ "$code" != 000 ] && path=$(health_path) && code=$(probe "$path")
  healthy "$code" && break
  [ "$code" != 000 ] && [ "$code" = "$last" ] && same=$((same + 1)) || same=0
  [ "$same" -ge 10 ] && break
  systemctl is-active -q "$u" || break
  sleep 0.2
done
if ! healthy "$code"; then
  [ "$code" = 000 ] && fail "$path did not answer"
  fail "$path answered $code" "$(head -c 200 "$t/body" | tr '\n' ' ')"
fi
done_
"""
    key = hashlib.sha256("\0".join((ini, unit, env_file, apps.health_check(app)))
                         .encode()).hexdigest()[:12]
    return script, key
