"""Running a play: roles over many hosts in parallel, in batches, with a recap.

A play is a list of roles. A role is any object (usually a module) with:

- ``DEFAULTS``: a dict of documented default variables;
- ``HANDLERS``: a dict mapping a handler name to ``fn(host)``;
- ``apply(host)``: the operations, in order;
- optionally ``preflight(host)``: read-only checks, run for every role of the
  play before the first ``apply``, so bad input fails before anything changes.

The runner knows nothing about any particular role. Like Fabric's ``Group``,
it maps each host to what happened there: one failing host never hides the
others.

Example::

    outcomes = run_play(inventory.hosts("app"), Play("deploy", [python, uwsgi, nginx]),
                        RunOptions(parallel=10))
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from keel import lock
from keel.connection import Connection, Request
from keel.errors import HostError, KeelError, UnreachableError
from keel.facts import FACTS_SCRIPT, Facts
from keel.host import Host, template_environment
from keel.inventory import HostSpec
from keel.operation import Result
from keel.output import Reporter, mask, secret_values
from keel.prefetch import Prefetcher


@dataclass
class Play:
    """What to run: roles in order, where their templates live, which login to use.

    ``login`` picks the SSH user for a host from its vars (for example the
    deploy user once bootstrap has made it); ``None`` uses ``ansible_user``.
    """

    name: str
    roles: Sequence[Any]
    template_dirs: list[Path] = field(default_factory=list)
    login: Callable[[HostSpec], str | None] | None = None
    #: Hold the host's run lock (see keel.lock): a second concurrent run fails.
    lock: bool = False

    def trace_key(self) -> str:
        """Names the probe trace (keel.prefetch): the same roles read the same probes,
        whatever the task is called (``fab plan`` reads what ``fab deploy`` left)."""
        names = [getattr(r, "__name__", None) or type(r).__module__ + "." + type(r).__qualname__
                 for r in self.roles]
        return hashlib.sha256("\0".join(names).encode()).hexdigest()[:16]

    def defaults(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for role in self.roles:
            merged.update(getattr(role, "DEFAULTS", {}))
        return merged

    def handlers(self, host: Host) -> dict[str, Callable[[Host], Any]]:
        """Handlers in play order: a role's ``HANDLERS`` dict and/or ``handlers(host)``."""
        merged: dict[str, Callable[[Host], Any]] = {}
        for role in self.roles:
            merged.update(getattr(role, "HANDLERS", {}))
            dynamic = getattr(role, "handlers", None)
            if callable(dynamic):
                merged.update(dynamic(host))
        return merged


@dataclass
class RunOptions:
    check: bool = False
    parallel: int = 10
    serial: int = 0
    max_fail: int = 0
    stats: bool = False
    diff: bool = False
    verbose: bool = False
    json_path: Path | None = None
    sudo_password: str | None = None
    #: Idle seconds to keep each host's SSH connection for the next run (keel.control); 0: off.
    persist: float = 0.0
    extra_vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class HostOutcome:
    """What happened on one host."""

    name: str
    results: list[Result] = field(default_factory=list)
    failed: bool = False
    unreachable: bool = False
    skipped: bool = False
    error: str = ""
    round_trips: int = 0
    commands: int = 0
    #: Probes sent ahead in batches, and how many of them an operation used.
    prefetched: int = 0
    prefetch_hits: int = 0
    connect_seconds: float = 0.0
    seconds: float = 0.0
    #: Handlers that ran (in check mode: would have run), in order.
    handled: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(1 for r in self.results if not r.failed)

    @property
    def changed(self) -> int:
        return sum(1 for r in self.results if r.changed and not r.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "changed": self.changed, "failed": self.failed,
            "unreachable": self.unreachable, "skipped": self.skipped, "error": self.error,
            "round_trips": self.round_trips, "commands": self.commands,
            "prefetched": self.prefetched, "prefetch_hits": self.prefetch_hits,
            "seconds": round(self.seconds, 3), "results": [r.to_dict() for r in self.results],
        }


def run_host(
    spec: HostSpec, play: Play, opts: RunOptions, reporter: Reporter,
    body: Callable[[Host], Any] | None = None,
) -> HostOutcome:
    """Run the play on one host; never raises for host-level failures."""
    t0 = time.monotonic()
    outcome = HostOutcome(spec.name)
    variables = {**play.defaults(), **spec.vars, **opts.extra_vars}
    reporter.add_secrets(spec.name, secret_values(variables))
    conn = None
    try:
        # The login is picked from the same vars the roles see, --extra-vars included.
        user = play.login(replace(spec, vars={**spec.vars, **opts.extra_vars})) if play.login else None
        # The agent starts while the first request (facts, lock, probes) travels to it.
        conn = Connection.open(spec, sudo_password=opts.sudo_password, user=user, ready=False,
                               persist=opts.persist)
        locked = play.lock and not opts.check
        # Facts, the lock and the probes this play read here last time: one round trip.
        # Only under the run lock: no other run changes the host between a batch and its use.
        prefetch = Prefetcher(conn, play.trace_key() if play.lock else None)
        first = prefetch.start([Request(FACTS_SCRIPT)]
                               + ([Request(lock.acquire_script(play.name))] if locked else []))
        host = Host(spec, conn, Facts.parse(first[0].out), variables, check=opts.check,
                    template_dirs=play.template_dirs, reporter=reporter, prefetch=prefetch)
        if locked:
            stale = lock.acquired(spec.name, first[1])
            if stale:
                reporter.warn(spec.name, f"previous run did not finish (stale lock: {stale})")
        finished = False
        try:
            if body is not None:
                body(host)
            else:
                host.handlers = play.handlers(host)
                # Every role checks its inputs before any role changes anything.
                host.read_only = True
                for role in play.roles:
                    if hasattr(role, "preflight"):
                        role.preflight(host)
                host.read_only = False
                for role in play.roles:
                    role.apply(host)
                host.flush_handlers()
            finished = True
        finally:
            outcome.results = host.results
            outcome.handled = list(host.handled)
            outcome.prefetched, outcome.prefetch_hits = prefetch.prefetched, prefetch.hits
            # Writes left for the end, this run's probes for the next run, the lock's release.
            deferred = prefetch.take_deferred()
            last = list(deferred)
            if locked:
                save = prefetch.save_request() if finished else None
                last += [*([save] if save else []), lock.release_request()]
            try:
                if deferred:
                    conn.run_many(last)
                elif last:
                    conn.finish(last)  # the trace and the lock's release: nobody reads them
            except KeelError:
                # A lost connection frees the lock anyway; a lost write fails the run
                # (unless it is failing already: that error is the one to report).
                if finished and deferred:
                    raise
    except UnreachableError as exc:
        outcome.unreachable, outcome.error = True, str(exc)
    except KeelError as exc:
        outcome.failed, outcome.error = True, str(exc)
    except Exception as exc:  # a bug or a library error: still one line, still this host only
        outcome.failed = True
        outcome.error = f"{spec.name}: {type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        if conn is not None:
            outcome.round_trips = conn.stats.round_trips
            outcome.commands = conn.stats.commands
            outcome.connect_seconds = conn.stats.connect_seconds
            conn.close()
    if outcome.error:
        reporter.error(spec.name, outcome.error)
    outcome.seconds = time.monotonic() - t0
    return outcome


def run_play(
    hosts: Sequence[HostSpec], play: Play, opts: RunOptions, reporter: Reporter | None = None,
    body: Callable[[Host], Any] | None = None,
) -> list[HostOutcome]:
    """Run on every host, ``opts.parallel`` at a time, in batches of ``opts.serial``.

    After a batch with more than ``opts.max_fail`` failed or unreachable hosts,
    the remaining hosts are skipped.
    """
    reporter = reporter or Reporter(verbose=opts.verbose, diff=opts.diff)
    size = opts.serial or len(hosts) or 1
    batches = [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]
    outcomes: list[HostOutcome] = []
    stop = False
    for batch in batches:
        if stop:
            for h in batch:  # said once per host, like any other host-level error
                outcomes.append(HostOutcome(h.name, skipped=True,
                                            error="skipped: an earlier batch failed"))
                reporter.error(h.name, outcomes[-1].error)
            continue
        with ThreadPoolExecutor(max_workers=max(1, min(opts.parallel, len(batch)))) as pool:
            running = [pool.submit(run_host, s, play, opts, reporter, body) for s in batch]
            # While the hosts' first requests travel: Jinja2 and the templates' environment.
            template_environment(play.template_dirs)
            done = [f.result() for f in running]
        outcomes += done
        if sum(1 for o in done if o.failed or o.unreachable) > opts.max_fail and opts.serial:
            stop = True
    reporter.recap(outcomes, stats=opts.stats)
    if opts.json_path:
        secrets = {h.name: secret_values({**play.defaults(), **h.vars, **opts.extra_vars})
                   for h in hosts}
        write_json(opts.json_path, play, opts, outcomes, secrets)
    return outcomes


def write_json(path: Path, play: Play, opts: RunOptions, outcomes: list[HostOutcome],
               secrets: Mapping[str, set[str]] | None = None) -> None:
    """Per-host, per-operation results; each host's secret values masked as on the terminal."""
    secrets = secrets or {}
    doc = {"play": play.name, "check": opts.check,
           "hosts": {o.name: _masked(o.to_dict(), secrets.get(o.name, set())) for o in outcomes}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _masked(obj: Any, secrets: set[str]) -> Any:
    if isinstance(obj, str):
        return mask(obj, secrets)
    if isinstance(obj, dict):
        return {k: _masked(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_masked(v, secrets) for v in obj]
    return obj


def failed(outcomes: Sequence[HostOutcome]) -> bool:
    return any(o.failed or o.unreachable or o.skipped for o in outcomes)


__all__ = ["HostError", "HostOutcome", "Play", "RunOptions", "failed", "run_host", "run_play"]
