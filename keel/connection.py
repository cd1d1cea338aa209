"""How a host is reached: one SSH connection and one privileged shell per run.

``Connection.open`` makes one Fabric connection (so ``~/.ssh/config``,
ProxyJump and IdentityFile work as Fabric users expect), sets TCP_NODELAY on
its socket, and starts a small *agent* under ``sudo`` on one exec channel.
Every later command is a framed request to that agent: one round trip, no new
channel, no new sudo. Nagle's algorithm meeting delayed ACK costs ~40 ms per
exchange on an open connection; TCP_NODELAY removes that.

Wire format, both directions over the agent's stdin/stdout::

    request:  b"<len(script)> <len(stdin)>\\n" + script + stdin
    reply:    b"<rc> <len(stdout)> <len(stderr)>\\n" + stdout + stderr

The agent's start costs no round trip of its own: its exec request goes out
without waiting for sshd's reply, and the first request follows it
(``ready=False``; sshd handles a channel's messages in order, so the request
reaches the agent's stdin). On a new connection the request still waits one
round trip, since sshd opens a session channel's window only once its command
has started; with ``persist``, the SSH connection comes from a control process
kept from an earlier run, which made the channel ahead (see :mod:`keel.control`),
so the whole no-change run waits one round trip. The agent answers the requests
it already holds in one write (sshd leaves Nagle's algorithm on for an exec
session: a second small write would wait for an acknowledgement).

Example::

    conn = Connection.open(spec)
    res = conn.run("cat /etc/os-release")
    assert res.rc == 0
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os.path
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import paramiko
from fabric import Config
from fabric import Connection as FabricConnection

from keel import control
from keel.errors import HostError, UnreachableError
from keel.inventory import HostSpec

READY = b"KEEL-AGENT-READY\n"
#: A request ``BATCH + " <file>"`` makes the python agent run the read-only scripts
#: stored in ``<file>``, or in the request's stdin for ``-``, (each
#: ``b"<len>\\n" + script``) concurrently, replying with
#: ``b"<rc> <len(script)> <len(stdout)> <len(stderr)>\\n" + script + stdout + stderr``
#: for each, in order (see keel.prefetch). To the sh agent it is a comment: no output.
BATCH = "#keel-batch"
#: A script that starts with this line runs only if the last request without it
#: exited 0; else the python agent answers ``SKIPPED`` (exit 125) without running
#: it. To the sh agent it is a comment: the script runs anyway (the same answer,
#: later). For reads riding behind a change: they need not wait for a failed one.
IF_OK = "#keel-if-ok\n"
SKIPPED = b"keel agent: skipped, the request before it failed\n"
# The agent prefers python3 (one process per request) and falls back to POSIX sh
# (a handful of forks per request) on hosts without it. Neither writes to disk
# except the sh fallback's scratch files in /dev/shm, removed on exit. The python
# agent imports nothing but os, select and sys (subprocess and threading would
# cost every run ~20 ms of the host's CPU before the first request): it starts
# each script with posix_spawn, restoring SIGPIPE and SIGXFSZ as subprocess does,
# and feeds and drains every pipe from one poll loop, so a batch needs no threads.
_AGENT_PY = r"""
import os, select, sys
SKIPPED = b"keel agent: skipped, the request before it failed\n"
env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
       "DEBIAN_FRONTEND": "noninteractive", "HOME": os.environ.get("HOME", "/root"),
       "KEEL_PYTHON_VERSION": sys.version.split()[0], "KEEL_ARCH": os.uname().machine,
       "KEEL_CPU_COUNT": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1)}
os.chdir("/")
buf, replies, stdin = bytearray(), [], select.poll()
stdin.register(0, select.POLLIN)
def flush():
    data = memoryview(b"".join(replies)); replies.clear()
    while data:
        data = data[os.write(1, data):]
def more():
    # Replies wait while the next request is already here, then leave in one write: sshd
    # does not set TCP_NODELAY for an exec session, so a small reply written right after
    # another would wait for the network to acknowledge the first (a round trip).
    if not stdin.poll(0):
        flush()
    c = os.read(0, 65536)
    if not c:
        try:
            flush()
        except OSError:  # nobody reads any more: the run is over
            pass
        sys.exit(0)
    buf.extend(c)
def rd(n):
    while len(buf) < n:
        more()
    b = bytes(buf[:n]); del buf[:n]
    return b
def line():
    while b"\n" not in buf:
        more()
    return rd(buf.index(b"\n") + 1)
def spawn(s, fds):
    argv = ["sh", "-c", s]
    if hasattr(os, "posix_spawn"):
        return os.posix_spawn("/bin/sh", argv, env, setsigdef=(13, 25), file_actions=[
            (os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(fds)])
    import signal
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(13, signal.SIG_DFL); signal.signal(25, signal.SIG_DFL)
            for n, fd in enumerate(fds):
                os.dup2(fd, n)
            os.execve("/bin/sh", argv, env)
        finally:
            os._exit(127)
    return pid
def run(jobs, limit):
    # jobs: [(script, stdin)]; at most limit at once; [(rc, stdout, stderr) or None if not started]
    res, todo, ends, live, poll = [None] * len(jobs), list(range(len(jobs)))[::-1], {}, 0, select.poll()
    while todo or ends:
        while todo and live < limit:
            j = todo.pop(); s, d = jobs[j]; p = [os.pipe() for _ in range(3)]
            try:
                pid = spawn(s, (p[0][0], p[1][1], p[2][1]))
            except OSError:
                for fd in sum(p, ()):
                    os.close(fd)
                continue
            for fd in (p[0][0], p[1][1], p[2][1]):
                os.close(fd)
            job = {"j": j, "pid": pid, "open": 2, 1: [], 2: [], "in": memoryview(d)}
            live += 1
            for n in (1, 2):
                ends[p[n][0]] = (job, n); poll.register(p[n][0], select.POLLIN)
            if d:
                os.set_blocking(p[0][1], False); ends[p[0][1]] = (job, 0)
                poll.register(p[0][1], select.POLLOUT)
            else:
                os.close(p[0][1])
        for fd, ev in poll.poll():
            job, n = ends[fd]
            if n == 0:
                try:
                    job["in"] = job["in"][os.write(fd, job["in"][:65536]):]
                except BlockingIOError:
                    continue
                except OSError:
                    job["in"] = b""
                if not job["in"]:
                    poll.unregister(fd); os.close(fd); del ends[fd]
                continue
            b = os.read(fd, 65536)
            if b:
                job[n].append(b)
                continue
            poll.unregister(fd); os.close(fd); del ends[fd]; job["open"] -= 1
            if not job["open"]:
                st = os.waitpid(job["pid"], 0)[1]; live -= 1
                rc = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
                res[job["j"]] = (rc, b"".join(job[1]), b"".join(job[2]))
    return res
def batch(path, d):
    try:
        data = d if path == "-" else open(path, "rb").read()
    except OSError:
        return b""
    scripts, k = [], 0
    while k < len(data):
        nl = data.index(b"\n", k); n = int(data[k:nl]); scripts.append(data[nl + 1:nl + 1 + n])
        k = nl + 1 + n
    # Left out when it could not start: the controller sends it again on its own.
    return b"".join(b"%d %d %d %d\n" % (r[0], len(s), len(r[1]), len(r[2])) + s + r[1] + r[2]
                    for s, r in zip(scripts, run([(s, b"") for s in scripts], 2 * (os.cpu_count() or 1)))
                    if r)
replies.append(b"KEEL-AGENT-READY\n")
last = 0
while True:
    n, m = map(int, line().split())
    s = rd(n); d = rd(m)
    flagged = s.startswith(b"#keel-if-ok\n")
    if flagged and last:
        replies.append(b"125 0 %d\n" % len(SKIPPED) + SKIPPED)
        continue
    if flagged:
        s = s[12:]
    if s.startswith(b"#keel-batch "):
        out = batch(s[12:].split(b"\n")[0].decode(), d)
        replies.append(b"0 %d 0\n" % len(out) + out)
    else:
        r = run([(s, d)], 1)[0] or (127, b"", b"keel agent: cannot start /bin/sh\n")
        replies.append(b"%d %d %d\n" % (r[0], len(r[1]), len(r[2])) + r[1] + r[2])
        if not flagged:
            last = r[0]
"""
_AGENT_SH = r"""
T=$(mktemp -d /dev/shm/keel.XXXXXX 2>/dev/null || mktemp -d) || exit 1
trap 'rm -rf "$T"' EXIT
export LC_ALL=C DEBIAN_FRONTEND=noninteractive
cd /
printf 'KEEL-AGENT-READY\n'
while read -r n m; do
  head -c "$n" > "$T/s"; head -c "$m" > "$T/i"
  sh "$T/s" < "$T/i" > "$T/o" 2> "$T/e"; rc=$?
  printf '%s %s %s\n' "$rc" "$(wc -c < "$T/o")" "$(wc -c < "$T/e")"
  cat "$T/o" "$T/e"
done
"""
CONNECT_TIMEOUT = 10
# paramiko logs some connection failures with a traceback; ours are one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False
SUDO_PROMPT = "KEEL-SUDO-PASSWORD:"


@dataclass
class CommandResult:
    """What one request to the agent returned."""

    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True)
class Request:
    """One script for the agent: what it reads on stdin, and how many commands it counts as."""

    script: str
    stdin: bytes = b""
    commands: int = 1


@dataclass
class Stats:
    """Per-host counters shown under ``--stats``."""

    round_trips: int = 0
    commands: int = 0
    connect_seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def agent_command(user: str | None, sudo_password: str | None) -> str:
    """The one command line run on the exec channel."""
    py = base64.b64encode(_AGENT_PY.encode()).decode()
    sh = shlex.quote(_AGENT_SH)
    # umask 022 whatever the host's login umask (pam_umask reads UMASK 027 of a
    # hardened login.defs, and sudo keeps it): the files and venvs the agent makes
    # are given their modes explicitly or must be readable by the apps' users.
    inner = (
        "umask 022; "
        f"if command -v python3 >/dev/null 2>&1; then "
        f"exec python3 -I -S -c \"import base64;exec(base64.b64decode('{py}'))\"; "
        f"else exec sh -c {sh}; fi"
    )
    if user == "root":
        return f"sh -c {shlex.quote(inner)}"
    sudo = f"sudo -S -p {SUDO_PROMPT} -H" if sudo_password is not None else "sudo -n -H"
    return f"{sudo} -- sh -c {shlex.quote(inner)}"


class _ChannelPipe:
    """The agent's stdio on an exec channel of this process's own SSH connection."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.out = chan.makefile("rb")
        self._err = chan.makefile_stderr("rb")

    def send(self, data: bytes) -> None:
        self.chan.sendall(data)

    def settimeout(self, seconds: float | None) -> None:
        self.chan.settimeout(seconds)

    def stderr_tail(self) -> str:
        """The last line the agent's side wrote to stderr (waits at most a second)."""
        self.chan.settimeout(1)
        try:
            return self._err.read().decode(errors="replace").splitlines()[-1:][0]
        except (TimeoutError, IndexError):
            return ""

    def close(self) -> None:
        self.chan.close()


class Connection:
    """One host's SSH connection and privileged agent. Not thread-safe: one per host.

    ``fabric`` is the Fabric connection (``~/.ssh/config`` resolved); it is not
    open when the SSH connection is a control process's (``persist``).
    """

    def __init__(self, spec: HostSpec, fabric_conn: FabricConnection,
                 pipe: _ChannelPipe | control.MuxPipe) -> None:
        self.spec = spec
        self.fabric = fabric_conn
        self._pipe = pipe
        self._chan = pipe.chan if isinstance(pipe, _ChannelPipe) else None
        self._starting = True  # the agent's READY line is still to be read
        self.stats = Stats()
        #: (control key, seconds, agent command) to leave behind for the next run.
        self._spawn: tuple[str, float, str] | None = None

    # ---------------------------------------------------------------- open
    @classmethod
    def open(
        cls,
        spec: HostSpec,
        sudo_password: str | None = None,
        user: str | None = None,
        *,
        ready: bool = True,
        persist: float = 0.0,
    ) -> Connection:
        """Connect, authenticate and start the agent; raise a one-line error.

        ``ready=False`` returns without waiting for the agent: its start is then
        paid in the first request's round trip (and its failure raised there).
        ``persist`` > 0 takes the SSH connection from this host's control process
        if one is running, and else leaves one behind at :meth:`close` that keeps
        the connection ``persist`` idle seconds for the next run (not with a sudo
        password: that is asked for, and typed, per run).
        """
        t0 = time.monotonic()
        user = user or spec.user
        conn = _fabric_connection(spec, user)
        command = agent_command(conn.user, sudo_password)
        persist = persist if sudo_password is None else 0.0
        key = control.key(_control_target(spec, conn)) if persist > 0 else None
        self = None
        if key is not None:
            try:
                mux = control.session(key, command, CONNECT_TIMEOUT)
            except control.ControlRefused as exc:
                raise UnreachableError(spec.name, str(exc)) from None
            if mux is not None:
                self = cls(spec, conn, mux)
        if self is None:
            self = cls(spec, conn, _ChannelPipe(_open_channel(spec, conn, command)))
            if key is not None:
                self._spawn = (key, persist, command)
            if sudo_password is not None and conn.user != "root":
                self._pipe.send(sudo_password.encode() + b"\n")
                self._await_sudo()
        if ready or sudo_password is not None:
            self._await_ready()
        self.stats.connect_seconds = time.monotonic() - t0
        return self

    def _await_sudo(self) -> None:
        """Fail at once on a wrong password, instead of waiting for sudo's retries."""
        chan, err = self._chan, b""
        assert chan is not None
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while time.monotonic() < deadline and not chan.recv_ready() and not chan.closed:
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(4096)
                if b"Sorry" in err or err.count(SUDO_PROMPT.encode()) > 1:
                    self.close()
                    raise HostError(self.spec.name, "sudo failed: wrong or missing sudo password")
            if chan.exit_status_ready():
                break
            time.sleep(0.002)

    def _await_ready(self) -> None:
        self._starting = False
        self._pipe.settimeout(CONNECT_TIMEOUT)
        try:
            line = self._pipe.out.readline()
        except (TimeoutError, OSError, EOFError, paramiko.SSHException):
            line = b""
        if line != READY:
            err = self._pipe.stderr_tail().strip()
            self._spawn = None  # nothing to keep for a host that will not run us
            self.close()
            if "password" in err.lower() or "sorry" in err.lower():
                raise HostError(self.spec.name, "sudo failed: wrong or missing sudo password")
            raise HostError(self.spec.name, f"cannot start a privileged shell: {err or 'no reply'}")
        self._pipe.settimeout(None)

    # ----------------------------------------------------------------- run
    def run(self, script: str, stdin: bytes = b"", commands: int = 1) -> CommandResult:
        """Run ``script`` with ``sh -c`` as root; one round trip."""
        return self.run_many([Request(script, stdin, commands)])[0]

    def run_many(self, requests: Sequence[Request]) -> list[CommandResult]:
        """Run several scripts one after another on the host, in one round trip.

        The requests are pipelined: all are sent at once and the agent, which
        reads its stdin one request at a time, runs each only after the one
        before it has finished, so they see each other's effects exactly as if
        sent one by one. Each gets its own result.
        """
        wire = b"".join(b"%d %d\n" % (len(body), len(r.stdin)) + body + r.stdin
                        for r in requests for body in (r.script.encode(),))
        results = []
        out = self._pipe.out
        try:
            try:
                self._pipe.send(wire)
            except (OSError, paramiko.SSHException):
                if not self._starting:
                    raise
                self._await_ready()  # an agent that never started: its reason, not ours
                raise
            if self._starting:  # the agent starts while the request travels
                self._await_ready()
            for _ in requests:
                header = out.readline()
                if not header:
                    raise EOFError
                rc, n_out, n_err = map(int, header.split())
                stdout = out.read(n_out) if n_out else b""
                stderr = out.read(n_err) if n_err else b""
                results.append(CommandResult(rc, stdout, stderr))
                self.stats.bytes_received += len(stdout) + len(stderr)
        except (OSError, EOFError, ValueError, paramiko.SSHException):
            raise UnreachableError(self.spec.name, "connection lost during a command") from None
        self.stats.round_trips += 1
        self.stats.commands += sum(r.commands for r in requests)
        self.stats.bytes_sent += len(wire)
        return results

    def finish(self, requests: Sequence[Request]) -> None:
        """Send the run's last requests, whose results nobody reads, then :meth:`close`.

        Through a control process the run does not wait for them: that process
        keeps the session until the agent has read them, run them and seen the
        end of its input. On a connection of its own the run waits (closing it at
        once could drop them on the way).
        """
        if isinstance(self._pipe, control.MuxPipe) and not self._starting:
            wire = b"".join(b"%d %d\n" % (len(body), len(r.stdin)) + body + r.stdin
                            for r in requests for body in (r.script.encode(),))
            try:
                self._pipe.send(wire)
                self._pipe.shutdown()
            except OSError:
                raise UnreachableError(self.spec.name, "connection lost during a command") from None
            self.stats.round_trips += 1
            self.stats.commands += sum(r.commands for r in requests)
            self.stats.bytes_sent += len(wire)
        elif requests:
            self.run_many(requests)
        self.close()

    def close(self) -> None:
        try:
            self._pipe.close()
        finally:
            self.fabric.close()
            if self._spawn is not None:
                # Only after a run that got this far: a host that refused us gets none.
                key, persist, command = self._spawn
                # The agent command too: the next run's channel is made with it, ahead.
                control.spawn(key, {**_control_params(self.spec, self.fabric.user),
                                    "command": command}, persist)
                self._spawn = None


def _open_channel(spec: HostSpec, conn: FabricConnection, command: str) -> paramiko.Channel:
    """Open ``conn``, then a session channel running ``command``; one-line errors."""
    transport = _open(spec, conn)
    chan = transport.open_session(timeout=CONNECT_TIMEOUT)
    exec_nowait(chan, command)
    return chan


def _open(spec: HostSpec, conn: FabricConnection) -> paramiko.Transport:
    """Connect and authenticate ``conn`` (TCP_NODELAY); errors as one line naming the host."""
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise UnreachableError(
            spec.name, f"host key mismatch for {exc.hostname}: refusing to connect"
        ) from None
    except paramiko.SSHException as exc:
        if isinstance(exc, paramiko.AuthenticationException) or "auth" in str(exc).lower():
            key = spec.key_file or "default keys"
            raise UnreachableError(
                spec.name,
                f"authentication failed for {conn.user}@{spec.address} ({key})",
            ) from None
        if "not found in known_hosts" in str(exc):
            raise UnreachableError(spec.name, f"unknown host key: {exc}") from None
        raise UnreachableError(spec.name, f"ssh error: {exc}") from None
    except (OSError, EOFError) as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UnreachableError(
            spec.name, f"unreachable at {spec.address}:{spec.port or 22}: {reason}"
        ) from None
    transport = conn.client.get_transport()
    assert transport is not None
    sock = transport.sock
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return transport


def exec_nowait(chan: paramiko.Channel, command: str) -> None:
    """``chan.exec_command(command)`` without waiting for the server's reply.

    What is sent on the channel next reaches the command's stdin: sshd handles
    a channel's messages in order, and starts the command on the request. A
    refusal closes the channel, which the reader of its output sees as EOF.
    Mirrors paramiko's ``Channel.exec_command`` (paramiko has no public way).
    """
    m = paramiko.Message()
    m.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("exec")
    m.add_boolean(True)
    m.add_string(command)
    chan.transport._send_user_message(m)


def _fabric_connection(spec: HostSpec, user: str | None) -> FabricConnection:
    """A Fabric connection honouring ~/.ssh/config plus the inventory's settings (not opened)."""
    connect_kwargs: dict[str, object] = {}
    if spec.key_file:
        connect_kwargs["key_filename"] = [spec.key_file]
    conn = FabricConnection(
        host=spec.address,
        user=user,
        port=spec.port,
        connect_timeout=CONNECT_TIMEOUT,
        connect_kwargs=connect_kwargs,
        config=Config(),
    )
    keys = conn.client.get_host_keys()
    for path in known_hosts_files(spec):
        with contextlib.suppress(OSError, paramiko.SSHException):
            keys.load(path)
    if strict_host_keys(spec):
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        # accept-new: trust a first-seen key for this run; a *changed* key is
        # still refused, because paramiko checks loaded known_hosts first.
        conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    return conn


def known_hosts_files(spec: HostSpec) -> list[str]:
    """The known_hosts files a connection to ``spec`` checks the host key against."""
    common = _parse_ssh_args(str(spec.vars.get("ansible_ssh_common_args", "")))
    return [_expand(p) for p in ("~/.ssh/known_hosts", common.get("userknownhostsfile")) if p]


def strict_host_keys(spec: HostSpec) -> bool:
    """StrictHostKeyChecking=yes: an unknown host key is refused (default: accept-new)."""
    common = _parse_ssh_args(str(spec.vars.get("ansible_ssh_common_args", "")))
    return common.get("stricthostkeychecking", "accept-new").lower() in ("yes", "true")


def _control_params(spec: HostSpec, user: str | None) -> dict[str, object]:
    """What a control process needs to make the same connection (no other vars: no secrets)."""
    return {"name": spec.name, "address": spec.address, "port": spec.port, "user": user,
            "key_file": spec.key_file,
            "common_args": str(spec.vars.get("ansible_ssh_common_args", ""))}


def _control_target(spec: HostSpec, conn: FabricConnection) -> dict[str, object]:
    """Everything that makes two connections the same one (as resolved by ~/.ssh/config)."""
    return {**_control_params(spec, conn.user), "host": conn.host, "resolved_port": conn.port,
            "gateway": repr(conn.gateway), "key_filename": conn.connect_kwargs.get("key_filename"),
            "known_hosts": known_hosts_files(spec), "strict": strict_host_keys(spec)}


def _connect_from_params(params: dict[str, object]) -> tuple[HostSpec, FabricConnection]:
    """The control process's side of :func:`_control_params`: the same, opened."""
    common = str(params["common_args"])
    spec = HostSpec(name=str(params["name"]), address=str(params["address"]),
                    user=params["user"], port=params["port"],  # type: ignore[arg-type]
                    key_file=params["key_file"], groups=(),  # type: ignore[arg-type]
                    vars={"ansible_ssh_common_args": common} if common else {})
    conn = _fabric_connection(spec, spec.user)
    _open(spec, conn)
    return spec, conn


def _parse_ssh_args(args: str) -> dict[str, str]:
    """Pick ``-o Key=Value`` options out of ``ansible_ssh_common_args``."""
    opts: dict[str, str] = {}
    words = shlex.split(args)
    for i, word in enumerate(words):
        opt = words[i + 1] if word == "-o" and i + 1 < len(words) else None
        if word.startswith("-o") and len(word) > 2:
            opt = word[2:]
        if opt and "=" in opt:
            k, v = opt.split("=", 1)
            opts[k.strip().lower()] = v.strip()
    return opts


def _expand(path: str) -> str:
    return os.path.expanduser(path)
