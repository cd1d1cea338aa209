"""Long-running commands on many hosts at once, read line by line (``fab logs --follow``).

The agent of :mod:`keel.connection` answers one request at a time, and a stream
such as ``journalctl --follow`` never ends, so each stream gets its own exec
channel on the host's SSH transport. The command runs as root (sudo, as the
agent does) under a small watchdog that ends it, with its whole process
group, as soon as the channel's stdin closes: when the controller stops
(Ctrl-C, a crash) or the connection drops, nothing is left running on the host,
even a command that had nothing more to write.

Lines from all hosts are handed, one at a time, to ``on_line(host, line)``
(stderr is merged in: an error from the remote command reads like any other line).

Example::

    status = stream(hosts, lambda spec: "journalctl --follow -u nginx",
                    lambda host, line: print(host, line), login=lambda spec: "deploy")
    # {"web1": 0, "web2": HostError("web2: unreachable at 10.0.0.6:22: ...")}
"""

from __future__ import annotations

import base64
import contextlib
import shlex
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import paramiko

from keel.connection import Connection
from keel.errors import HostError, KeelError
from keel.inventory import HostSpec

# Runs the command in its own session; ends it (the whole group) when stdin closes.
_WATCHDOG = r"""
import os, signal, subprocess, sys, threading
p = subprocess.Popen(["/bin/sh", "-c", sys.argv[1]], stdin=subprocess.DEVNULL, start_new_session=True)
def watch():
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
threading.Thread(target=watch, daemon=True).start()
sys.exit(p.wait() & 255)
"""


def remote_command(command: str, user: str | None, sudo_password: str | None = None) -> str:
    """The command line run on the stream's channel: sudo, the watchdog, then ``command``.

    >>> remote_command("journalctl -f", "root").startswith("python3 -c ")
    True
    """
    code = base64.b64encode(_WATCHDOG.encode()).decode()
    line = f"python3 -c \"import base64;exec(base64.b64decode('{code}'))\" {shlex.quote(command)}"
    if user == "root":
        return line
    sudo = "sudo -S -p '' -H" if sudo_password is not None else "sudo -n -H"
    return f"{sudo} -- {line}"


@dataclass
class _Stream:
    name: str
    conn: Connection
    chan: paramiko.Channel

    def end(self) -> None:
        """Close the command's stdin: the watchdog ends the command on the host."""
        with contextlib.suppress(Exception):
            self.chan.shutdown_write()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.chan.close()
        with contextlib.suppress(Exception):
            self.conn.close()


def stream(
    hosts: Sequence[HostSpec],
    command: Callable[[HostSpec], str],
    on_line: Callable[[str, str], None],
    *,
    login: Callable[[HostSpec], str | None] | None = None,
    sudo_password: str | None = None,
    parallel: int = 10,
    on_error: Callable[[KeelError], None] | None = None,
) -> dict[str, int | KeelError]:
    """Run ``command(spec)`` on every host and pass each output line to ``on_line``.

    Each host's lines flow as soon as its stream has started, whatever the
    other hosts are doing. Returns when every command has ended: host name ->
    exit status, or the error that kept the stream from starting (also passed
    to ``on_error`` at once, so the other hosts' lines keep coming). On Ctrl-C
    every started stream is ended (remote commands included) before
    ``KeyboardInterrupt`` propagates, without waiting for hosts still
    connecting: each of those ends its own stream as soon as it has one.
    """
    lock = threading.Lock()  # one on_line / on_error call at a time
    registry = threading.Lock()  # guards streams, readers and the end of the run
    ended = threading.Event()
    streams: list[_Stream] = []
    readers: list[threading.Thread] = []
    status: dict[str, int | KeelError] = {}

    def fail(name: str, exc: KeelError) -> None:
        status[name] = exc
        if on_error is not None and not ended.is_set():  # after Ctrl-C, nobody is listening
            with lock:
                on_error(exc)

    def read(s: _Stream) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            for raw in s.chan.makefile("rb"):
                line = raw.decode(errors="replace").rstrip("\r\n")
                with lock:
                    on_line(s.name, line)
        # The exit status follows the end of output; a channel closed by us has none.
        status[s.name] = s.chan.exit_status if s.chan.status_event.wait(5) else -1

    def start(spec: HostSpec) -> None:
        if ended.is_set():
            return
        try:
            user = login(spec) if login else None
            conn = Connection.open(spec, sudo_password=sudo_password, user=user)
        except KeelError as exc:
            fail(spec.name, exc)
            return
        try:
            transport = conn.fabric.client.get_transport()
            assert transport is not None
            chan = transport.open_session()
            chan.set_combine_stderr(True)
            chan.exec_command(remote_command(command(spec), conn.fabric.user, sudo_password))
            if sudo_password is not None and conn.fabric.user != "root":
                chan.sendall(sudo_password.encode() + b"\n")
        except (OSError, paramiko.SSHException) as exc:
            conn.close()
            fail(spec.name, HostError(spec.name, f"cannot start the stream: {exc}"))
            return
        s = _Stream(spec.name, conn, chan)
        reader = threading.Thread(target=read, args=(s,), name=f"stream-{s.name}", daemon=True)
        with registry:
            late = ended.is_set()
            if not late:
                streams.append(s)
                readers.append(reader)
        if late:  # the run ended (Ctrl-C) while this host was connecting
            s.end()
            s.close()
        else:
            reader.start()

    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts))))
    try:
        starting = [pool.submit(start, spec) for spec in hosts]
        # Short waits: the main thread notices Ctrl-C at once even when the
        # kernel hands SIGINT to another thread (paramiko's, a reader).
        while wait(starting, timeout=0.2).not_done:
            pass
        for future in starting:
            future.result()  # an unexpected error in start() is raised here
        for reader in readers:  # each started before its start() returned
            while reader.is_alive():
                reader.join(0.2)
    finally:
        with registry:
            ended.set()
            started = list(streams)
        # Never wait for a host still connecting (up to its SSH timeouts).
        pool.shutdown(wait=False, cancel_futures=True)
        for s in started:  # every remote command first, then the local side
            s.end()
        for s in started:
            s.close()
    return {spec.name: status.get(spec.name, -1) for spec in hosts}
