"""release: make the prepared release current without dropping a request, prove it, or roll back.

The switch is one atomic rename of ``/srv/<app>/current``. If uWSGI is running,
a *chain reload* follows (master FIFO ``c``): one worker at a time is replaced,
each new one importing the app from the release ``current`` now points to,
and the next old one goes only when the new one is ready. nginx keeps sending
requests all along.

:data:`gate` runs at the end of the play, after handlers: the app's health path
through nginx (a healthy status), every uWSGI worker running the new release
(its working directory), plus the socket and the unit. If that fails and
this run switched releases, ``current`` goes back to the previous release,
uWSGI chain-reloads again, and the run fails with the reason.

Each app keeps ``/srv/<app>/releases.log`` (``<time> <event> <release>``) and
its last ``keep_releases`` releases; ``fab releases`` lists them and
``fab rollback`` goes back to the previous good one, and puts back the data
(state dir and shared paths) as that release left it, from the snapshot taken
when the deploy moved on from it (``--keep-data`` keeps the current data).
"""

from __future__ import annotations

import time
from typing import Any

from keel.errors import HostError
from keel.host import Host
from keel.operation import q
from keel.ops import files, server
from roles import app as app_role
from roles import apps, uwsgi

DEFAULTS: dict[str, Any] = {
    # Release directories kept per app (the current and previous are always kept).
    "keep_releases": 5,
    # Seconds a chain reload may take before the deploy gives up on it.
    "reload_timeout": 90,
    # Seconds the new release has to answer healthy through nginx, from its own workers.
    "health_timeout": 30,
}

# Runs on the host: chain-reload through the master FIFO, then wait until every
# worker that was alive has been replaced and every worker accepts requests
# (read from the stats socket). uWSGI ignores a "c" while a chain is still
# running ("chain reload already running"), and a chain skips a worker that is
# not accepting yet, so "c" is sent again whenever no old worker went for 3 s.
CHAIN_RELOAD = uwsgi.READ_STATS + r"""
import sys, time
fifo, stats, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
def workers():
    return [w for w in read_stats(stats)["workers"] if w["pid"] > 0]
def chain():
    with open(fifo, "w") as f:
        f.write("c")
now = workers()
old = {w["pid"] for w in now}
left, sent = len(old), time.monotonic()
chain()
deadline = sent + timeout
while time.monotonic() < deadline:
    time.sleep(0.2)
    try:
        now = workers()
    except OSError:
        continue
    pids = {w["pid"] for w in now}
    if now and not old & pids and all(w["accepting"] for w in now):
        print(f"{len(old)} workers replaced")
        sys.exit(0)
    if len(old & pids) < left:
        left, sent = len(old & pids), time.monotonic()
    elif time.monotonic() - sent > 3:
        chain()
        sent = time.monotonic()
waiting = [f"worker {w['id']} (pid {w['pid']}, {w['status']}"
           + (")" if w["accepting"] else ", not accepting)")
           for w in now if w["pid"] in old or not w["accepting"]]
sys.exit(f"chain reload did not finish in {timeout:.0f}s; waiting for: {', '.join(waiting)}")
"""


def _log(app: dict[str, Any], event: str, release: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"echo {q(f'{stamp} {event} {release}')} >> {q(app['root'] + '/releases.log')}"


def _fifo(app: dict[str, Any]) -> str:
    return app["socket"].rsplit("/", 1)[0] + "/master.fifo"


def chain_reload(host: Host, app: dict[str, Any]) -> None:
    """Bring uWSGI onto the release ``current`` points to, without dropping a request.

    Usually a chain reload: workers are replaced one at a time, each new one
    importing the new code. When the master itself must change (its uWSGI
    binary is not the one in the release's venv: a new venv, uWSGI version or
    interpreter), the service is restarted instead; systemd holds the socket,
    so requests wait in its queue while the new master starts, and the old
    one finishes those in flight first. Nothing is done when the service is
    not running, or when a restart is already due (a changed env file).
    """
    if host.check or f"restart {app['name']}" in host.notified:
        return
    unit, venv = q(app["unit"]), q(app["code_dir"] + "/.venv")
    server.command(host, f"""
[ -p {q(_fifo(app))} ] && systemctl is-active -q {unit} || exit 0
pid=$(systemctl show -p MainPID --value {unit})
if [ "$(readlink /proc/$pid/exe)" != "$(readlink -f {venv})/bin/uwsgi" ]; then
  systemctl restart {unit}; exit 0
fi
python3 -c {q(CHAIN_RELOAD)} {q(_fifo(app))} {q(app['stats_socket'])} {int(host.vars['reload_timeout'])}
""", name=f"{app['name']}: chain reload (or restart for a new uWSGI)")


def switch(host: Host, app: dict[str, Any], release: str) -> str | None:
    """Point ``current`` at ``release``; return the release it pointed to ("" if none),
    or None if it already pointed there."""
    res = files.symlink(host, app["code_dir"], f"releases/{release}")
    if not res.changed:
        return None
    if not host.check:
        host.run(_log(app, "switched", release))
    return res.before.rsplit("/", 1)[-1]


def apply(host: Host) -> None:
    """Switch each app to its new release and chain-reload it; prune old releases."""
    switched: dict[str, str] = host.memo.setdefault("switched", {})
    for app in apps.resolve(host):
        before = switch(host, app, app["release"])
        if before is not None:
            switched[app["name"]] = before
            chain_reload(host, app)
            prune(host, app)


def health_problem(host: Host, app: dict[str, Any], release: str) -> str | None:
    """Why ``release`` is not healthy through nginx right now, or None."""
    res = host.read_now(health_script(host, app, release))
    return None if res.ok else (res.out.strip().splitlines() or [f"exit {res.rc}"])[-1]


def health_script(host: Host, app: dict[str, Any], release: str) -> str:
    """The script that waits (up to ``health_timeout``) for ``release`` to answer healthy."""
    name = app["server_name"].split()[0]
    name = "localhost" if name == "_" else name
    url = f"http://127.0.0.1:{app['listen']}"
    if app.get("https"):  # HTTP only redirects: ask over HTTPS, on this host, for the app's name
        port = app["tls_listen"]
        url = f"-k --resolve {q(f'{name}:{port}:127.0.0.1')} https://{name}:{port}"
    # The live release is proven by its workers, not by the app: each uWSGI worker
    # chdirs into `current` when it forks (the ini's hook-post-fork), so its cwd is
    # the release it imported. No /version endpoint needed.
    script = f"""
probe() {{ curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -H {q('Host: ' + name)} {url}"$1"; }}
{apps.health_check(app)}
want={q(app['root'] + '/releases/' + release)}
runs() {{ pid=$(systemctl show -p MainPID --value {q(app['unit'])}); n=0; other=
  for w in $(pgrep -P "$pid" 2>/dev/null); do
    c=$(readlink /proc/$w/cwd) || continue; n=$((n + 1))
    [ "$c" = "$want" ] || other="${{c##*/}}"
  done
  [ "$n" -gt 0 ] && [ -z "$other" ]; }}
end=$(( $(date +%s) + {int(host.vars['health_timeout'])} ))
while :; do
  path=$(health_path); h=$(probe "$path")
  healthy "$h" && runs && break
  [ "$(date +%s)" -lt "$end" ] || {{
    healthy "$h" || {{ echo "$path answered $h"; exit 1; }}
    echo "its workers do not run release {release} (one runs ${{other:-none}})"; exit 1; }}
  sleep 0.3
done
[ -S {q(app['socket'])} ] || {{ echo "socket {app['socket']} is missing"; exit 1; }}
systemctl is-active -q {q(app['unit'])} || {{ echo "{app['unit']} is not active"; exit 1; }}
"""
    return script


class Gate:
    """The last role of a deploy: flush handlers, then prove every app healthy or roll back."""

    DEFAULTS = DEFAULTS

    def apply(self, host: Host) -> None:
        if host.check:
            return
        if host.changed or host.notified:
            # The health checks ride behind the handlers' changes (restarts, reloads).
            for app in apps.resolve(host):
                host.expect(health_script(host, app, app["release"]))
        host.flush_handlers()
        if not host.changed and not host.handled:
            return  # nothing changed: nothing new to prove
        switched: dict[str, str] = host.memo.get("switched", {})
        for app in apps.resolve(host):
            release = app["release"]
            problem = health_problem(host, app, release)
            if problem is None:
                if app["name"] in switched:
                    host.run(_log(app, "live", release))
                continue
            host.run(_log(app, "failed", release))
            before = switched.get(app["name"])
            if not before:
                raise HostError(host.name, f"app {app['name']}: release {release} is not healthy: "
                                           f"{problem}")
            switch(host, app, before)
            chain_reload(host, app)
            raise HostError(host.name, f"app {app['name']}: release {release} failed its health "
                                       f"check ({problem}); rolled back to {before}")


gate = Gate()


# ----------------------------------------------------------------- history
def history(host: Host, app: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """(current release, releases on disk newest first, ``live`` releases oldest first)."""
    res = host.run(
        f"readlink {q(app['code_dir'])}; echo --; ls -1t {q(app['root'] + '/releases')} "
        f"2>/dev/null; echo --; cat {q(app['root'] + '/releases.log')} 2>/dev/null; true")
    current, on_disk, log = ([*res.out.split("--\n"), "", ""])[:3]
    live = [ln.split()[2] for ln in log.splitlines() if len(ln.split()) >= 3
            and ln.split()[1] == "live"]
    return current.strip().rsplit("/", 1)[-1], on_disk.split(), live


def previous_good(current: str, on_disk: list[str], live: list[str]) -> str | None:
    """The newest release that was live before ``current`` and is still on disk.

    >>> previous_good("c", ["c", "b", "a"], ["a", "b", "c"])
    'b'
    """
    for release in reversed(live):
        if release != current and release in on_disk:
            return release
    return None


def prune(host: Host, app: dict[str, Any]) -> None:
    """Keep the newest ``keep_releases`` releases (and always current and previous)."""
    keep = int(host.vars["keep_releases"])
    current, on_disk, live = history(host, app)
    protected = {current, app["release"], previous_good(current, on_disk, live)}
    doomed = [r for r in on_disk[keep:] if r not in protected]
    if not doomed or host.check:
        return
    releases = app["root"] + "/releases"
    # A snapshot is named for the release it was taken for (<new>.from-<old>.tar): it
    # goes with that release.
    server.command(
        host, " && ".join(f"rm -rf {q(releases + '/' + r)}" for r in doomed)
        + f" && for v in {q(app['root'])}/venvs/*; do "
          f"ls -l {q(releases)}/*/.venv 2>/dev/null | grep -q \"/venvs/$(basename \"$v\")$\" "
          "|| rm -rf \"$v\"; done"
        + f" && for s in {q(app['snapshot_dir'])}/*.tar; do [ -e \"$s\" ] || continue; "
          f"r=$(basename \"$s\"); [ -d {q(releases)}/\"${{r%%.*}}\" ] || rm -f \"$s\"; done",
        name=f"{app['name']}: prune {len(doomed)} old release(s)")


def restore_data(host: Host, app: dict[str, Any], current: str, target: str) -> None:
    """The data as ``target`` left it: the newest snapshot taken when leaving ``target``
    (``*.from-<target>.tar``). The current data is kept first, as ``<target>.from-<current>``,
    so rolling forward again finds it."""
    snaps, found = q(app["snapshot_dir"]), "$(ls -1t {}/*.from-{}.tar 2>/dev/null | head -n 1)"
    server.command(host, f"""
s={found.format(snaps, q(target))}
[ -n "$s" ] || {{ echo "no snapshot of the data as release {target} left it \
(fab rollback --keep-data keeps the current data)" >&2; exit 1; }}
keep={snaps}/{q(target)}.from-{q(current)}.tar
{app_role.snapshot_cmd(app, '$keep')} && {app_role.restore_cmd(app, '$s')} &&
echo "data restored from $s; the data before is in $keep"
""", name=f"{app['name']}: data of release {target} (from its snapshot)")


class Rollback:
    """Role for ``fab rollback``: back to the previous good release (or ``rollback_to``)."""

    DEFAULTS: dict[str, Any] = {**DEFAULTS, "rollback_to": "", "rollback_app": "",
                                "keep_data": False}

    def preflight(self, host: Host) -> None:
        names = [app["name"] for app in apps.resolve(host)]
        wanted = host.vars["rollback_app"]
        if wanted and wanted not in names:
            raise HostError(host.name, f"rollback: no app named {wanted!r} (apps: {', '.join(names)})")

    def apply(self, host: Host) -> None:
        host.memo["switched"] = switched = {}
        for app in apps.resolve(host):
            current, on_disk, live = history(host, app)
            if host.vars["rollback_app"] and app["name"] != host.vars["rollback_app"]:
                app["release"] = current  # untouched: the gate expects what runs now
                continue
            target = host.vars["rollback_to"] or previous_good(current, on_disk, live)
            if not target:
                raise HostError(host.name, f"app {app['name']}: no previous good release to "
                                           "roll back to")
            if target not in on_disk:
                raise HostError(host.name, f"app {app['name']}: release {target} does not exist "
                                           f"(have: {', '.join(on_disk) or 'none'})")
            app["release"] = target  # what the gate must now find live
            if target != current and not host.vars["keep_data"]:
                restore_data(host, app, current, target)
            before = switch(host, app, target)
            if before is not None:
                switched[app["name"]] = before
                chain_reload(host, app)


class Releases:
    """Role for ``fab releases``: list each app's releases on each host."""

    DEFAULTS: dict[str, Any] = {}

    def apply(self, host: Host) -> None:
        for app in apps.resolve(host):
            current, on_disk, live = history(host, app)
            prev = previous_good(current, on_disk, live)
            for release in on_disk:
                mark = "current" if release == current else "previous" if release == prev else ""
                host.say(f"{app['name']}  {release}  {mark}")

