"""Persistent SSH connections across runs, as OpenSSH's ControlPersist keeps them for Ansible.

A run with ``persist`` (``fab deploy`` and ``fab plan``; ``--no-persist`` or
``KEEL_CONTROL_PERSIST=0`` turns it off) that connected on its own leaves, per
host, a *control process* behind: a detached ``python -m keel.control`` that
makes the same SSH connection (same user, key, ``~/.ssh/config``, host-key
policy) and holds it. The next run asks it over a unix socket for a session:
the control process starts the agent on a session channel it made in advance
and relays the agent's stdio, so the run pays no TCP, key exchange,
authentication or channel round trip, nor the one sshd makes a command's
input wait: the channel's command (a shell of the login user that waits for
one line, then execs the agent command) was started ahead too. Each run still
starts its own agent (and ``sudo``); nothing privileged outlives a run.

Safety:

- The socket lives in a directory of this user's only (``$KEEL_CONTROL_DIR``,
  else ``$XDG_RUNTIME_DIR/keel-control``, else ``/tmp/keel-control-<uid>``),
  mode 0700, checked (owner, mode, not a symlink) before every use; if it is
  not so, nothing persists. The socket itself is 0600, and the control process
  serves only peers of its own uid (``SO_PEERCRED``).
- Bounded lifetime: it exits after ``persist`` seconds without a session
  (default 60, as Ansible's ControlPersist), after :data:`MAX_LIFETIME` in all,
  or as soon as its SSH connection drops, or stops being acknowledged for
  :data:`DEAD_PEER_SECONDS` (a host that crashed or left the network).
- Host keys: the connection was checked against known_hosts when it was made,
  with the run's policy; and before every session the control process checks
  the server's key again against the known_hosts files as they are *now*
  (a removed or changed entry refuses the session, as a new connection would).
- The socket's name is a digest of everything that makes the connection what
  it is (user, address, port, key, resolved ``~/.ssh/config``, known_hosts
  files, strictness): a run with other settings never shares it.
- :func:`stop_all` ends them (``fab lab.down`` does for the lab's hosts; the
  test suite for all of its own).

Not used with a sudo password (asked for and typed per run), nor by ``fab
bootstrap``, which changes how logins work and so first ends those kept to its
hosts. Like OpenSSH's, a kept connection outlives a change of sshd's settings
made by other means (sshd applies them to new logins only), for its lifetime.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Idle seconds a control process lives after its last session (Ansible's ControlPersist=60s).
DEFAULT_PERSIST = 60.0
#: Whatever the use, a control process exits after this long (new ones take over).
MAX_LIFETIME = 30 * 60.0
#: Seconds of unacknowledged keep-alives after which a kept connection counts as dead.
DEAD_PEER_SECONDS = 10.0
_FRAME = struct.Struct("!cI")  # kind (o: stdout, e: stderr, x: exit), length


class ControlRefused(Exception):
    """A control process refused a session for a reason a new connection would share."""


def persist_seconds(enabled: bool = True) -> float:
    """Idle lifetime for this run's control processes: 0 (off), or ``KEEL_CONTROL_PERSIST``."""
    if not enabled:
        return 0.0
    try:
        return max(0.0, float(os.environ.get("KEEL_CONTROL_PERSIST", DEFAULT_PERSIST)))
    except ValueError:
        return DEFAULT_PERSIST


def control_dir(create: bool = True) -> Path | None:
    """This user's socket directory (mode 0700, owned by us, not a symlink), or None."""
    uid = os.geteuid()
    configured = os.environ.get("KEEL_CONTROL_DIR")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(configured or (f"{runtime}/keel-control" if runtime else f"/tmp/keel-control-{uid}"))
    if create:
        with contextlib.suppress(FileExistsError, OSError):
            path.mkdir(mode=0o700)
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return None
    return path


def key(target: dict[str, Any]) -> str:
    """The socket name for a connection: a digest of what makes it that connection."""
    return hashlib.sha256(json.dumps(target, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ------------------------------------------------------------------ client
class MuxPipe:
    """A session's agent stdio through a control process (framed stdout and stderr)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._file = sock.makefile("rb")
        self._out = bytearray()
        self._err = bytearray()
        self._eof = False
        self.out = self  # readline/read, as a channel file offers them

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def shutdown(self) -> None:
        """The end of the agent's input (it runs what it has, then exits)."""
        self.sock.shutdown(socket.SHUT_WR)

    def _frame(self) -> bool:
        """Read one frame; False at the end of the session."""
        if self._eof:
            return False
        head = self._file.read(_FRAME.size)
        if len(head) < _FRAME.size:
            self._eof = True
            return False
        kind, size = _FRAME.unpack(head)
        data = self._file.read(size) if size else b""
        if kind == b"o":
            self._out += data
        elif kind == b"e":
            self._err += data
        else:
            self._eof = True
        return not self._eof

    def readline(self) -> bytes:
        while b"\n" not in self._out and self._frame():
            pass
        end = self._out.find(b"\n") + 1 or len(self._out)
        line = bytes(self._out[:end])
        del self._out[:end]
        return line

    def read(self, n: int) -> bytes:
        while len(self._out) < n and self._frame():
            pass
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def stderr_tail(self) -> str:
        self.sock.settimeout(1)
        with contextlib.suppress(OSError, ValueError):
            while self._frame():
                pass
        lines = self._err.decode(errors="replace").splitlines()
        return lines[-1] if lines else ""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self.sock.close()


def session(name: str, command: str, timeout: float) -> MuxPipe | None:
    """A session running ``command`` from the control process ``name``; None if there is none.

    Raises :class:`ControlRefused` when the control process refuses for a reason
    a new connection would share (the host key no longer matches known_hosts).
    """
    directory = control_dir(create=False)
    if directory is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(directory / f"{name}.sock"))
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(1)
            if not chunk:
                break
            reply += chunk
    except OSError:
        sock.close()
        return None
    if reply.startswith(b"refused "):
        sock.close()
        raise ControlRefused(reply[8:].decode(errors="replace").strip())
    if reply != b"ok\n":
        sock.close()  # gone or going: the caller connects on its own
        return None
    return MuxPipe(sock)


def spawn(name: str, params: dict[str, Any], persist: float) -> None:
    """Start a detached control process for ``params`` unless one runs (or starts) already.

    Its lock is taken here and handed to it, and its pid written beside it, before this
    returns: from then on :func:`running` and :func:`stop_all` see it, even while its
    interpreter is still starting (a ``fab bootstrap`` right after a deploy ends it too).
    """
    directory = control_dir()
    if directory is None:
        return
    try:
        lock = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "keel.control", name, str(lock)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            close_fds=True, pass_fds=(lock,), cwd="/", env=env)
        _write_meta(directory / f"{name}.json", proc.pid, params)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"params": params, "persist": persist}).encode())
        proc.stdin.close()
    except OSError:  # another one runs, or starts; or it could not start
        return
    finally:
        os.close(lock)  # the control process holds the lock from here on


def _write_meta(path: Path, pid: int, params: dict[str, Any]) -> None:
    path.write_text(json.dumps({"pid": pid, "address": params["address"],
                                "port": params["port"], "user": params["user"],
                                "name": params["name"]}))


def _locked(path: Path) -> bool:
    """Whether a control process holds (or is starting with) the lock ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def running(directory: Path | None = None) -> list[dict[str, Any]]:
    """The control processes of ``directory`` (default: this user's) that hold their lock,
    connecting or ``serving``."""
    directory = directory or control_dir(create=False)
    if directory is None or not directory.is_dir():
        return []
    found = []
    for meta in directory.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(meta.read_text())
            if _locked(meta.with_suffix(".lock")):
                found.append({**info, "serving": meta.with_suffix(".sock").exists()})
    return found


def stop_all(directory: Path | None = None, where: Callable[[dict[str, Any]], bool] | None = None,
             timeout: float = 5.0) -> int:
    """End the control processes (those ``where`` accepts, or all); return how many."""
    signaled: list[int] = []
    for info in running(directory):
        if where is not None and not where(info):
            continue
        pid = int(info["pid"])
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"keel.control" in cmdline:  # never a recycled pid's new owner
                os.kill(pid, signal.SIGTERM)
                signaled.append(pid)
    waiting, deadline = list(signaled), time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        time.sleep(0.02)
        waiting = [p for p in waiting if _alive(p)]
    return len(signaled)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------ server
class _Spare:
    """One session channel made ahead, so a session costs no round trip before the agent's.

    The channel is opened and its command started ahead too: sshd opens a session
    channel's window only once its command has started, so data sent right behind
    an exec waits a network round trip; ahead of time, that wait is paid between
    runs. The command started ahead is unprivileged: :func:`warm_command` waits
    for one line, then execs the run's agent command (``sudo`` and the agent
    start within the run; between runs only a shell of the login user waits, and
    it exits when the connection ends). A run whose command differs from the one
    waiting gets a channel of its own, started on the spot.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.command: str | None = None
        self._chan: Any = None
        self._lock = threading.Lock()

    def refill(self, command: str | None = None) -> None:
        """Make the next channel ahead, for ``command`` (default: the last one taken)."""
        self.command = command or self.command
        if self.command is not None:
            threading.Thread(target=self._open, args=(self.command,), daemon=True).start()

    def _open(self, command: str) -> None:
        with self._lock:
            if self._chan is None or self._chan.closed:
                with contextlib.suppress(Exception):
                    chan = self.transport.open_session(timeout=10)
                    try:
                        chan.exec_command(warm_command(command))
                    except Exception:
                        chan.close()  # not left open, counting against sshd's MaxSessions
                        raise
                    self._chan = chan

    def take(self, command: str) -> Any:
        """A channel running ``command`` (with its window open, if it was made ahead)."""
        with self._lock:
            chan, self._chan = self._chan, None
        if chan is not None and not chan.closed and command == self.command:
            chan.sendall(b"go\n")
        else:
            if chan is not None:
                chan.close()
            from keel.connection import exec_nowait

            chan = self.transport.open_session(timeout=10)
            exec_nowait(chan, command)
        self.command = command  # the next one is made when this session ends (not during it)
        return chan


def warm_command(command: str) -> str:
    """``command``, started once a line arrives on its stdin (or never, on EOF).

    >>> warm_command("sudo -n true")
    "sh -c 'IFS= read -r go || exit 0; exec sudo -n true'"
    """
    return "sh -c " + shlex.quote(f"IFS= read -r go || exit 0; exec {command}")


class _Server:
    def __init__(self, directory: Path, name: str, params: dict[str, Any], persist: float) -> None:
        self.directory, self.name, self.params, self.persist = directory, name, params, persist
        self.path = directory / f"{name}.sock"
        self.active = 0
        self.idle_since = time.monotonic()
        self.started = time.monotonic()
        self.mutex = threading.Lock()

    def run(self) -> None:
        from keel.connection import _connect_from_params

        self.spec, self.conn = _connect_from_params(self.params)
        self.transport = self.conn.client.get_transport()
        # A host that vanished (crashed, cut off) without closing TCP: the keep-alives go
        # unacknowledged, the kernel gives up after TCP_USER_TIMEOUT, the transport ends and
        # so does this process, so that a later run connects anew rather than waiting on a
        # dead connection. (Through a ProxyJump the socket is a channel: no such option.)
        self.transport.set_keepalive(5)
        with contextlib.suppress(OSError, AttributeError):
            self.transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                                           int(DEAD_PEER_SECONDS * 1000))
        self.spare = _Spare(self.transport)
        if self.params.get("command"):
            self.spare.refill(str(self.params["command"]))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = self.directory / f"{self.name}.{os.getpid()}.tmp"
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(tmp))
        finally:
            os.umask(old_umask)
        listener.listen(16)
        os.replace(tmp, self.path)
        inode = self.path.stat().st_ino
        listener.settimeout(0.5)
        try:
            while self._alive():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._session, args=(client,), daemon=True).start()
        finally:
            with contextlib.suppress(OSError):
                if self.path.stat().st_ino == inode:  # not a successor's socket
                    self.path.unlink()
            listener.close()
            self.conn.close()

    def _alive(self) -> bool:
        now = time.monotonic()
        if not self.transport.is_active():
            return False
        with self.mutex:
            idle = self.active == 0
            return not idle or (now - self.idle_since < self.persist
                                and now - self.started < MAX_LIFETIME)

    def _host_key_problem(self) -> str | None:
        """The server's key against the known_hosts files as they are now (see the module doc)."""
        import paramiko

        from keel.connection import known_hosts_files, strict_host_keys

        keys = paramiko.HostKeys()
        for path in known_hosts_files(self.spec):
            with contextlib.suppress(OSError, paramiko.SSHException):
                keys.load(path)
        server = self.transport.get_remote_server_key()
        port = self.conn.port
        hostname = self.conn.host if port == 22 else f"[{self.conn.host}]:{port}"
        known = keys.lookup(hostname)
        if known is None:
            if strict_host_keys(self.spec):
                return f"unknown host key: Server {hostname!r} not found in known_hosts"
            return None
        if known.get(server.get_name()) != server:
            return f"host key mismatch for {hostname}: refusing to connect"
        return None

    def _session(self, client: socket.socket) -> None:
        with self.mutex:
            self.active += 1
        try:
            self._relay(client)
        except Exception:  # one session's trouble never ends the others
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()
            with self.mutex:
                self.active -= 1
                self.idle_since = time.monotonic()
            self.spare.refill()

    def _relay(self, client: socket.socket) -> None:
        creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.geteuid():
            return
        reader = client.makefile("rb")
        request = json.loads(reader.readline(1 << 20))
        problem = self._host_key_problem()
        if problem:
            client.sendall(b"refused " + problem.encode() + b"\n")
            self.persist = 0  # never serve this connection again
            return
        chan = self.spare.take(str(request["command"]))
        client.sendall(b"ok\n")
        send_lock = threading.Lock()

        def down(kind: bytes, recv: Any) -> None:
            while True:
                data = recv(65536)
                if not data:
                    return
                with send_lock:
                    client.sendall(_FRAME.pack(kind, len(data)) + data)

        err = threading.Thread(target=down, args=(b"e", chan.recv_stderr), daemon=True)
        err.start()

        def up() -> None:
            with contextlib.suppress(Exception):
                while True:
                    data = reader.read1(65536)
                    if not data:
                        break
                    chan.sendall(data)
                chan.shutdown_write()  # the run ended: EOF to the agent, which then exits

        threading.Thread(target=up, daemon=True).start()
        try:
            down(b"o", chan.recv)
            err.join()
            with send_lock:
                client.sendall(_FRAME.pack(b"x", 0))
        finally:
            # A run that vanished leaves its agent as a dropped connection would: EOF, exit.
            chan.close()


def _serve(name: str, lock: int) -> None:
    """Serve as control process ``name``, holding the fd ``lock`` (:func:`spawn` took it)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = json.loads(sys.stdin.read())
    directory = control_dir()
    if directory is None:
        return
    os.umask(0o077)
    params = config["params"]
    meta = directory / f"{name}.json"  # written by spawn, before this process started
    try:
        _Server(directory, name, params, float(config["persist"])).run()
    finally:
        meta.unlink(missing_ok=True)  # ours: we hold the lock


if __name__ == "__main__":
    try:
        _serve(sys.argv[1], int(sys.argv[2]))
    except Exception as exc:  # detached: the reason goes where the next look finds it
        with contextlib.suppress(OSError):
            log = (control_dir(create=False) or Path("/nonexistent")) / f"{sys.argv[1]}.log"
            log.write_text(f"{time.strftime('%FT%TZ', time.gmtime())} {type(exc).__name__}: {exc}\n")
