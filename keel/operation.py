"""The operation model: where a change is detected.

An operation is a generator function decorated with :func:`operation`. It
yields :class:`Probe` scripts to read the host's state (one round trip each;
no-change operations use one), compares that state with what was asked, and
returns either :class:`NoChange` or a :class:`Change` carrying the commands that
close the gap. The decision never runs anything itself, so it can be tested
exactly, state in and commands out, with :func:`simulate`::

    @operation
    def symlink(path: str, target: str):
        res = yield Probe(f"readlink {q(path)}")
        if res.out.strip() == target:
            return NoChange("link already points there")
        return Change([f"ln -sfn {q(target)} {q(path)}"], "link created")

    outcome = simulate(symlink("/etc/a", "/etc/b"), [CommandResult(1, b"", b"")])
    assert outcome.commands == ["ln -sfn /etc/b /etc/a"]

Called with a host first, the same function runs for real and returns a
:class:`Result`: ``symlink(host, "/etc/a", "/etc/b", notify="reload nginx")``.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keel.connection import CommandResult

if TYPE_CHECKING:
    pass


def q(value: object) -> str:
    """Shell-quote one word: ``q("a b") == "'a b'"``."""
    return shlex.quote(str(value))


@dataclass(frozen=True)
class Probe:
    """A read-only script whose output describes the current state.

    ``then``: the change the operation makes when ``when`` holds, a shell condition
    on the probe's output ``$g`` (by default: the probe did not print exactly
    ``done``, a guard). When the probe's answer is not at hand, the engine may send
    both in one request (the host runs ``then`` only if ``when`` holds), saving the
    round trip between them; the operation still decides from the answer as usual,
    and must then make exactly that change (the engine fails the run if it does not).
    """

    script: str
    then: Change | None = field(default=None, compare=False)
    when: str = field(default='[ "$g" != done ]', compare=False)


@dataclass
class Change:
    """Commands that bring the host to the desired state, run as one script."""

    commands: list[str]
    reason: str
    diff: str = ""
    stdin: bytes = b""
    # Hidden from output (secrets): the diff is replaced by a note.
    secret: bool = False
    #: The previous value, where the operation knows it (a symlink's old target).
    before: str = ""


@dataclass
class NoChange:
    """The host is already as asked."""

    reason: str


@dataclass
class Fail:
    """The host is in a state the operation refuses to change (one-line reason)."""

    reason: str


Outcome = Change | NoChange | Fail
OpGenerator = Generator[Probe, CommandResult, Outcome]


@dataclass
class Result:
    """What one operation did (or, in check mode, would do) on one host."""

    host: str
    op: str
    target: str
    changed: bool
    reason: str
    diff: str = ""
    failed: bool = False
    error: str = ""
    check: bool = False
    commands: list[str] = field(default_factory=list)
    before: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op, "target": self.target, "changed": self.changed,
            "failed": self.failed, "reason": self.reason, "error": self.error,
            "diff": self.diff, "seconds": round(self.seconds, 4),
        }


def operation(fn: Callable[..., OpGenerator]) -> Callable[..., Any]:
    """Turn a decision generator into an operation.

    ``op(*args)`` returns the generator (for :func:`simulate`); ``op(host, *args,
    notify=..., name=...)`` runs it on the host. ``notify`` names one handler or
    a list of them, notified only when the operation changed something.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from keel.host import Host

        if args and isinstance(args[0], Host):
            host, rest = args[0], args[1:]
            notify = kwargs.pop("notify", None)
            label = kwargs.pop("name", None)
            op = kwargs.pop("op_name", fn.__name__)
            first = rest[0] if rest else ""
            target = label or (" ".join(map(str, first)) if isinstance(first, list | tuple)
                               else str(first))
            return host.apply(op, target, fn(*rest, **kwargs), _as_list(notify))
        return fn(*args, **kwargs)

    wrapper.decide = fn  # type: ignore[attr-defined]
    return wrapper


def simulate(gen: OpGenerator, probes: Iterable[CommandResult | tuple[int, str]]) -> Outcome:
    """Drive an operation's decision with canned probe results; no host needed.

    Each probe is a :class:`CommandResult` or ``(rc, stdout)``. Returns the
    outcome; raises AssertionError if the operation asks for more probes.
    """
    feed = iter(probes)
    try:
        next(gen)
        while True:
            item = next(feed, None)
            if item is None:
                raise AssertionError("operation asked for more probes than given")
            if isinstance(item, tuple):
                item = CommandResult(item[0], item[1].encode(), b"")
            gen.send(item)
    except StopIteration as stop:
        return stop.value


def _as_list(notify: str | Iterable[str] | None) -> list[str]:
    if notify is None:
        return []
    return [notify] if isinstance(notify, str) else list(notify)
