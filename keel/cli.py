"""Glue between Fabric tasks and the runner: options, host selection, exit codes.

Example (a task in ``fabfile.py``)::

    @task
    def deploy(c, inventory=None, limit=None, check=False):
        cli.run_play(c, Play("deploy", [python, app, uwsgi, nginx]), inventory=inventory,
                     limit=limit, check=check)
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from invoke import Exit

from keel import control
from keel.errors import KeelError
from keel.inventory import HostSpec, Inventory
from keel.rolling import Stage, run_stages
from keel.runner import Play, RunOptions, failed, run_play
from keel.vault import Passwords

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = PROJECT_DIR / "inventory" / "lab.yml"

# What the modules imported so far hold lives as long as the process: frozen, the
# garbage collector never walks it again (the walk at exit alone cost a no-change
# fab deploy ~40 ms). Again after a run, for what the run made.
gc.freeze()

#: Help for the options every play task takes (``fab -h deploy``).
OPTION_HELP = {
    "inventory": "inventory file or dir (default inventory/lab.yml)",
    "limit": "host pattern: name, group, 'a,b', '!excluded', 'web*'",
    "check": "plan only: show what would change, change nothing",
    "parallel": "hosts at once (default 10)",
    "serial": "hosts per batch (default: all in one batch)",
    "max_fail": "failed hosts a batch may have before the rest are skipped (default 0)",
    "stats": "show round trips, commands and timings per host",
    "json": "write per-host, per-operation results to this JSON file",
    "diff": "show diffs of changed files",
    "verbose": "show unchanged operations too",
    "extra_vars": "extra variables as JSON, highest precedence",
    "no_persist": "close each host's SSH connection at the end (default: kept for the next run, "
                  "60 s idle or $KEEL_CONTROL_PERSIST, as Ansible's ControlPersist)",
    "vault_password_file": "file with the ansible-vault password (or $ANSIBLE_VAULT_PASSWORD_FILE; "
                           "else asked for when something is encrypted)",
}


def select_hosts(c: Any, inventory: str | None, limit: str | None,
                 vault_password_file: str | None = None) -> list[HostSpec]:
    """Hosts from ``-H`` (Fabric's ad-hoc hosts) or from the inventory and ``--limit``."""
    return select_fleet(c, inventory, limit, vault_password_file)[1]


def select_fleet(c: Any, inventory: str | None, limit: str | None,
                 vault_password_file: str | None = None) -> tuple[list[HostSpec], list[HostSpec]]:
    """Every host of the inventory and those ``--limit`` selects, reading it once.

    Vault-encrypted variables are decrypted here, before any host is contacted,
    so a wrong password ends the run with one line and nothing touched.
    """
    try:
        if getattr(c, "host", None):  # `fab -H user@host:port task`
            adhoc = f"{c.user}@{c.host}:{c.port}" if c.user else f"{c.host}:{c.port}"
            keys = c.connect_kwargs.get("key_filename") or []  # Fabric's -i
            keys = [keys] if isinstance(keys, str) else keys
            fleet = [replace(h, key_file=h.key_file or (keys[0] if keys else None))
                     for h in Inventory.from_hosts([adhoc]).hosts(None)]
            return fleet, fleet
        path = Path(inventory) if inventory else DEFAULT_INVENTORY
        if not inventory and not path.exists():
            raise Exit(f"no inventory: {path} does not exist (run 'fab lab.up' or pass "
                       "--inventory)", code=2)
        loaded = Inventory.load(path, Passwords(vault_password_file))
        fleet, hosts = loaded.hosts(None), loaded.hosts(limit)
    except KeelError as exc:
        raise Exit(str(exc), code=2) from None
    if not hosts:
        raise Exit(f"no hosts match {limit!r}", code=2)
    return fleet, hosts


def options(
    c: Any, *, check: bool = False, parallel: int = 10, serial: int = 0, max_fail: int = 0,
    stats: bool = False, json_path: str | None = None, diff: bool = False,
    verbose: bool = False, extra_vars: str | None = None, persist: bool = False,
) -> RunOptions:
    """The run's options; ``persist``: keep each host's connection for the next run
    (see :mod:`keel.control`; ``KEEL_CONTROL_PERSIST`` sets its idle seconds, 0 turns it off)."""
    try:
        extra = json.loads(extra_vars) if extra_vars else {}
    except json.JSONDecodeError as exc:
        raise Exit(f"--extra-vars: not valid JSON: {exc}", code=2) from None
    sudo = getattr(getattr(c, "config", None), "sudo", None)
    password = getattr(sudo, "password", None) if sudo is not None else None
    return RunOptions(
        check=check, parallel=int(parallel), serial=int(serial), max_fail=int(max_fail),
        stats=stats, diff=diff or check, verbose=verbose,
        json_path=Path(json_path) if json_path else None, sudo_password=password,
        extra_vars={"project_dir": str(PROJECT_DIR), **extra},
        persist=control.persist_seconds(persist),
    )


def run(c: Any, play: Play, *, inventory: str | None = None, limit: str | None = None,
        only: Callable[[HostSpec], bool] | None = None, vault_password_file: str | None = None,
        end_kept: bool = False, **opts: Any) -> None:
    """Run ``play`` on the selected hosts (those ``only`` accepts); exit non-zero if any failed.

    ``end_kept``: first end the SSH connections earlier runs kept to those hosts
    (a play that changes how logins work must not leave an older login usable).
    """
    hosts = [h for h in select_hosts(c, inventory, limit, vault_password_file)
             if only is None or only(h)]
    if not hosts:
        raise Exit(f"{play.name}: none of the selected hosts runs this task", code=2)
    if end_kept:
        addresses = {h.address for h in hosts}
        control.stop_all(where=lambda kept: kept.get("address") in addresses)
    outcomes = run_play(hosts, play, options(c, **opts))
    gc.freeze()
    if failed(outcomes):
        bad = [o for o in outcomes if o.failed or o.unreachable or o.skipped]
        raise Exit(f"{play.name}: {len(bad)} of {len(outcomes)} host(s) failed", code=2)


def run_in_stages(name: str, stages: Sequence[Stage]) -> None:
    """Run plays one after another (see :func:`keel.rolling.run_stages`); exit non-zero on failure."""
    outcomes = run_stages(stages)
    gc.freeze()
    if failed(outcomes):
        bad = [o for o in outcomes if o.failed or o.unreachable or o.skipped]
        raise Exit(f"{name}: {len(bad)} of {len(outcomes)} host(s) failed", code=2)
