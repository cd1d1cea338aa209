"""The per-host context that operations run against during a play.

A :class:`Host` holds the connection, the facts, the merged variables, check
mode, the results so far and the handlers notified. Roles receive it and pass
it to operations; they never talk to the connection themselves.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.connection import CommandResult, Connection
from keel.errors import OperationError, TemplateError
from keel.facts import PENDING_HANDLERS, STATE_DIR, Facts
from keel.inventory import HostSpec
from keel.operation import Change, Fail, NoChange, OpGenerator, Probe, Result, q
from keel.prefetch import Prefetcher

if TYPE_CHECKING:
    import jinja2

    from keel.output import Reporter

Handler = Callable[["Host"], Any]


class Host:
    """One host during one run. Not shared between threads."""

    def __init__(
        self,
        spec: HostSpec,
        conn: Connection,
        facts: Facts,
        vars: Mapping[str, Any],
        *,
        check: bool = False,
        template_dirs: list[Path] | None = None,
        reporter: Reporter | None = None,
        prefetch: Prefetcher | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.conn = conn
        self.facts = facts
        self.vars: dict[str, Any] = dict(vars)
        self.check = check
        #: A change that rode with its guard (see _probe): (script, result).
        self._ran: tuple[str, CommandResult] | None = None
        self.results: list[Result] = []
        self.notified: list[str] = list(facts.pending_handlers)
        self.handled: list[str] = []
        #: The play's handlers, in order (set by the runner).
        self.handlers: dict[str, Handler] = {}
        #: Scratch space roles share during one run (resolved settings, what switched).
        self.memo: dict[str, Any] = {}
        self.reporter = reporter
        #: Probes go through it: answered from a batch when they can be (see keel.prefetch).
        self.prefetch = prefetch or Prefetcher(conn)
        #: Set by the runner during preflight, whose checks are read-only by contract:
        #: their ``run`` scripts are batched like probes.
        self.read_only = False
        self._jinja = template_environment(template_dirs or [])

    # ---------------------------------------------------------- operations
    def apply(self, op: str, target: str, gen: OpGenerator, notify: list[str]) -> Result:
        """Probe, decide and (unless in check mode) change; record the result."""
        t0 = time.monotonic()
        self._ran = None
        try:
            probe = next(gen)
            while True:
                probe = gen.send(self._probe(probe, notify))
        except StopIteration as stop:
            outcome = stop.value
        if isinstance(outcome, NoChange):
            result = Result(self.name, op, target, False, outcome.reason, check=self.check)
        elif isinstance(outcome, Fail):
            result = Result(self.name, op, target, False, outcome.reason, failed=True,
                            error=outcome.reason, check=self.check)
        else:
            result = self._change(op, target, outcome, notify)
        if self._ran is not None:  # a guarded change ran that the operation did not make
            self._ran = None
            raise OperationError(self.name, f"{op} {target}: its guarded change ran, but the "
                                            "operation did not make it (a bug in the operation)")
        result.seconds = time.monotonic() - t0
        self.results.append(result)
        if self.reporter:
            self.reporter.result(result)
        if result.failed:
            raise OperationError(self.name, f"{op} {target}: {result.error}")
        return result

    def _probe(self, probe: Probe, notify: list[str]) -> CommandResult:
        """The probe's answer; a change that depends on it rides with it when it is not at hand.

        One request then asks the host to run the probe and, if ``probe.when``
        holds for its output, the change, exactly as :meth:`_change` would send
        it; the change's result is kept for :meth:`_change` (the operation still
        decides, from the probe's answer, as it always does). The answer comes back
        as the probe's output with its trailing newlines made one, and its exit code.
        """
        if probe.then is None or self.check or self.read_only or self.prefetch.at_hand(probe.script):
            return self.prefetch.read(probe.script)
        script = self._change_script(probe.then, notify)
        mark = f"KEEL-GUARD-{secrets.token_hex(8)}"
        guarded = (f"g=$( ( {probe.script}\n) </dev/null 2>/dev/null ); r=$?\n"
                   f"printf '%s\\n{mark} %s\\n' \"$g\" \"$r\"\n"
                   f"if {probe.when}\nthen echo ran; ( {script}\n)\nelse echo skipped; fi")
        # Counted as the probe, plus the change's commands if the host ran them.
        res = self.prefetch.write_guarded(probe.script, guarded, stdin=probe.then.stdin)
        answer, found, rest = (b"\n" + res.stdout).partition(f"\n{mark} ".encode())
        rc, _, rest = rest.partition(b"\n")
        verdict, _, rest = rest.partition(b"\n")
        if not found or not rc.isdigit() or verdict not in (b"ran", b"skipped"):
            why = _last_line(res.err) or f"exit {res.rc}"
            raise OperationError(self.name, f"a probe and its change sent together gave no "
                                            f"answer: {why}")
        if verdict == b"ran":
            self._ran = (script, CommandResult(res.rc, rest, res.stderr))
            self.conn.stats.commands += len(probe.then.commands)
        return CommandResult(int(rc), answer[1:] + b"\n", b"")

    @staticmethod
    def _change_script(change: Change, notify: list[str]) -> str:
        script = ["set -e", *change.commands]
        if notify:
            # Persisted in the same round trip: a run that dies after this
            # still runs the handler next time.
            names = " ".join(q(n) for n in notify)
            script.append(f"mkdir -p {STATE_DIR} && printf '%s\\n' {names} >> {PENDING_HANDLERS}")
        return "\n".join(script)

    def _change(self, op: str, target: str, change: Change, notify: list[str]) -> Result:
        diff = "(secret content hidden)" if change.secret and change.diff else change.diff
        result = Result(
            self.name, op, target, True, change.reason, diff=diff, check=self.check,
            commands=list(change.commands), before=change.before,
        )
        for name in notify:
            if name not in self.notified:
                self.notified.append(name)
        if self.check:
            return result
        script = self._change_script(change, notify)
        ran, self._ran = self._ran, None
        if ran is not None and ran[0] == script:
            res = ran[1]  # it rode with its guard (see _probe)
        else:
            res = self.prefetch.write(script, stdin=change.stdin, commands=len(change.commands))
        if not res.ok:
            result.failed = True
            result.error = _last_line(res.err) or _last_line(res.out) or f"exit {res.rc}"
        return result

    def run(self, script: str, stdin: bytes = b"") -> CommandResult:
        """Run a helper script (facts a role needs, a log line). At most one round trip.

        Outside preflight it may change the host, so it is treated like a change:
        results read before it are not reused after it.
        """
        if self.read_only and not stdin:
            return self.prefetch.read(script)
        return self.prefetch.write(script, stdin=stdin)

    def expect(self, script: str) -> None:
        """Say that :meth:`read_now` will read ``script`` once the changes about to be made
        (the handlers) are done: it then rides behind each of them, no round trip of its own.

        Example: ``host.expect(check); host.flush_handlers(); res = host.read_now(check)``
        """
        self.prefetch.expect(script)

    def read_now(self, script: str) -> CommandResult:
        """A read-only script whose answer depends on the moment (a health check): run after
        every change made so far (never taken from the run's first batch, never left in the
        trace for the next run's). At most one round trip; none if it rode (:meth:`expect`)."""
        return self.prefetch.read_now(script)

    def would_change(self, op: Any, *args: Any, **kwargs: Any) -> bool:
        """Ask ``op`` whether it would change anything, without changing or recording it."""
        saved = self.check, self.reporter, list(self.results), list(self.notified)
        self.check, self.reporter = True, None
        try:
            return op(self, *args, **kwargs).changed
        finally:
            self.check, self.reporter, self.results, self.notified = saved

    def key_files(self) -> list[str]:
        """The private key files this run's login could use (inventory, then ~/.ssh/config)."""
        files = [self.spec.key_file] if self.spec.key_file else []
        configured = self.conn.fabric.connect_kwargs.get("key_filename") or []
        configured = [configured] if isinstance(configured, str) else configured
        return files + [f for f in configured if f not in files]

    def login_check(self, user: str) -> str | None:
        """Open a fresh SSH login as ``user`` and run ``sudo -n true``.

        Returns None if that works, else the one-line reason. Used before a
        change that could lock the current login out (hardening sshd).
        """
        from keel.errors import HostError as _HostError

        try:
            other = Connection.open(self.spec, user=user)
        except _HostError as exc:
            return exc.reason
        try:
            res = other.run("true")
            return None if res.ok else f"sudo as {user} failed: {res.err.strip()}"
        finally:
            other.close()

    def say(self, text: str) -> None:
        """Print an informational line for this host (e.g. a listing)."""
        if self.reporter:
            self.reporter.info(self.name, text)

    # ------------------------------------------------------------ handlers
    def notify(self, name: str) -> None:
        if name not in self.notified:
            self.notified.append(name)

    def flush_handlers(self, handlers: Mapping[str, Handler] | None = None) -> None:
        """Run each notified handler once, in the order the play defines them.

        Roles may call it mid-play (like Ansible's ``meta: flush_handlers``)
        when a later step needs the handlers' effect, e.g. a health check.
        """
        handlers = self.handlers if handlers is None else handlers
        pending = [n for n in handlers if n in self.notified]
        unknown = [n for n in self.notified if n not in handlers]
        for name in pending:
            if self.reporter:
                self.reporter.handler(self.name, name, self.check)
            if not self.check:
                handlers[name](self)
            self.notified.remove(name)
            self.handled.append(name)
        for name in unknown:
            if self.reporter:
                self.reporter.warn(self.name, f"dropping unknown pending handler {name!r}")
            self.notified.remove(name)
        if not self.check and (pending or unknown or self.facts.pending_handlers):
            # Nobody reads its result: it rides with the next request (at the latest, the
            # run's last). A run that dies before sending it runs the handlers again next time.
            # No probe reads that file: the answers in hand stay good.
            self.prefetch.defer(f"rm -f {PENDING_HANDLERS}", clears=False)

    # ----------------------------------------------------------- templates
    def render(self, template: str, **extra: Any) -> str:
        """Render a Jinja2 template with the host's vars, facts and ``extra``.

        Undefined variables are errors (StrictUndefined), reported in one line
        with the template name and line.
        """
        import jinja2

        context = {**self.vars, "facts": self.facts, "inventory_hostname": self.name, **extra}
        try:
            return self._jinja.get_template(template).render(context)
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"{self.name}: template not found: {exc.name}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{self.name}: template {exc.name or template}:{exc.lineno}: {exc.message}"
            ) from None
        except jinja2.UndefinedError as exc:
            line = _template_line(exc, template)
            raise TemplateError(f"{self.name}: template {template}{line}: {exc.message}") from None

    # --------------------------------------------------------------- stats
    @property
    def changed(self) -> int:
        return sum(1 for r in self.results if r.changed and not r.failed)

    @property
    def ok(self) -> int:
        return sum(1 for r in self.results if not r.failed)


def template_environment(template_dirs: Sequence[str | Path]) -> jinja2.Environment:
    """The run's Jinja2 environment for these template dirs (see :func:`_environment`).

    Jinja2 is imported on the first call, not with this module: the runner calls
    this while the hosts' first round trips are on their way, so a run pays for
    the import (~25 ms) while it would wait anyway.
    """
    return _environment(tuple(str(d) for d in template_dirs))


@functools.cache
def _environment(template_dirs: tuple[str, ...]) -> jinja2.Environment:
    """One Jinja2 environment per set of template dirs, shared by every host of the run.

    Each template is compiled once per run, not once per host (an environment
    is safe to render from many threads; it checks the files' mtimes as usual),
    and its compiled code is kept across runs in Jinja2's bytecode cache (a
    directory of this user's only, keyed by the template's source checksum), so
    a run that renders unchanged templates does not compile them again.
    """
    import jinja2

    try:
        cache: jinja2.BytecodeCache | None = jinja2.FileSystemBytecodeCache()
    except (OSError, RuntimeError):  # no private directory for it: compile every run
        cache = None
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(template_dirs)),
        bytecode_cache=cache,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _template_line(exc: Exception, template: str) -> str:
    """Find the template's line number in the traceback of a render error."""
    tb = exc.__traceback__
    line = ""
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__jinja_template__") is not None or "template" in frame.f_code.co_name:
            name = frame.f_code.co_filename
            if name.endswith(template):
                line = f":{_jinja_lineno(frame, tb.tb_lineno)}"
        tb = tb.tb_next
    return line


def _jinja_lineno(frame: Any, pylineno: int) -> int:
    tmpl = frame.f_globals.get("__jinja_template__")
    if tmpl is not None:
        return tmpl.get_corresponding_lineno(pylineno)
    return pylineno
