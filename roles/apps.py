"""The apps a host serves, resolved from the ``apps`` variable.

``apps`` is a list of dicts; each entry is merged over :data:`APP_DEFAULTS` and
gets its derived paths. Several apps on one host each get their own user,
socket, unit and site, told apart by ``server_name``.

Layout on the host for an app called ``hello``::

    /srv/hello/releases/<release>/   the app's code, one folder per release
    /srv/hello/current -> releases/<release>
    /srv/hello/venvs/<key>/          venvs, keyed by requirements + interpreter
    /srv/hello/shared/env            settings (0640 root:hello), read by systemd
    /srv/hello/shared/state/         writable state that survives releases
    /srv/hello/shared/<path>/        each of shared_paths, linked from every release
    /srv/hello/snapshots/<new>.from-<old>.tar
                                     the data (state + shared_paths) as release <old>
                                     left it, taken before <new>'s setup/pre_start
    /run/hello/uwsgi.sock            the socket nginx talks to
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from keel.errors import HostError
from keel.host import Host
from keel.operation import q
from keel.ops import server
from keel.ops.files import tree_digest

#: Defaults for each entry of ``apps``. Every key can be set per app.
APP_DEFAULTS: dict[str, Any] = {
    # Local path of the app's source (relative paths: from the project dir).
    "source": "app",
    # module:callable; app factories are called: "hello:create_app()".
    "module": "wsgi:app",
    # Requirements file, relative to source. uwsgi is added (pinned) to it. Without
    # one, the project's lock (pylock.toml, PEP 751) or else the dependencies of its
    # pyproject.toml ([project] dependencies) are installed. The venv holds the
    # dependencies only: the code runs from the release, so a code change reuses it.
    "requirements": "requirements.txt",
    "uwsgi_version": "2.0.31",
    # nginx: name-based virtual hosts; "_" matches anything.
    "server_name": "_",
    "listen": 80,
    "client_max_body_size": "10m",
    # The path the canary, the deploy's health gate and `fab verify` ask through the
    # app's first server_name. "" (default): /healthz, or "/" when /healthz is 404.
    "health_path": "",
    # The answers that count as healthy: "2xx", "3xx" (a redirect to a login page),
    # or exact codes ("200 302").
    "healthy_statuses": "2xx 3xx",
    # Served by nginx directly; relative to the code dir; "" for none.
    "static_url": "/static/",
    "static_dir": "static",
    # uWSGI workers: processes defaults to 2 per CPU (from facts), at least 2.
    "processes": None,
    "threads": 4,
    # Adaptive workers (uWSGI's cheaper): 0 keeps a fixed pool of `processes`, which
    # is what a host with a few workers wants: cheaper stops idle workers and
    # re-spawns them (re-importing the app) when load returns, so a burst waits for
    # imports. Set 0 < cheaper < processes for many workers on a memory-tight host:
    # at least `cheaper` run, `cheaper_initial` at start.
    "cheaper": 0,
    "cheaper_initial": 2,
    "cheaper_step": 1,
    # Seconds before uWSGI kills a stuck request; nginx waits a bit longer.
    "harakiri": 30,
    "max_requests": 5000,
    # uWSGI logs a request only if it answers 5xx or takes longer than this (ms);
    # nginx's access log has them all.
    "log_slow_ms": 1000,
    "buffer_size": 32768,
    # Environment for the app, written to shared/env (mode 0640, root:<app>).
    "env": {},
    # Commands that build the release (e.g. "python manage.py collectstatic --noinput",
    # asset compilation), run once in it as the app user, with its venv and env file,
    # before the import check; the release is writable to the app user only while
    # they run, then frozen (root-owned, read-only to the app). A change to them is a
    # new release. Their output is served like any file of the release (static_dir).
    "build": [],
    # Commands run in the new release, as the app user, with its venv and env, before
    # it takes traffic: on every new release (idempotent migrations, e.g.
    # "python manage.py migrate --noinput"). The data (state dir and shared_paths)
    # is snapshotted first and restored exactly if one of them fails.
    "pre_start": [],
    # Commands run once per app per host, on its first deploy, after the snapshot and
    # before pre_start (e.g. "flask --app flaskr init-db"). Recorded in
    # /srv/<app>/shared/.keel-setup-done; run again only by `fab deploy --rerun-setup`.
    "setup": [],
    # Writable paths of the release that persist across releases (Capistrano's
    # linked_dirs): each is a directory /srv/<app>/shared/<path>, owned by the app
    # user, and <release>/<path> links to it. Never uploaded: a local copy (a dev
    # database in instance/) stays on the controller. E.g. [instance, media].
    "shared_paths": [],
    # More uWSGI options for the ini ({"option": value}; a list value repeats the
    # option), and more [Service] directives for the unit ({"MemoryHigh": "400M"}).
    # Both are tested by the canary before the live service gets them: an option
    # uWSGI rejects or a directive the service cannot start with fails the deploy.
    "uwsgi_options": {},
    "systemd_options": {},
    # TLS: local paths (on the controller; relative: from the project dir) of the
    # PEM certificate chain and its key. With both, nginx serves the app on
    # tls_listen (TLSv1.2+1.3, Mozilla "intermediate") and redirects HTTP to HTTPS.
    "tls_cert": "",
    "tls_key": "",
    "tls_listen": 443,
    # Strict-Transport-Security max-age in seconds (0: no HSTS header).
    "tls_hsts": 0,
    # tls: acme gets the certificate from an ACME CA instead (Let's Encrypt by
    # default), for every name of server_name (DNS names: not "_", not an IP
    # address), with certbot's HTTP-01 webroot challenge served by the app's own
    # site on `listen` (roles/acme.py). Not together with tls_cert/tls_key.
    "tls": "",
    # The ACME account's contact address (the CA's expiry and policy mails); required.
    "acme_email": "",
    # The CA's ACME directory URL (Let's Encrypt's staging CA for trials:
    # https://acme-staging-v02.api.letsencrypt.org/directory).
    "acme_directory": "https://acme-v02.api.letsencrypt.org/directory",
}

#: Where nginx finds each app's certificate and key on the host (see roles/tls.py).
TLS_DIR = "/etc/nginx/tls"
#: certbot's lineages: an ACME app's certificate is ``<dir>/<app>/fullchain.pem`` (roles/acme.py).
ACME_LIVE_DIR = "/etc/letsencrypt/live"
#: certbot writes the CA's HTTP-01 tokens under here; every ACME app's site serves them.
ACME_WEBROOT = "/var/www/keel-acme"
#: Each app's uWSGI ini (roles/uwsgi.py): also how a deployed app is recognised.
INI_DIR = "/etc/uwsgi-apps"

DEFAULTS: dict[str, Any] = {
    "apps": [{"name": "hello", "source": "app", "module": "hello:create_app()"}],
    # The group nginx runs as; it shares the socket (660).
    "nginx_group": "www-data",
    # Apps deployed here before but no longer in `apps` are reported; with prune_apps
    # (fab deploy --prune) their unit, socket, ini and site go (data in /srv/<app> is
    # kept), and with purge_apps (--purge) their /srv/<app>, user and group too.
    "prune_apps": False,
    "purge_apps": False,
}


def preflight(host: Host) -> None:
    """Resolve and check every app before any role changes anything; list the apps
    deployed here (a read, batched with the other probes) to find those that left."""
    resolve(host)
    found = host.run(f"ls -1 {INI_DIR} 2>/dev/null | sed -n 's/[.]ini$//p'").out.split()
    host.memo["left_apps"] = sorted(set(found) - {app["name"] for app in resolve(host)})


def apply(host: Host) -> None:
    """Report, or remove, the apps this host serves that the inventory no longer lists."""
    for name in host.memo.get("left_apps", []):
        if not (host.vars["prune_apps"] or host.vars["purge_apps"]):
            host.say(f"app {name} on {host.name} is no longer in the inventory "
                     "(fab deploy --prune removes it, keeping its data)")
            continue
        _remove(host, name, purge=bool(host.vars["purge_apps"]))


def _remove(host: Host, name: str, purge: bool) -> None:
    """Stop and remove an app's unit, socket, ini and site (and with ``purge``, its data,
    user and group); nginx is reloaded once at the end."""
    n, ini = q(name), q(f"{INI_DIR}/{name}.ini")
    units = f"/etc/systemd/system/{n}.service /etc/systemd/system/{n}.socket"
    cmd = (f"u=$(sed -n 's/^uid = //p' {ini}); g=$(sed -n 's/^gid = //p' {ini}); "
           f"systemctl disable --now {n}.service {n}.socket >/dev/null 2>&1; "
           f"rm -f {units} {ini} /etc/nginx/sites-enabled/{n} /etc/nginx/sites-available/{n} "
           f"{q(TLS_DIR)}/{n}.crt {q(TLS_DIR)}/{n}.key && systemctl daemon-reload"
           # Its ACME certificate goes too, or certbot's timer would keep renewing it.
           f" && {{ [ ! -e /etc/letsencrypt/renewal/{n}.conf ] || "
           f"certbot delete --non-interactive --cert-name {n} >/dev/null; }}")
    if purge:
        cmd += (f' && rm -rf /srv/{n} && {{ [ -z "$u" ] || userdel "$u" 2>/dev/null; '
                '[ -z "$g" ] || groupdel "$g" 2>/dev/null; true; }')
    server.command(host, cmd, name=f"{name}: no longer in the inventory: "
                                   + ("purged" if purge else "removed (data kept)"),
                   notify="reload nginx")


def resolve(host: Host) -> list[dict[str, Any]]:
    """Every app of ``host`` with defaults merged and paths derived (cached per run)."""
    cached = host.memo.get("apps")
    if cached is not None:
        return cached
    apps = [_resolve_one(host, entry, i == 0) for i, entry in enumerate(host.vars["apps"])]
    names = [a["name"] for a in apps]
    if len(set(names)) != len(names):
        raise HostError(host.name, f"apps: duplicate app names in {names}")
    _check_conflicts(host, apps)
    host.memo["apps"] = apps
    return apps


def _check_conflicts(host: Host, apps: list[dict[str, Any]]) -> None:
    """Two apps may not claim the same name on the same port, nor the same user: nginx
    would ignore one site ("conflicting server name"), and one app could read the other's
    data. Found before anything changes, naming both apps."""
    seen: dict[tuple[str, str], str] = {}
    for app in apps:
        ports = [app["listen"], *([app["tls_listen"]] if app["tls"] else [])]
        claims = [("user", app["user"])] + [
            ("server_name", f"{name} on port {port}")
            for name in str(app["server_name"]).split() for port in ports]
        for claim in claims:
            other = seen.setdefault(claim, app["name"])
            if other != app["name"]:
                raise HostError(host.name, f"apps {other} and {app['name']} both use "
                                           f"{claim[0]} {claim[1]}")


def _resolve_one(host: Host, entry: dict[str, Any], first: bool) -> dict[str, Any]:
    if not isinstance(entry, dict) or not entry.get("name"):
        raise HostError(host.name, f"apps: each app needs a name, got {entry!r}")
    unknown = set(entry) - set(APP_DEFAULTS) - {"name", "user", "group", "default_server"}
    if unknown:
        raise HostError(host.name, f"apps: {entry['name']}: unknown setting(s) {sorted(unknown)}")
    app = {**APP_DEFAULTS, **entry}
    name = app["name"]
    root = f"/srv/{name}"
    project = Path(host.vars.get("project_dir", "."))
    source = Path(app["source"])
    source = source if source.is_absolute() else project / source
    if not source.is_dir():
        raise HostError(host.name, f"app {name}: source directory {source} does not exist")
    requirements = (_requirements(host, app, source).rstrip("\n")
                    + f"\nuwsgi=={app['uwsgi_version']}\n")
    venv_key = venv_id(requirements, host.facts.python_version)
    shared = _shared_paths(host, app)
    tree = tree_digest(source, tuple(shared))
    if app["build"]:  # the same code built otherwise is another release
        tree = hashlib.sha256("\0".join([tree, *app["build"]]).encode()).hexdigest()
    release = release_id(tree, venv_key)
    _resolve_tls(host, app, project)
    _check_options(host, app)
    _check_health(host, app)
    python_path = _python_path(source, app["module"])
    static_dir = app["static_dir"]
    if static_dir and not static_dir.startswith("/"):
        # Built static files (collectstatic) exist only in the release on the host.
        static_dir = (f"{root}/current/{static_dir}"
                      if app["build"] or (source / static_dir).is_dir() else "")
    app.update(
        user=app.get("user") or name,
        group=app.get("group") or name,
        root=root,
        source=str(source),
        requirements_text=requirements,
        release=release,
        release_dir=f"{root}/releases/{release}",
        code_dir=f"{root}/current",
        venv=f"{root}/venvs/{venv_key}",
        ini_path=f"/etc/uwsgi-apps/{name}.ini",
        unit=f"{name}.service",
        env_file=f"{root}/shared/env",
        state_dir=f"{root}/shared/state",
        shared_paths=shared,
        snapshot_dir=f"{root}/snapshots",
        socket=f"/run/{name}/uwsgi.sock",
        stats_socket=f"/run/{name}/stats.sock",
        processes=app["processes"] or max(2, 2 * host.facts.cpu_count),
        static_dir=static_dir,
        python_path=python_path,
        default_server=app.get("default_server", first),
    )
    return app


def _python_path(source: Path, module: str) -> list[str]:
    """Where the app's modules are imported from, relative to the release: the release
    itself, and ``src`` for a project in the src layout (``src/<package>/``, which
    packaging tools install from; keel imports it from the release instead, so the
    venv stays keyed by the dependencies alone).

    >>> _python_path(Path("tests/apps/flaskr"), "flaskr:create_app()")
    ['']
    """
    top = module.split(":", 1)[0].split(".", 1)[0]
    at_root = (source / top).is_dir() or (source / f"{top}.py").is_file()
    in_src = (source / "src" / top).is_dir() or (source / "src" / f"{top}.py").is_file()
    return ["", "src"] if in_src and not at_root else [""]


def _check_health(host: Host, app: dict[str, Any]) -> None:
    path, statuses = app["health_path"], str(app["healthy_statuses"]).split()
    if path and not re.fullmatch(r"/[A-Za-z0-9._~/?=&%+-]*", str(path)):
        raise HostError(host.name, f"app {app['name']}: health_path {path!r} is not a URL path")
    if not statuses or not all(re.fullmatch(r"[1-5](xx|[0-9][0-9])", s) for s in statuses):
        raise HostError(host.name, f"app {app['name']}: healthy_statuses {app['healthy_statuses']!r}"
                                   " is not a list of codes like '2xx 3xx' or '200 302'")


def health_check(app: dict[str, Any]) -> str:
    """Shell functions for host scripts, given a ``probe PATH`` function there that prints
    the HTTP status of PATH: ``healthy CODE`` is true for a healthy status; ``health_path``
    prints the path to ask (by default /healthz, or / when the app answers 404 there).

    >>> print(health_check({"healthy_statuses": "2xx 302", "health_path": "/up"}), end="")
    healthy() { case "$1" in 2??|302) return 0 ;; esac; return 1; }
    health_path() { echo /up; }
    """
    pattern = "|".join(s.replace("xx", "??") for s in str(app["healthy_statuses"]).split())
    path = app["health_path"]
    pick = (f"echo {path}" if path else
            '[ "$(probe /healthz)" = 404 ] && echo / || echo /healthz')
    return (f"healthy() {{ case \"$1\" in {pattern}) return 0 ;; esac; return 1; }}\n"
            f"health_path() {{ {pick}; }}\n")


def _shared_paths(host: Host, app: dict[str, Any]) -> list[str]:
    """``shared_paths`` as clean relative paths; one that leaves the release is refused."""
    entries = app["shared_paths"]
    if not isinstance(entries, list):
        raise HostError(host.name, f"app {app['name']}: shared_paths must be a list, "
                                   f"not {entries!r}")
    out = []
    for entry in entries:
        path = PurePosixPath(str(entry))
        if (not path.parts or path.is_absolute() or ".." in path.parts
                or path.parts[0] in ("env", "env.candidate", "state")
                or any(part.startswith(".keel") or "\n" in part for part in path.parts)):
            raise HostError(host.name, f"app {app['name']}: shared_paths: {entry!r} is not a "
                                       "path inside the release")
        out.append(path.as_posix())
    return out


def _requirements(host: Host, app: dict[str, Any], source: Path) -> str:
    """What the venv gets, as requirements text: the requirements file; else the project's
    pylock.toml, pinned; else its pyproject.toml's [project] dependencies."""
    req_file = source / app["requirements"]
    default = app["requirements"] == APP_DEFAULTS["requirements"]
    if req_file.is_file() or not default:
        if not req_file.is_file():
            raise HostError(host.name, f"app {app['name']}: requirements file {req_file} "
                                       "does not exist")
        return req_file.read_text()
    where = f"app {app['name']}: {source}"
    try:
        if (source / "pylock.toml").is_file():
            lock = tomllib.loads((source / "pylock.toml").read_text())
            return "".join(f"{pkg['name']}=={pkg['version']}"
                           + (f"; {pkg['marker']}" if pkg.get("marker") else "") + "\n"
                           for pkg in lock.get("packages", []))
        if (source / "pyproject.toml").is_file():
            project = tomllib.loads((source / "pyproject.toml").read_text()).get("project", {})
            if not isinstance(project.get("dependencies"), list):
                raise HostError(host.name, f"{where}/pyproject.toml has no [project] dependencies"
                                           " list (and there is no requirements.txt)")
            return "".join(f"{dep}\n" for dep in project["dependencies"])
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise HostError(host.name, f"{where}: cannot read its dependencies: {exc}") from None
    raise HostError(host.name, f"app {app['name']}: requirements file {req_file} does not exist "
                               "(nor pylock.toml or pyproject.toml)")


def venv_id(requirements: str, python_version: str) -> str:
    """A venv is what was installed into it, by which interpreter."""
    return hashlib.sha256((requirements + python_version).encode()).hexdigest()[:12]


def release_id(tree: str, venv: str) -> str:
    """A release is its code and the venv it runs in: a change to either is a new release,
    so a live release never has its venv swapped under it, and a rollback gets both back.

    >>> release_id("0" * 64, "1a2b3c4d5e6f")
    '0c2833b4393a'
    """
    return hashlib.sha256(f"{tree} {venv}".encode()).hexdigest()[:12]


_OPTION_NAMES = {"uwsgi_options": re.compile(r"[a-z][a-z0-9-]*\Z"),
                 "systemd_options": re.compile(r"[A-Z][A-Za-z0-9]*\Z")}


def _check_options(host: Host, app: dict[str, Any]) -> None:
    """Extra ini options and unit directives: plain names, one-line values."""
    for setting in ("build", "setup", "pre_start"):
        if not isinstance(app[setting], list) or not all(
                isinstance(c, str) and c.strip() for c in app[setting]):
            raise HostError(host.name, f"app {app['name']}: {setting} must be a list of "
                                       f"commands, not {app[setting]!r}")
    for setting, pattern in _OPTION_NAMES.items():
        options = app[setting]
        if not isinstance(options, dict):
            raise HostError(host.name, f"app {app['name']}: {setting} must be a mapping, "
                                       f"not {options!r}")
        for key, value in options.items():
            values = value if isinstance(value, list) else [value]
            if not (isinstance(key, str) and pattern.match(key)) or any(
                    "\n" in str(v) or isinstance(v, (dict, list)) for v in values):
                raise HostError(host.name, f"app {app['name']}: {setting}: {key!r}: "
                                           "not an option name with one-line values")


def _resolve_tls(host: Host, app: dict[str, Any], project: Path) -> None:
    """TLS from files needs both, readable here; ``tls: acme`` needs an email address and DNS
    names, and no files. The host paths are derived. ``https`` says whether the site serves
    HTTPS in this run: an ACME app only once it has its certificate (roles/acme.py)."""
    mode, name = app["tls"], app["name"]
    if mode not in ("", None, False, "acme"):
        raise HostError(host.name, f"app {name}: tls must be 'acme' (or unset, with tls_cert "
                                   f"and tls_key for certificate files), not {mode!r}")
    app["acme"] = mode == "acme"
    app["tls"] = app["acme"] or bool(app["tls_cert"] or app["tls_key"])
    app["https"] = app["tls"] and not app["acme"]
    if not app["tls"]:
        return
    app["tls_dhparam"] = f"{TLS_DIR}/ffdhe2048.pem"
    if app["acme"]:
        _check_acme(host, app)
        app["acme_webroot"] = ACME_WEBROOT
        app["tls_cert_path"] = f"{ACME_LIVE_DIR}/{name}/fullchain.pem"
        app["tls_key_path"] = f"{ACME_LIVE_DIR}/{name}/privkey.pem"
        return
    for key in ("tls_cert", "tls_key"):
        if not app[key]:
            raise HostError(host.name, f"app {name}: {key} is not set "
                                       "(TLS needs both tls_cert and tls_key)")
        path = Path(app[key])
        path = path if path.is_absolute() else project / path
        if not path.is_file():
            raise HostError(host.name, f"app {name}: {key} {path} does not exist")
        app[key] = str(path)
    app["tls_cert_path"] = f"{TLS_DIR}/{name}.crt"
    app["tls_key_path"] = f"{TLS_DIR}/{name}.key"


def _check_acme(host: Host, app: dict[str, Any]) -> None:
    from roles import acme  # acme reads the apps: imported here, not at load

    acme.check_settings(host, f"app {app['name']}", "", email=app["acme_email"],
                        directory=app["acme_directory"], server_name=app["server_name"],
                        files={k: app[k] for k in ("tls_cert", "tls_key")})


def expectations(variables: dict[str, Any]) -> dict[str, Any]:
    """What ``fab verify`` should find on a host with these inventory vars (no facts needed)."""
    from roles import bootstrap

    merged = {**bootstrap.DEFAULTS, **DEFAULTS, **variables}
    out = []
    for entry in merged["apps"]:
        app = {**APP_DEFAULTS, **entry}
        name = app["name"]
        out.append({
            "name": name, "user": app.get("user") or name, "group": app.get("group") or name,
            "socket": f"/run/{name}/uwsgi.sock", "stats_socket": f"/run/{name}/stats.sock",
            "ini_path": f"/etc/uwsgi-apps/{name}.ini", "unit": f"{name}.service",
            "env_file": f"/srv/{name}/shared/env", "server_name": app["server_name"],
            "listen": app["listen"],
            "tls": bool(app["tls_cert"] and app["tls_key"]) or app["tls"] == "acme",
            "tls_listen": app["tls_listen"],
            "tls_key_path": (f"{ACME_LIVE_DIR}/{name}/privkey.pem" if app["tls"] == "acme"
                             else f"{TLS_DIR}/{name}.key"),
            "health_path": app["health_path"], "healthy_statuses": app["healthy_statuses"],
        })
    return {
        "apps": out,
        "nginx_group": merged["nginx_group"],
        "deploy_user": merged["deploy_user"],
        "firewall_allow_tcp": merged["firewall_allow_tcp"],
    }
