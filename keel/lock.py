"""A run lock per host, held for as long as the run's agent lives.

The lock is a ``flock`` on ``/var/lib/keel/run.lock``, kept by a small process
that exits when the agent does (``tail --pid``): a run killed at any point, or
whose connection drops, releases the lock as soon as the command it was running
ends (the agent lets it finish rather than cut apt or a reload in half), and
the note it left behind is reported by the next run as a stale lock.

Example::

    acquire(conn, "deploy")   # raises HostError if another run holds it
    ...
    release(conn)
"""

from __future__ import annotations

import getpass
import os
import socket
import time

from keel.connection import CommandResult, Connection, Request
from keel.errors import HostError
from keel.facts import STATE_DIR
from keel.operation import q

LOCK = f"{STATE_DIR}/run.lock"
NOTE = f"{LOCK}.note"
HOLDER = f"{LOCK}.pid"


def note(play: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return (f"{play} by {getpass.getuser()}@{socket.gethostname()} "
            f"(pid {os.getpid()}) since {stamp}")


def acquire(conn: Connection, play: str) -> str | None:
    """Take the lock or raise; return the note of a stale lock found, if any."""
    return acquired(conn.spec.name, conn.run(acquire_script(play)))


def acquire_script(play: str) -> str:
    """The script that takes the lock (to send in a batch; :func:`acquired` reads its result)."""
    return f"""
mkdir -p {STATE_DIR}
exec 9>>{LOCK}
# A run that has just ended may still be letting go (its release is not waited for).
if ! flock -w 2 9; then echo busy; cat {NOTE} 2>/dev/null; exit 0; fi
prev=$(cat {NOTE} 2>/dev/null)
printf '%s\\n' {q(note(play))} > {NOTE}
# Keep the lock after this script ends, for exactly as long as the agent lives.
tail --pid=$PPID -f /dev/null </dev/null >/dev/null 2>&1 &
echo $! > {HOLDER}
echo acquired
[ -z "$prev" ] || echo "$prev"
"""


def acquired(host: str, res: CommandResult) -> str | None:
    """Raise if :func:`acquire_script` found the lock held; else the stale note, if any."""
    lines = res.out.splitlines()
    if not res.ok or not lines:
        raise HostError(host, f"cannot take the run lock: {res.err.strip()}")
    if lines[0] == "busy":
        holder = lines[1] if len(lines) > 1 else "another run"
        raise HostError(host, f"another run holds the lock: {holder}")
    return lines[1] if len(lines) > 1 else None


def release(conn: Connection) -> None:
    """Drop the lock and the note: the run finished (well or not, but cleanly)."""
    conn.run_many([release_request()])


def release_request() -> Request:
    return Request(f"rm -f {NOTE}; kill $(cat {HOLDER} 2>/dev/null) 2>/dev/null; rm -f {HOLDER}; true")
