"""Tasks (``fab -l``). Each parses its options and hands over to ``keel``.

    fab lab.up            start a local lab host (systemd-nspawn)
    fab bootstrap         harden fresh hosts and create the deploy user
    fab deploy            install and deploy the apps: nginx -> uWSGI -> Flask
    fab verify            check the hosts with the testinfra suite
    fab plan              what deploy would change, with diffs; changes nothing
    fab releases          list releases; fab rollback goes back to the previous good one
    fab status            services, releases and uWSGI workers across hosts (--watch: live)
    fab logs              journald logs of the apps from every host (--follow)
"""

from __future__ import annotations

import json as _json
import os
import sys

from fabric import task
from invoke import Collection, Exit

from keel import cli
from keel.errors import KeelError
from keel.lab_tasks import lab
from roles import plays

H = cli.OPTION_HELP


@task(help={k: v for k, v in H.items() if k != "no_persist"})
def bootstrap(c, inventory=None, limit=None, check=False, parallel=10, serial=0, max_fail=0,
              stats=False, json=None, diff=False, verbose=False, extra_vars=None,
              vault_password_file=None):
    """Harden fresh hosts: packages, deploy user, firewall, sshd, time sync, hostname."""
    cli.run(c, plays.bootstrap_play(), inventory=inventory, limit=limit, end_kept=True,
            check=check, parallel=parallel, serial=serial, max_fail=max_fail, stats=stats,
            json_path=json, diff=diff, verbose=verbose, extra_vars=extra_vars,
            vault_password_file=vault_password_file)


def _with(extra_vars: str | None, **flags: object) -> str | None:
    """``--extra-vars`` with the task's flags that are set (the JSON stays checked by keel)."""
    flags = {k: v for k, v in flags.items() if v}
    if not flags:
        return extra_vars
    try:
        extra = _json.loads(extra_vars) if extra_vars else {}
    except _json.JSONDecodeError:
        return extra_vars
    return _json.dumps({**flags, **extra})


@task(help={**H, "serial": "app hosts per batch (default: 1 behind load balancers, else all)",
            "rerun_setup": "run each app's setup commands again (after a snapshot of its data)",
            "prune": "remove the apps no longer in the inventory (their data is kept)",
            "purge": "as --prune, and delete their data, user and group too"})
def deploy(c, inventory=None, limit=None, check=False, parallel=10, serial=None, max_fail=0,
           stats=False, json=None, diff=False, verbose=False, extra_vars=None,
           vault_password_file=None, rerun_setup=False, prune=False, purge=False, no_persist=False):
    """Deploy: the apps (venv, release, uWSGI, nginx) and the lb hosts; rolling behind lbs. Idempotent."""
    plays.deploy(c, "deploy", inventory, limit, serial, vault_password_file, check=check,
            parallel=parallel, max_fail=max_fail, stats=stats, json_path=json, diff=diff,
            persist=not no_persist,
            verbose=verbose, extra_vars=_with(extra_vars, rerun_setup=rerun_setup,
                                              prune_apps=prune, purge_apps=purge))


@task(help={k: v for k, v in H.items() if k not in ("check", "serial", "max_fail", "diff")})
def plan(c, inventory=None, limit=None, parallel=10, stats=False, json=None, verbose=False,
         extra_vars=None, vault_password_file=None, no_persist=False):
    """Show what deploy would change, with diffs (secrets masked). Changes nothing."""
    plays.deploy(c, "plan", inventory, limit, None, vault_password_file, check=True,
            persist=not no_persist,
            parallel=parallel, stats=stats, json_path=json, verbose=verbose, extra_vars=extra_vars)


@task(help={"inventory": H["inventory"], "limit": H["limit"], "parallel": H["parallel"],
            "serial": H["serial"], "to": "release id to go back to (default: the previous good one)",
            "app": "only this app (default: every app)", "json": H["json"],
            "vault_password_file": H["vault_password_file"],
            "keep_data": "keep the current data (default: restore the release's snapshot)"})
def rollback(c, inventory=None, limit=None, to="", app="", parallel=10, serial=0, json=None,
             vault_password_file=None, keep_data=False):
    """Back to the previous good release (or --to ID) and its data, chain-reload, health-check."""
    extra = _json.dumps({"rollback_to": to, "rollback_app": app, "keep_data": bool(keep_data)})
    cli.run(c, plays.rollback_play(), inventory=inventory, limit=limit, only=plays.is_app_host,
            parallel=parallel, serial=serial,
            json_path=json, extra_vars=extra, vault_password_file=vault_password_file)


@task(help={"inventory": H["inventory"], "limit": H["limit"],
            "vault_password_file": H["vault_password_file"]})
def releases(c, inventory=None, limit=None, vault_password_file=None):
    """List each app's releases on each host, marking the current and previous ones."""
    cli.run(c, plays.releases_play(), inventory=inventory, limit=limit, only=plays.is_app_host,
            vault_password_file=vault_password_file)


@task(help={"inventory": H["inventory"], "limit": H["limit"],
            "junit_xml": "also write a JUnit XML report here",
            "vault_password_file": H["vault_password_file"]})
def verify(c, inventory=None, limit=None, junit_xml=None, vault_password_file=None):
    """Check the deployed hosts with the pytest-testinfra suite in tests/verify."""
    hosts = cli.select_hosts(c, inventory, limit, vault_password_file)
    from keel import verify as verifier  # only what each task needs: `fab deploy` starts faster

    failed: list[str] = []
    rc = verifier.run_suite(hosts, cli.PROJECT_DIR / "tests" / "verify", plays.expectations,
                            user_for=plays.login, junit_xml=junit_xml, failed=failed)
    if rc:
        raise Exit(f"verify: checks failed on {len(failed)} of {len(hosts)} host(s): "
                   f"{', '.join(failed) or 'none named (see above)'}", code=rc)


@task(help={"inventory": H["inventory"], "limit": H["limit"], "app": "only this app",
            "watch": "refresh in place until Ctrl-C",
            "interval": "seconds between refreshes with --watch (0.5 to 60, default 2)",
            "count": "with --watch, stop after this many refreshes (default: never)",
            "json": "print JSON instead of the table (with --watch: one line per refresh)",
            "vault_password_file": H["vault_password_file"]})
def status(c, inventory=None, limit=None, app="", watch=False, interval="2", count=0, json=False,
           vault_password_file=None):
    """One table of every app on the selected hosts: service, release, uWSGI workers, nginx."""
    hosts = cli.select_hosts(c, inventory, limit, vault_password_file)
    try:
        seconds = float(interval)
    except ValueError:
        seconds = -1.0
    if not 0.5 <= seconds <= 60:
        raise Exit(f"status: --interval must be 0.5 to 60 seconds, not {interval!r}", code=2)
    from keel.fleet import Fleet
    from roles import status as status_role

    with Fleet(hosts, login=plays.login, sudo_password=cli.options(c).sudo_password) as fleet:
        try:
            failed = status_role.show(fleet, only=app, watch=watch, interval=seconds,
                                      count=int(count), as_json=json)
        except KeelError as exc:
            raise Exit(str(exc), code=2) from None
    if failed:
        raise Exit(f"status: {failed} of {len(hosts)} host(s) could not be read", code=1)


@task(help={"inventory": H["inventory"], "limit": H["limit"],
            "app": "only this app's unit (default: every app's, and nginx's)",
            "since": "as journalctl --since: -10min, today, '2026-01-31 12:00'",
            "follow": "keep printing new entries until Ctrl-C",
            "lines": "entries per host when --since is not given (default 50)",
            "vault_password_file": H["vault_password_file"]})
def logs(c, inventory=None, limit=None, app="", since="", follow=False, lines=50,
         vault_password_file=None):
    """Journald logs of the apps (and nginx) from every selected host, each line prefixed by it."""
    from roles import logs as logs_role

    hosts = cli.select_hosts(c, inventory, limit, vault_password_file)
    try:
        failed = logs_role.show(hosts, only=app, since=since, follow=follow, lines=int(lines),
                                login=plays.login, sudo_password=cli.options(c).sudo_password)
    except KeyboardInterrupt:
        # Every started remote journalctl has been ended, so leave at once. A normal
        # exit tears the interpreter down (GC and module cleanup: ~0.13 s of CPU,
        # 7x what the Ctrl-C itself costs), which a saturated machine stretched
        # to 2-9 s. A host still connecting needs nothing either: its connection
        # dies with this process, and with it whatever sshd had started there.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except KeelError as exc:
        raise Exit(str(exc), code=2) from None
    if failed:
        raise Exit(f"logs: {failed} of {len(hosts)} host(s) failed", code=2)


ns = Collection(bootstrap, deploy, plan, verify, rollback, releases, status, logs, lab)
