"""Tasks (``fab -l``). Each parses its options and hands over to ``keel``.

    fab lab.up            start a local lab host (systemd-nspawn)
    fab bootstrap         harden fresh hosts and create the deploy user
    fab deploy            install and deploy the apps: nginx -> uWSGI -> Flask
    fab verify            check the hosts with the testinfra suite
    fab plan              what deploy would change, with diffs; changes nothing
    fab releases          list releases; fab rollback goes back to the previous good one
"""

from __future__ import annotations

import json as _json

from fabric import task
from invoke import Collection, Exit

from keel import cli
from keel import verify as verifier
from keel.lab_tasks import lab
from keel.runner import Play
from roles import app as app_role
from roles import apps, nginx, python, release, uwsgi
from roles import bootstrap as bootstrap_role

TEMPLATES = [cli.PROJECT_DIR / "templates"]
H = cli.OPTION_HELP


def _login(spec) -> str:
    # After bootstrap, runs log in as the deploy user (root login is off).
    return spec.vars.get("deploy_user", bootstrap_role.DEFAULTS["deploy_user"])


def _deploy_play(name: str = "deploy") -> Play:
    return Play(name, [apps, python, app_role, release, uwsgi, nginx, release.gate], TEMPLATES,
                login=_login, lock=True)


@task(help=H)
def bootstrap(c, inventory=None, limit=None, check=False, parallel=10, serial=0, max_fail=0,
              stats=False, json=None, diff=False, verbose=False, extra_vars=None):
    """Harden fresh hosts: packages, deploy user, firewall, sshd, time sync, hostname."""
    cli.run(c, Play("bootstrap", [bootstrap_role], TEMPLATES), inventory=inventory, limit=limit,
            check=check, parallel=parallel, serial=serial, max_fail=max_fail, stats=stats,
            json_path=json, diff=diff, verbose=verbose, extra_vars=extra_vars)


@task(help=H)
def deploy(c, inventory=None, limit=None, check=False, parallel=10, serial=0, max_fail=0,
           stats=False, json=None, diff=False, verbose=False, extra_vars=None):
    """Deploy the apps: venv, release, uWSGI ini and unit, nginx site. Idempotent."""
    cli.run(c, _deploy_play(), inventory=inventory, limit=limit, check=check,
            parallel=parallel, serial=serial, max_fail=max_fail, stats=stats, json_path=json,
            diff=diff, verbose=verbose, extra_vars=extra_vars)


@task(help={k: v for k, v in H.items() if k not in ("check", "serial", "max_fail", "diff")})
def plan(c, inventory=None, limit=None, parallel=10, stats=False, json=None, verbose=False,
         extra_vars=None):
    """Show what deploy would change, with diffs (secrets masked). Changes nothing."""
    cli.run(c, _deploy_play("plan"), inventory=inventory, limit=limit, check=True,
            parallel=parallel,
            stats=stats, json_path=json, verbose=verbose, extra_vars=extra_vars)


@task(help={"inventory": H["inventory"], "limit": H["limit"], "parallel": H["parallel"],
            "serial": H["serial"], "to": "release id to go back to (default: the previous good one)",
            "app": "only this app (default: every app)", "json": H["json"]})
def rollback(c, inventory=None, limit=None, to="", app="", parallel=10, serial=0, json=None):
    """Switch back to the previous good release (or --to ID), chain-reload, health-check."""
    extra = _json.dumps({"rollback_to": to, "rollback_app": app})
    cli.run(c, Play("rollback", [apps, release.Rollback(), release.gate], TEMPLATES, login=_login,
                    lock=True),
            inventory=inventory, limit=limit, parallel=parallel, serial=serial, json_path=json,
            extra_vars=extra)


@task(help={"inventory": H["inventory"], "limit": H["limit"]})
def releases(c, inventory=None, limit=None):
    """List each app's releases on each host, marking the current and previous ones."""
    cli.run(c, Play("releases", [apps, release.Releases()], TEMPLATES, login=_login),
            inventory=inventory, limit=limit)


@task(help={"inventory": H["inventory"], "limit": H["limit"],
            "junit_xml": "also write a JUnit XML report here"})
def verify(c, inventory=None, limit=None, junit_xml=None):
    """Check the deployed hosts with the pytest-testinfra suite in tests/verify."""
    hosts = cli.select_hosts(c, inventory, limit)
    rc = verifier.run_suite(hosts, cli.PROJECT_DIR / "tests" / "verify",
                            lambda h: apps.expectations(h.vars), user_for=_login,
                            junit_xml=junit_xml)
    if rc:
        raise Exit(f"verify: checks failed on {len(hosts)} host(s) selected (see above)", code=rc)


ns = Collection(bootstrap, deploy, plan, verify, rollback, releases, lab)
