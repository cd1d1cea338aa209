"""Probes in batches: a no-change run reads the host in one round trip, not one per operation.

Operations are imperative: a role calls them one after another and may branch
on a result, so a play's probes cannot be known before it runs. But they are
almost always the probes the same play read on the same host last time. So a
play that holds the run lock leaves its probe scripts on the host (the
*trace*, ``/var/lib/keel/trace-<key of the play's roles>``, root only), and the next run has the
host run them all at once, concurrently, behind its first request (facts,
lock): one round trip. After a request that may change the host, the next few
expected probes (all the rest, when few are left) ride behind it, run
concurrently, and only if the change succeeded; so do the reads the run said it
will make after its changes (:meth:`Prefetcher.expect`: the health checks after
the handlers). An operation's probe is answered from a batch only when

- its script is exactly, character for character, one that ran there,
- and nothing that may change the host ran after that batch: any change,
  handler or role script other than a preflight check drops every batched
  result, and the probes that ride behind it run *after* it, seeing its effect.

Anything else (a probe the last run did not read, one whose text differs
because a variable or fact did) is sent on its own, as before, and goes into
the new trace. A stale or missing trace costs round trips, never a wrong
decision: each probe's result is what the host answered after the last change,
exactly as if it had been sent alone. The run lock keeps other keel runs from
changing the host between a batch and its use.

Example::

    pf = Prefetcher(conn, "deploy")
    facts_res, lock_res = pf.start([Request(FACTS_SCRIPT), Request(lock_script)])  # + the trace
    pf.read("stat -c %U /srv/hello")   # from the batch: no round trip
    pf.write("chown hello /srv/hello")  # the change, with the rest of the trace behind it
    pf.save_request()                  # this run's trace, to send with the lock's release
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from keel.connection import BATCH, IF_OK, CommandResult, Connection, Request
from keel.facts import STATE_DIR
from keel.operation import q

_PLAY_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
#: After a change, this many of the next expected probes ride behind it (each
#: costs the host a few ms, and a change often means the next probes differ);
#: a probe still expected but not in hand then fetches all the rest at once.
WINDOW = 6
#: ... unless no more than this many are left: then they all ride (the last change
#: of a run would otherwise cost one more round trip for the rest).
WINDOW_ALL = 24
#: At most this many bytes of probe scripts in one batch.
MAX_BATCH_BYTES = 512 * 1024


def trace_file(play: str) -> str:
    return f"{STATE_DIR}/trace-{play}"


class Prefetcher:
    """One host's probe batches during one run. Not thread-safe (one per host, like the connection).

    Without a ``play`` (or for a play name unfit for a file name) it batches
    nothing: each read and write is one round trip, as it always was.
    """

    def __init__(self, conn: Connection, play: str | None = None) -> None:
        self.conn = conn
        self.file = trace_file(play) if play and _PLAY_NAME.match(play) else None
        #: The trace's scripts, in order, as the host last ran them.
        self.expected: list[str] = []
        #: Probe scripts this run read, in order (the next trace).
        self.trace: list[str] = []
        self._seen: set[str] = set()
        self._cache: dict[str, CommandResult] = {}
        self._pos = 0  # how far this run has come along ``expected``
        self._deferred: list[Request] = []
        self._on_track = True  # the last probe read was one the trace expected
        #: Values that changed since the last run (old -> new), learned from probes that
        #: came back with new values in them; applied to the expected probes sent ahead.
        self._renamed: dict[str, str] = {}
        #: Reads this run makes after its next changes (see :meth:`expect`), in order.
        self._ahead: dict[str, None] = {}
        self.prefetched = 0
        self.hits = 0

    # ------------------------------------------------------------ requests
    def start(self, first: Sequence[Request]) -> list[CommandResult]:
        """Run ``first`` (facts, lock) with the whole trace behind it: one round trip."""
        if not self.file:
            return self.conn.run_many(first)
        # The agent runs them concurrently: they only read (see keel.connection.BATCH).
        runner = f"{BATCH} {self.file}\n"
        *results, batch = self.conn.run_many([*first, Request(runner, commands=0)])
        found = _parse(batch.stdout) if batch.ok else []
        self.expected = [script for script, _ in found]
        self._cache = dict(found)
        self.prefetched += len(found)
        self.conn.stats.commands += len(found)
        return results

    def read(self, script: str) -> CommandResult:
        """A read-only script's result: from the current batch if it ran there, else sent now."""
        on_track = self._track(script)
        cached = self._cache.get(script)
        if cached is not None:
            self.hits += 1
            return cached
        # Still expected but not in hand (a change came in between): the rest with it.
        return self._send([Request(script)], clear=False, window=None if on_track else 0)[0]

    def expect(self, script: str) -> None:
        """A read this run will make once the changes it is about to make are done (a health
        check after the handlers): it rides behind each of them, so that its answer from
        behind the last one is at hand; :meth:`read_now` takes it."""
        self._ahead[script] = None

    def read_now(self, script: str) -> CommandResult:
        """A read whose answer depends on the moment (a health check after a restart): never
        part of the trace (a no-change run should not run it), answered from behind the last
        change if it rode there (:meth:`expect`), else sent on its own."""
        self._ahead.pop(script, "")
        cached = self._cache.pop(script, None)
        if cached is not None:
            self.hits += 1
            return cached
        return self._send([Request(script)], clear=False, window=0)[0]

    def _predict(self, script: str) -> str:
        """An expected probe as this run will likely read it (its old values renamed)."""
        if not self._renamed:
            return script
        return _VALUE.sub(lambda m: self._renamed.get(m.group(), m.group()), script)

    def at_hand(self, script: str) -> bool:
        """Whether ``script``'s result is in the current batch (a read would cost nothing)."""
        return script in self._cache

    def write_guarded(self, guard: str, script: str, stdin: bytes = b"") -> CommandResult:
        """``script`` runs the probe ``guard`` and, if its answer calls for it, a change (see
        keel.host): one request where a read and a write would be two. ``guard`` goes into
        the trace as a read would, so that the next run finds it in its batch."""
        self._track(guard)
        return self.write(script, stdin)

    def _track(self, script: str) -> bool:
        """Note a probe this run reads; whether the last run read it here too (on track)."""
        if script not in self._seen:
            self._seen.add(script)
            self.trace.append(script)
        on_track = script in self.expected[self._pos:]
        if on_track:
            self._pos = self.expected.index(script, self._pos) + 1
        elif self._pos < len(self.expected) and _shape(script) == _shape(self.expected[self._pos]):
            # The probe the last run read here, with new values in it (a new checksum, a
            # marker named after new settings, a new release): still on track, and the later
            # probes that held the old values are sent ahead with the new ones.
            old = _VALUE.findall(self.expected[self._pos])
            for a, b in zip(old, _VALUE.findall(script), strict=True):
                if a != b:
                    # A digest's short form (its first 12 characters, as ids and marker
                    # names use it) is renamed with it.
                    self._renamed.update({a: b, a[:_SHORT]: b[:_SHORT]})
            self._pos += 1
            on_track = True
        self._on_track = on_track
        return on_track

    def write(self, script: str, stdin: bytes = b"", commands: int = 1) -> CommandResult:
        """A script that may change the host; the next expected probes ride behind it
        (unless this run has left the trace: then they would only cost the host time)."""
        return self._send([Request(script, stdin, commands)],
                          window=WINDOW if self._on_track else 0)[0]

    def defer(self, script: str, clears: bool = True) -> None:
        """A write whose result nobody reads: sent in front of the next request, or at the end.

        ``clears=False`` for one that no probe could see (keel's own bookkeeping): the
        answers in hand stay good."""
        if clears:
            self._cache.clear()
        self._deferred.append(Request(script))

    def take_deferred(self) -> list[Request]:
        """The deferred writes not sent yet (the caller sends them, first, in its next request)."""
        deferred, self._deferred = self._deferred, []
        return deferred

    def _send(self, first: list[Request], clear: bool = True,
              window: int | None = WINDOW) -> list[CommandResult]:
        deferred = self.take_deferred()
        if clear or deferred:
            self._cache.clear()  # whatever they do, older reads may be stale now
        rest = list(dict.fromkeys(map(self._predict, self.expected[self._pos:])))
        if window is not None and len(rest) <= WINDOW_ALL:
            window = None if window else 0
        upcoming: list[str] = []
        size = 0
        for script in rest:
            size += len(script)
            if (window is not None and len(upcoming) >= window) or size > MAX_BATCH_BYTES:
                break
            if script not in self._cache and script != first[-1].script:
                upcoming.append(script)
        if clear:  # behind a change: the reads expected after the changes too
            upcoming += [s for s in self._ahead if s not in upcoming and s != first[-1].script]
        # They run concurrently (they only read), after the request before them; behind a
        # change, only if it succeeded (the run stops there anyway).
        riders = [Request(f"{IF_OK if clear else ''}{BATCH} -\n", _frame(upcoming),
                          commands=0)] if upcoming else []
        results = self.conn.run_many([*deferred, *first, *riders])
        if riders and results[-1].ok:
            found = [(s, r) for s, r in _parse(results[-1].stdout) if s in upcoming]
            self._cache.update(found)
            self.prefetched += len(found)
            self.conn.stats.commands += len(found)
        return results[len(deferred):len(deferred) + len(first)]

    # --------------------------------------------------------------- trace
    def save_request(self) -> Request | None:
        """The request that leaves this run's trace on the host, if it differs from the last."""
        if not self.file or not self.trace or self.trace == self.expected:
            return None
        blob = _frame(self.trace)
        tmp = q(self.file + ".new")
        return Request(f"mkdir -p {STATE_DIR} && umask 077 && cat > {tmp} && "
                       f"mv -f {tmp} {q(self.file)}", blob, commands=0)


_VALUE = re.compile(r"[0-9a-f]{12,}")
_SHORT = 12


def _frame(scripts: Sequence[str]) -> bytes:
    """Scripts as the batch runner reads them: ``b"<len>\\n" + script`` each."""
    return b"".join(b"%d\n" % len(b) + b for b in (s.encode() for s in scripts))


def _shape(script: str) -> str:
    """A probe with its hex values (checksums, release ids, marker digests) blanked out."""
    return _VALUE.sub("#", script)


def _parse(out: bytes) -> list[tuple[str, CommandResult]]:
    """The runner's framed (script, result) pairs, in trace order (a torn tail is dropped)."""
    found: list[tuple[str, CommandResult]] = []
    pos = 0
    while pos < len(out):
        nl = out.find(b"\n", pos)
        try:
            rc, n_s, n_out, n_err = map(int, out[pos:nl].split()) if nl >= 0 else ()
        except ValueError:
            break
        a = nl + 1 + n_s
        b = a + n_out
        c = b + n_err
        if c > len(out):
            break
        found.append((out[nl + 1:a].decode(errors="replace"), CommandResult(rc, out[a:b], out[b:c])))
        pos = c
    return found
