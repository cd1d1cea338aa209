"""Rolling runs: a play over hosts in batches, each batch taken out of service elsewhere first.

A :class:`Rotation` names the hosts that send traffic to the others (load
balancers, say) and the plays that take hosts out of their rotation and put
them back. The engine knows nothing about what those plays do: it passes the
names of the hosts to keep out in one variable and the names coming back in
another, and the plays render whatever that means for them. For each batch:

1. the play runs in check mode, silently, to find the hosts that would change
   anything or run a handler: a host with nothing to do is never taken out;
2. ``before`` runs on the rotation's hosts with ``var`` = those hosts, plus any
   that failed in earlier batches (they stay out);
3. the play runs on the batch;
4. ``after`` runs with ``var`` = the failed hosts only and ``<var>_returning`` =
   the others, which go back into service (the play may check them first);
5. a batch with more than ``max_fail`` failed hosts stops the run: later
   batches are skipped, and so are they if ``before`` or ``after`` fails.

:func:`run_stages` runs several plays in order (the balancers' own play, then
the rolling one) with one recap and one JSON report.

Example::

    rotation = Rotation(lbs, before=lb_play, after=lb_play, opts=lb_opts, var="lb_down")
    outcomes = run_stages([Stage(lbs, lb_play, lb_opts),
                           Stage(app_hosts, app_play, replace(opts, serial=1), rotation)])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from keel.inventory import HostSpec
from keel.output import Reporter, secret_values
from keel.runner import HostOutcome, Play, RunOptions, failed, run_play, write_json


@dataclass
class Rotation:
    """Plays run on ``hosts`` around each batch; see the module docstring."""

    hosts: Sequence[HostSpec]
    before: Play
    after: Play
    opts: RunOptions
    #: Names the hosts out of service; ``<var>_returning`` names those coming back.
    var: str = "out_of_service"


@dataclass
class Stage:
    """One play over some hosts; with a rotation, it rolls through them in batches."""

    hosts: Sequence[HostSpec]
    play: Play
    opts: RunOptions
    rotation: Rotation | None = None


class _Inline(Reporter):
    """Prints as a run goes, but leaves the recap to the caller (one for all stages)."""

    def recap(self, outcomes: Iterable[HostOutcome], stats: bool = False) -> None:
        pass


def _quiet() -> Reporter:
    return _Inline(quiet=True)


def _names(hosts: Iterable[HostSpec | HostOutcome]) -> list[str]:
    return [h.name for h in hosts]


def _rotate(rotation: Rotation, play: Play, out: Iterable[str], returning: Iterable[str],
            reporter: Reporter) -> list[HostOutcome]:
    extra: dict[str, Any] = {**rotation.opts.extra_vars, rotation.var: sorted(out),
                             f"{rotation.var}_returning": sorted(returning)}
    opts = replace(rotation.opts, extra_vars=extra, check=False, serial=0, json_path=None)
    return run_play(rotation.hosts, play, opts, reporter)


def _skip(hosts: Iterable[HostSpec], why: str, reporter: Reporter) -> list[HostOutcome]:
    skipped = [HostOutcome(h.name, skipped=True, error=f"skipped: {why}") for h in hosts]
    for o in skipped:
        reporter.error(o.name, o.error)
    return skipped


def run_rolling(hosts: Sequence[HostSpec], play: Play, opts: RunOptions, rotation: Rotation,
                reporter: Reporter) -> list[HostOutcome]:
    """Run ``play`` on ``hosts`` in batches of ``opts.serial``, each behind ``rotation``.

    Returns the batch hosts' outcomes followed by the rotation hosts' outcomes
    of every ``before``/``after`` run (merge them with :func:`merge`).
    """
    size = opts.serial or len(hosts) or 1
    batches = [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]
    run_opts = replace(opts, serial=0, json_path=None)
    check_opts = replace(run_opts, check=True, diff=False, verbose=False)
    where = ", ".join(_names(rotation.hosts))
    held: set[str] = set()  # failed earlier: they stay out of service
    outcomes: list[HostOutcome] = []
    around: list[HostOutcome] = []
    stop = ""
    for n, batch in enumerate(batches, 1):
        if stop:
            outcomes += _skip(batch, stop, reporter)
            continue
        planned = run_play(batch, play, check_opts, _quiet())
        moving = [h for h, o in zip(batch, planned, strict=True)
                  if (o.changed or o.handled) and not (o.failed or o.unreachable)]
        if moving:
            for h in moving:
                reporter.info(h.name, f"out of service on {where} (batch {n} of {len(batches)})")
            before = _rotate(rotation, rotation.before, held | set(_names(moving)), [], reporter)
            around += before
            if failed(before):
                around += _rotate(rotation, rotation.after, held, [], _quiet())  # undo, best effort
                stop = f"taking hosts out of service on {where} failed"
                outcomes += _skip(batch, stop, reporter)
                continue
        done = run_play(batch, play, run_opts, reporter)
        outcomes += done
        bad = {o.name for o in done if o.failed or o.unreachable}
        if moving:
            held |= bad & set(_names(moving))
            back = [h.name for h in moving if h.name not in bad]
            after = _rotate(rotation, rotation.after, held, back, reporter)
            around += after
            if failed(after):
                stop = f"putting hosts back into service on {where} failed"
            for name in back if not failed(after) else []:
                reporter.info(name, f"back in service on {where}")
            for name in sorted(held & bad):
                reporter.warn(name, f"left out of service on {where}: its run failed")
        if len(bad) > opts.max_fail:
            stop = stop or "an earlier batch failed"
    return outcomes + around


def merge(outcomes: Iterable[HostOutcome]) -> list[HostOutcome]:
    """One outcome per host, in order of first appearance (a host may run in several plays)."""
    merged: dict[str, HostOutcome] = {}
    for o in outcomes:
        m = merged.get(o.name)
        if m is None:
            merged[o.name] = replace(o, results=list(o.results), handled=list(o.handled))
            continue
        m.results += o.results
        m.handled += o.handled
        m.failed |= o.failed
        m.unreachable |= o.unreachable
        m.skipped = m.skipped and o.skipped
        m.error = m.error or o.error
        m.round_trips += o.round_trips
        m.commands += o.commands
        m.connect_seconds += o.connect_seconds
        m.seconds += o.seconds
    return list(merged.values())


def run_stages(stages: Sequence[Stage], reporter: Reporter | None = None) -> list[HostOutcome]:
    """Run each stage in order; a stage with a failed host skips the later stages.

    One recap and (with ``json_path`` in the first stage's options) one JSON
    report cover every stage.
    """
    stages = [s for s in stages if s.hosts]
    if not stages:
        return []
    first = stages[0].opts
    main = reporter or Reporter(verbose=first.verbose, diff=first.diff)
    inline = _Inline(console=main._console, verbose=main.verbose, diff=main.diff)
    outcomes: list[HostOutcome] = []
    for stage in stages:
        if failed(outcomes):
            outcomes += _skip(stage.hosts, "an earlier stage failed", inline)
        elif stage.rotation is not None and not stage.opts.check:
            outcomes += run_rolling(stage.hosts, stage.play, stage.opts, stage.rotation, inline)
        else:
            outcomes += run_play(stage.hosts, stage.play, replace(stage.opts, json_path=None), inline)
    outcomes = merge(outcomes)
    main.recap(outcomes, stats=first.stats)
    if first.json_path:
        secrets: dict[str, set[str]] = {}
        for stage in stages:
            groups = [(stage.hosts, stage.play, stage.opts)]
            if stage.rotation is not None:
                rot = stage.rotation
                groups.append((rot.hosts, rot.before, rot.opts))
            for hosts, play, opts in groups:
                for h in hosts:
                    secrets.setdefault(h.name, set()).update(
                        secret_values({**play.defaults(), **h.vars, **opts.extra_vars}))
        write_json(first.json_path, stages[-1].play, first, outcomes, secrets)
    return outcomes
