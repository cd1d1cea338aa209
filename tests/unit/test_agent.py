"""The python agent (keel.connection._AGENT_PY), run as a program on this machine.

Its wire protocol is the one a host speaks over the SSH channel: a READY line,
then per request ``b"<len(script)> <len(stdin)>\\n" + script + stdin`` answered by
``b"<rc> <len(stdout)> <len(stderr)>\\n" + stdout + stderr``. Each case runs with
``posix_spawn`` and with the fork fallback used on a python3 without it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.connection import _AGENT_PY, BATCH, IF_OK, READY, SKIPPED
from keel.facts import FACTS_SCRIPT, Facts


class Agent:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdout is not None and proc.stdout.readline() == READY

    def _send(self, script: bytes, stdin: bytes = b"") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"%d %d\n" % (len(script), len(stdin)) + script + stdin)
        self.proc.stdin.flush()

    def _reply(self) -> tuple[int, bytes, bytes]:
        out = self.proc.stdout
        assert out is not None
        rc, n, m = map(int, out.readline().split())
        return rc, out.read(n), out.read(m)

    def run(self, script: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        self._send(script.encode(), stdin)
        return self._reply()

    def batch(self, path: Path) -> list[tuple[int, bytes, bytes, bytes]]:
        self._send(f"{BATCH} {path}\n".encode())
        rc, blob, _ = self._reply()
        assert rc == 0
        results, k = [], 0
        while k < len(blob):
            nl = blob.index(b"\n", k)
            code, ls, lo, le = map(int, blob[k:nl].split())
            k = nl + 1
            script, k = blob[k:k + ls], k + ls
            out, k = blob[k:k + lo], k + lo
            err, k = blob[k:k + le], k + le
            results.append((code, script, out, err))
        return results


@pytest.fixture(params=["posix_spawn", "fork"])
def agent(request: pytest.FixtureRequest) -> Iterator[Agent]:
    code = _AGENT_PY if request.param == "posix_spawn" else "import os\ndel os.posix_spawn\n" + _AGENT_PY
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={"HOME": "/root", "LEAK": "no"})
    try:
        yield Agent(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_exit_code_stdout_and_stderr_apart(agent: Agent) -> None:
    assert agent.run("echo out; echo err >&2; exit 3") == (3, b"out\n", b"err\n")


def test_a_large_stdin_reaches_the_script_whole(agent: Agent) -> None:
    data = bytes(range(256)) * 12_000  # 3 MB: more than any pipe buffer
    rc, out, _ = agent.run("cat", data)
    assert rc == 0 and out == data


def test_large_stdout_and_stderr_at_once_do_not_block(agent: Agent) -> None:
    rc, out, err = agent.run("head -c 2000000 /dev/zero; head -c 1500000 /dev/zero >&2")
    assert (rc, len(out), len(err)) == (0, 2_000_000, 1_500_000)


def test_stdin_the_script_does_not_read_is_dropped(agent: Agent) -> None:
    assert agent.run("exit 4", b"x" * 5_000_000) == (4, b"", b"")
    assert agent.run("echo next") == (0, b"next\n", b"")


def test_a_killed_script_reports_the_signal_as_subprocess_does(agent: Agent) -> None:
    assert agent.run("kill -TERM $$")[0] == -15


def test_sigpipe_is_restored_for_scripts(agent: Agent) -> None:
    # With SIGPIPE ignored (python's default) `yes` would complain of a broken pipe.
    assert agent.run("yes | head -c 4") == (0, b"y\ny\n", b"")


def test_scripts_run_in_root_dir_with_the_agents_environment_only(agent: Agent) -> None:
    rc, out, _ = agent.run("pwd; echo \"$LC_ALL|$HOME|${LEAK-unset}\"")
    assert (rc, out) == (0, b"/\nC.UTF-8|/root|unset\n")


def test_scripts_get_the_agents_python_version_as_python_v_prints_it(agent: Agent) -> None:
    # keel.facts reads it instead of starting python3 -V (venv ids depend on it).
    version = subprocess.run([sys.executable, "-V"], capture_output=True, text=True).stdout
    assert agent.run('echo "Python $KEEL_PYTHON_VERSION"') == (0, version.encode(), b"")


def test_replies_to_pipelined_requests_leave_in_one_write(tmp_path: Path) -> None:
    """READY and the replies to requests sent together go out together (one SSH packet;
    sshd's Nagle would hold a second small one for a network round trip)."""
    requests = b"".join(b"%d 0\n" % len(s) + s for s in (b"echo a", b"echo b >&2", b"exit 3"))
    (tmp_path / "in").write_bytes(requests)
    count = ("import os, sys\n_write = os.write\nwrites = []\n"
             "def write(fd, data):\n    writes.append(fd)\n    return _write(fd, data)\n"
             "os.write = write\nimport atexit\n"
             "atexit.register(lambda: _write(2, b'writes %d' % writes.count(1)))\n")
    with (tmp_path / "in").open("rb") as stdin:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", count + _AGENT_PY], stdin=stdin,
                              capture_output=True, timeout=30)
    assert done.stdout == READY + b"0 2 0\na\n" + b"0 0 2\nb\n" + b"3 0 0\n"
    assert done.stderr == b"writes 1"


def test_a_batch_answers_every_script_in_order(agent: Agent, tmp_path: Path) -> None:
    scripts = [f"sleep 0.0{i % 3}; echo {i}; echo e{i} >&2; exit {i % 4}".encode() for i in range(12)]
    (tmp_path / "trace").write_bytes(b"".join(b"%d\n" % len(s) + s for s in scripts))
    results = agent.batch(tmp_path / "trace")
    assert [r[1] for r in results] == scripts
    assert [(r[0], r[2], r[3]) for r in results] == [
        (i % 4, b"%d\n" % i, b"e%d\n" % i) for i in range(12)]
    assert agent.batch(tmp_path / "missing") == []


def test_reads_behind_a_failed_request_are_skipped(agent: Agent, tmp_path: Path) -> None:
    """A script flagged IF_OK runs only if the last unflagged request exited 0; flagged
    scripts that fail themselves do not stop the next ones."""
    mark = tmp_path / "ran"
    assert agent.run("exit 0") == (0, b"", b"")
    assert agent.run(f"{IF_OK}echo a; exit 3") == (3, b"a\n", b"")
    assert agent.run(f"{IF_OK}echo b") == (0, b"b\n", b"")
    assert agent.run("exit 1") == (1, b"", b"")
    assert agent.run(f"{IF_OK}touch {mark}; echo c") == (125, b"", SKIPPED)
    assert agent.run(f"{IF_OK}echo d") == (125, b"", SKIPPED)
    assert not mark.exists()
    assert agent.run("true") == (0, b"", b"")
    assert agent.run(f"{IF_OK}echo e") == (0, b"e\n", b"")


def test_a_batch_read_from_stdin_and_skipped_behind_a_failure(agent: Agent) -> None:
    scripts = [b"echo one", b"echo two >&2; exit 2"]
    framed = b"".join(b"%d\n" % len(s) + s for s in scripts)
    agent._send(f"{IF_OK}{BATCH} -\n".encode(), framed)
    rc, blob, _ = agent._reply()
    assert rc == 0
    assert blob == b"0 8 4 0\necho oneone\n" + b"2 20 0 4\necho two >&2; exit 2two\n"
    assert agent.run("exit 4") == (4, b"", b"")
    agent._send(f"{IF_OK}{BATCH} -\n".encode(), framed)
    assert agent._reply() == (125, b"", SKIPPED)


def test_facts_from_the_agents_environment_are_what_the_commands_say(agent: Agent) -> None:
    # keel.facts takes the CPU count and the architecture from the python agent's environment
    # (no process started); the sh agent's scripts run nproc and uname -m instead.
    rc, out, _ = agent.run(FACTS_SCRIPT)
    plain = subprocess.run(["sh", "-c", FACTS_SCRIPT], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"}, check=True).stdout
    assert rc == 0
    facts, expected = Facts.parse(out.decode()), Facts.parse(plain)
    assert facts.cpu_count == expected.cpu_count and facts.arch == expected.arch != ""
    assert facts.hostname == expected.hostname != "" and facts.mem_total_kb > 0
    assert (facts.os_id, facts.os_codename) == (expected.os_id, expected.os_codename)
