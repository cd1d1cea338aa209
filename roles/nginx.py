"""nginx: one site per app in sites-available, enabled by a symlink in sites-enabled.

A site is validated before it can go live: the candidate file is checked with
``nginx -t`` inside a copy of the whole configuration in which it replaces the
live one, so a failing config is never written, never linked, never reloaded.
nginx is reloaded (never restarted), and only when something changed.

The distribution's ``nginx.service`` gets a sandbox through a drop-in
(``templates/nginx-hardening.conf.j2``). Only a changed drop-in restarts nginx
(systemd applies a sandbox at start). A candidate drop-in is first tried on a
throwaway ``nginx -t`` run by ``systemd-run`` with the same settings, so one
that nginx cannot start under is never written; if nginx still fails to start,
the drop-in is set aside, nginx is started as it was, and the run fails saying so.
"""

from __future__ import annotations

from typing import Any

from keel.errors import HostError
from keel.host import Host
from keel.operation import q
from keel.ops import apt, files, server, systemd
from roles import apps

DEFAULTS: dict[str, Any] = {
    # logrotate: nginx only recommends it, and apt here installs no recommends;
    # without it nginx's logs grow forever.
    "nginx_packages": ["nginx", "logrotate"],
    # Debian's own site; disabled so only our apps answer.
    "nginx_disable_default_site": True,
    # Sandbox nginx.service with templates/nginx-hardening.conf.j2 (exposure 9.6 -> 2.5).
    "nginx_hardening": True,
    # More [Service] lines for that drop-in, e.g. "ReadWritePaths=/srv/logs" for
    # logs kept elsewhere.
    "nginx_hardening_extra": [],
}

HARDENING_DROPIN = "/etc/systemd/system/nginx.service.d/10-keel-hardening.conf"

# The candidate drop-in's settings applied to a transient `nginx -t`: a sandbox
# nginx cannot start under (a path that does not exist, a capability too few to
# read its keys) fails here, before the drop-in is written.
HARDENING_VALIDATE = (
    'set --; while IFS= read -r l; do case "$l" in [A-Z]*=*) set -- "$@" -p "$l";; esac;'
    ' done < %s; systemd-run --quiet --wait --pipe --collect "$@" /usr/sbin/nginx -t -q'
)

# Restart under the new drop-in; if nginx cannot start with it, put it aside
# (.failed), start nginx as it was and fail with the journal's last word.
_RESTART = (
    "systemctl daemon-reload; if ! systemctl restart nginx 2>/dev/null; then"
    " why=$(journalctl -u nginx -n 1 -o cat --no-pager 2>/dev/null);"
    f" mv -f {HARDENING_DROPIN} {HARDENING_DROPIN}.failed; systemctl daemon-reload;"
    " systemctl restart nginx;"
    ' echo "nginx did not start with the hardening drop-in, which was set aside'
    f' ({HARDENING_DROPIN}.failed): $why" >&2; exit 1; fi'
)

# `systemctl reload nginx` returns once the master has the signal, before it has read the
# configuration and started workers with it: a request sent right after (the deploy's
# health gate, a client's new connection) could still meet an old worker with the old
# configuration. So the reload is done when every worker still accepting is a new one
# (the old ones, retitled "worker process is shutting down", accept nothing more).
RELOAD = r"""nginx -t -q || exit 1
# The master's children titled as accepting workers (nginx keeps its master's pid).
workers() {
  m=$(cat /run/nginx.pid 2>/dev/null) && [ -r "/proc/$m/task/$m/children" ] || return 1
  for p in $(cat "/proc/$m/task/$m/children"); do
    [ "$(tr -d '\0' < "/proc/$p/cmdline" 2>/dev/null)" = "nginx: worker process" ] &&
      printf '%s ' "$p"
  done
  return 0
}
before=" $(workers)" || { systemctl reload nginx; exit; }  # no way to tell: as before
systemctl reload nginx || exit 1
i=0
while [ $i -lt 600 ]; do
  now=$(workers) stale=
  for p in $now; do case "$before" in *" $p "*) stale=1 ;; esac; done
  [ -n "$now" ] && [ -z "$stale" ] && exit 0
  i=$((i + 1)); sleep 0.05
done
echo "nginx was told to reload, but no new workers took over within 30 s" >&2
exit 1"""

HANDLERS = {
    "restart nginx": lambda host: server.command(host, _RESTART, name="restart nginx (sandbox)"),
    # A restart has already loaded the new configuration.
    "reload nginx": lambda host: None if "restart nginx" in host.handled else server.command(
        host, RELOAD, name="nginx -t && reload"),
}


def site_validate(name: str) -> str:
    """A validate command (``%s`` = candidate file) testing the config as it would be.

    ``%s`` may appear only where the candidate's path goes (every one is replaced).
    """
    return (
        'c=$(mktemp /etc/nginx/.keel-check.XXXXXX) && d=$(mktemp -d /etc/nginx/.keel-sites.XXXXXX)'
        ' && for f in /etc/nginx/sites-enabled/*; do [ -e "$f" ] || continue;'
        f' [ "$(basename "$f")" = {q(name)} ] || ln -s "$(readlink -f "$f")" "$d/$(basename "$f")";'
        f' done && cp %s "$d/"{q(name)}'
        ' && sed "s#/etc/nginx/sites-enabled/\\*#$d/*#" /etc/nginx/nginx.conf > "$c"'
        # Errors name the real file, not the scratch copy.
        # "|| rc=$?" rather than "rc=$?": the change script runs under set -e.
        ' && { out=$(nginx -t -q -c "$c" 2>&1) && rc=0 || rc=$?; }; rm -rf "$c" "$d";'
        ' echo "$out" | sed "s#$d/#/etc/nginx/sites-available/#g"; exit $rc'
    )


def check_ports(host: Host, ports: set[int]) -> None:
    """Fail early, before touching nginx, if another program listens on a port nginx needs."""
    filters = " or ".join(f"sport = :{p}" for p in sorted(ports))
    res = host.run(f"ss -ltnpH '( {filters} )' 2>/dev/null || true")
    for line in res.out.splitlines():
        if 'users:(("' not in line or '(("nginx"' in line:
            continue
        port = line.split()[3].rsplit(":", 1)[-1]
        owner = line.split('users:(("', 1)[1].split('"', 1)[0]
        pid = line.split("pid=", 1)[1].split(",", 1)[0] if "pid=" in line else "?"
        raise HostError(host.name, f"port {port} is taken by {owner} (pid {pid}), not nginx")


def preflight(host: Host) -> None:
    check_ports(host, {int(app["listen"]) for app in apps.resolve(host)}
                | {int(app["tls_listen"]) for app in apps.resolve(host) if app["tls"]})


def harden(host: Host) -> None:
    """The sandbox drop-in for nginx.service, or none if ``nginx_hardening`` is off."""
    if host.vars["nginx_hardening"]:
        files.directory(host, HARDENING_DROPIN.rsplit("/", 1)[0], mode="0755")
        files.template(host, "nginx-hardening.conf.j2", HARDENING_DROPIN,
                       validate=HARDENING_VALIDATE, notify="restart nginx")
    else:
        files.absent(host, HARDENING_DROPIN, notify="restart nginx")


def apply(host: Host) -> None:
    apt.packages(host, host.vars["nginx_packages"])
    harden(host)
    if host.vars["nginx_disable_default_site"]:
        files.absent(host, "/etc/nginx/sites-enabled/default", notify="reload nginx")
    for app in apps.resolve(host):
        site(host, app)
    systemd.service(host, "nginx", enabled=True, running=True)


def site(host: Host, app: dict[str, Any]) -> None:
    """The app's site, checked with ``nginx -t`` before it is written, and enabled.

    Also called by roles/acme.py, which renders it again once the app has its certificate.
    """
    name = app["name"]
    available = f"/etc/nginx/sites-available/{name}"
    files.template(host, "nginx-site.conf.j2", available, app=app,
                   nginx_group=host.vars["nginx_group"], validate=site_validate(name),
                   notify="reload nginx")
    files.symlink(host, f"/etc/nginx/sites-enabled/{name}", available, notify="reload nginx")
