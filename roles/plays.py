"""The plays the tasks run: which roles, in which order, on which hosts.

``fabfile.py`` parses options and calls these; the roles do the work and the
engine runs them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from invoke import Exit

from keel import cli
from keel.connection import Connection
from keel.errors import HostError
from keel.inventory import HostSpec
from keel.rolling import Rotation, Stage
from keel.runner import Play
from roles import acme, apps, bootstrap, lb, python, release, tls, uwsgi
from roles import app as app_role
from roles import nginx as nginx_role

TEMPLATES = [cli.PROJECT_DIR / "templates"]


def login(spec: HostSpec) -> str:
    """After bootstrap, runs log in as the deploy user (root login is off)."""
    return spec.vars.get("deploy_user", bootstrap.DEFAULTS["deploy_user"])


def bootstrap_login(spec: HostSpec) -> str | None:
    """The initial user (``ansible_user``), unless bootstrap has already locked it out:
    then the deploy user, found by trying it first (one extra SSH login per bootstrap).
    """
    deploy = login(spec)
    if spec.user in (None, "root", deploy) or spec.vars.get(
            "initial_user", bootstrap.DEFAULTS["initial_user"]) != "lock":
        return None
    try:
        Connection.open(spec, user=deploy).close()
    except HostError:
        return None  # a fresh host: the initial user it is
    return deploy


def is_app_host(spec: HostSpec) -> bool:
    return not lb.is_balancer(spec)


def bootstrap_play() -> Play:
    return Play("bootstrap", [bootstrap], TEMPLATES, login=bootstrap_login)


def app_play(name: str = "deploy") -> Play:
    """The app stack, ending with the health gate (which rolls back a bad release); an ACME
    certificate that could not be had fails the run after it."""
    return Play(name, [apps, python, app_role, release, uwsgi, tls, nginx_role, acme, tls.cleanup,
                       release.gate, acme.verdict], TEMPLATES, login=login, lock=True)


def rollback_play() -> Play:
    return Play("rollback", [apps, acme.found, release.Rollback(), release.gate], TEMPLATES,
                login=login, lock=True)


def releases_play() -> Play:
    return Play("releases", [apps, release.Releases()], TEMPLATES, login=login)


def deploy(c: Any, name: str, inventory: str | None, limit: str | None, serial: Any,
           vault_password_file: str | None = None, **opts: Any) -> None:
    """Load balancers first; then the app hosts, in batches drained from every balancer."""
    fleet, hosts = cli.select_fleet(c, inventory, limit, vault_password_file)
    options = cli.options(c, **opts)
    balancers = [h for h in fleet if lb.is_balancer(h)]
    lb_play = Play(name, [lb.Pool(fleet), lb], TEMPLATES, login=login, lock=True)
    rotation = Rotation(balancers, lb_play, lb_play, options, var="lb_down") if balancers else None
    if serial not in (None, "") and not str(serial).isdigit():
        raise Exit(f"{name}: --serial must be a number of hosts, not {serial!r}", code=2)
    batch = int(serial) if serial not in (None, "") else 1 if balancers else 0
    cli.run_in_stages(name, [
        Stage([h for h in hosts if lb.is_balancer(h)], lb_play, options),
        Stage([h for h in hosts if is_app_host(h)], app_play(name),
              replace(options, serial=batch), rotation),
    ])


def expectations(spec: HostSpec) -> dict[str, Any]:
    """What ``fab verify`` checks on this host."""
    return (lb.expectations if lb.is_balancer(spec) else apps.expectations)(spec.vars)
