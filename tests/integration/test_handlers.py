"""Handlers on a real lab host (lab2): once, at the end, only after a change, and never lost.

A handler notified by a run that then fails stays pending on the host, in
/var/lib/keel/pending-handlers, and the next run flushes it even when that run
changes nothing (Ansible drops such handlers: ansible/ansible#4777).

The handler here appends a line to a log on the host, so the log tells how
often, and in which order relative to the operations, it ran.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from keel.connection import Connection
from keel.facts import PENDING_HANDLERS
from keel.host import Host
from keel.inventory import HostSpec
from keel.ops import files, server
from keel.output import Reporter
from keel.runner import HostOutcome, Play, RunOptions, run_host
from tests.conftest import TestLab

DIR = "/srv/kops-handlers"
LOG = f"{DIR}/log"
HANDLER = "kops handler"


def _handler(h: Host) -> Any:
    return server.command(h, f"echo handler >> {LOG}", name="log handler")


def role(apply: Callable[[Host], Any]) -> SimpleNamespace:
    """A role as the runner expects one: DEFAULTS, HANDLERS and apply(host)."""
    return SimpleNamespace(DEFAULTS={}, HANDLERS={HANDLER: _handler}, apply=apply)


def play(spec: HostSpec, apply: Callable[[Host], Any],
         check: bool = False) -> tuple[HostOutcome, str]:
    """A whole play (roles, then handlers) on one host, and what it printed."""
    text = io.StringIO()
    reporter = Reporter(console=Console(file=text, width=200, highlight=False))
    out = run_host(spec, Play("handlers", [role(apply)]), RunOptions(check=check), reporter)
    return out, text.getvalue()


def two_notifiers(h: Host) -> None:
    files.file(h, f"{DIR}/a.conf", "a\n", notify=HANDLER)
    files.file(h, f"{DIR}/b.conf", "b\n", notify=[HANDLER])
    # After the notifying operations: the handler must still come after this.
    server.command(h, f"echo after >> {LOG} && touch {DIR}/after", creates=f"{DIR}/after")


@pytest.fixture
def lab2(test_lab: TestLab, connect) -> Iterator[tuple[HostSpec, Connection]]:
    spec = test_lab.host("lab2")
    root = connect(spec)
    clean = f"rm -rf {DIR} {PENDING_HANDLERS}"
    assert root.run(f"{clean} && mkdir -p {DIR}").ok
    yield spec, root
    assert root.run(clean).ok


def cat(root: Connection, path: str) -> str | None:
    res = root.run(f"cat {path}")
    return res.out if res.ok else None


def ops(out: HostOutcome) -> list[tuple[str, str, bool]]:
    assert not out.failed and not out.unreachable, out.error
    return [(r.op, r.target, r.changed) for r in out.results]


def test_handler_runs_once_at_the_end(lab2) -> None:
    spec, root = lab2
    out, printed = play(spec, two_notifiers)
    assert ops(out) == [
        ("file", f"{DIR}/a.conf", True),
        ("file", f"{DIR}/b.conf", True),
        ("command", f"echo after >> {LOG} && touch {DIR}/after", True),
        ("command", "log handler", True),
    ]
    assert cat(root, LOG) == "after\nhandler\n"
    assert printed.count(f"lab2 handler  {HANDLER}") == 1
    # Flushed, so nothing is left pending.
    assert cat(root, PENDING_HANDLERS) is None


def test_handler_not_run_when_nothing_changed(lab2) -> None:
    spec, root = lab2
    assert not play(spec, two_notifiers)[0].failed
    assert cat(root, LOG) == "after\nhandler\n"

    again, printed = play(spec, two_notifiers)
    assert [changed for _, _, changed in ops(again)] == [False, False, False]
    assert cat(root, LOG) == "after\nhandler\n"
    assert printed == ""  # a no-change run prints only the recap (not printed by run_host)
    # Facts, then one probe per operation: not even a look at the pending file.
    assert again.round_trips == 4
    assert cat(root, PENDING_HANDLERS) is None


def test_pending_handler_survives_a_failed_run(lab2) -> None:
    spec, root = lab2

    def notify_then_fail(h: Host) -> None:
        files.file(h, f"{DIR}/a.conf", "a\n", notify=HANDLER)
        server.command(h, "echo 'disk on fire' >&2; exit 3", name="boom")
        files.file(h, f"{DIR}/never.conf", "never\n")

    failed, _ = play(spec, notify_then_fail)
    assert failed.failed and failed.error == "lab2: command boom: disk on fire"
    assert [(r.op, r.changed, r.failed) for r in failed.results] == [
        ("file", True, False), ("command", True, True)]
    assert cat(root, f"{DIR}/a.conf") == "a\n"
    assert cat(root, f"{DIR}/never.conf") is None
    assert cat(root, LOG) is None, "the handler ran although the play failed"
    assert cat(root, PENDING_HANDLERS) == f"{HANDLER}\n"

    def nothing_to_do(h: Host) -> None:
        files.file(h, f"{DIR}/a.conf", "a\n", notify=HANDLER)

    # A check-mode run says the handler would run, runs nothing and keeps it pending.
    plan, printed = play(spec, nothing_to_do, check=True)
    assert ops(plan) == [("file", f"{DIR}/a.conf", False)]
    assert printed == f"lab2 would run handler  {HANDLER}\n"
    assert cat(root, LOG) is None
    assert cat(root, PENDING_HANDLERS) == f"{HANDLER}\n"

    # The next real run changes nothing, still runs the handler once, and clears it.
    fixed, _ = play(spec, nothing_to_do)
    assert ops(fixed) == [("file", f"{DIR}/a.conf", False), ("command", "log handler", True)]
    assert cat(root, LOG) == "handler\n"
    assert cat(root, PENDING_HANDLERS) is None

    # And only once: the run after that has nothing pending.
    after, _ = play(spec, nothing_to_do)
    assert ops(after) == [("file", f"{DIR}/a.conf", False)]
    assert cat(root, LOG) == "handler\n"


def test_unknown_pending_handler_is_dropped_with_a_warning(lab2) -> None:
    """A pending name no role defines any more (a renamed handler) cannot block runs forever."""
    spec, root = lab2
    assert root.run(f"mkdir -p /var/lib/keel && printf 'gone handler\\n{HANDLER}\\n' "
                    f"> {PENDING_HANDLERS}").ok
    out, printed = play(spec, lambda h: None)
    assert ops(out) == [("command", "log handler", True)]
    assert "lab2 warning  dropping unknown pending handler 'gone handler'\n" in printed
    assert cat(root, LOG) == "handler\n"
    assert cat(root, PENDING_HANDLERS) is None
