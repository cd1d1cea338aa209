"""Bounded HTTP load with wrk, for tests that must count every failed request.

wrk keeps ``connections`` requests in flight against one URL; a Lua script
stops each thread after its share of ``max_requests`` and prints a JSON
summary. ``stop()`` ends the run early (SIGINT), so a test can load a host
exactly while something happens to it. Only lab-host or loopback URLs.
``headers=("Connection: close",)`` makes every request use a new connection
(wrk never retries a request on a kept-alive connection the server closed).

Example::

    with Load("http://10.83.7.11/version", connections=4) as load:
        deploy()
    assert load.result.errors == 0
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

LUA = r"""
local left = 0
function init(args) left = tonumber(args[1]) end
function response(status, headers, body)
  left = left - 1
  if left <= 0 then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, "p99_ms": %.1f}\n',
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(99) / 1000))
end
"""


@dataclass
class LoadResult:
    requests: int
    non2xx: int
    connect: int
    read: int
    write: int
    timeout: int
    p99_ms: float

    @property
    def errors(self) -> int:
        """Non-2xx/3xx responses plus every kind of socket error."""
        return self.non2xx + self.connect + self.read + self.write + self.timeout


class Load:
    """wrk in the background, bounded by time and by request count."""

    def __init__(self, url: str, connections: int = 4, max_seconds: int = 300,
                 max_requests: int = 500_000, threads: int = 2, headers: tuple[str, ...] = ()) -> None:
        assert url.startswith(tuple(f"{scheme}://{net}" for scheme in ("http", "https")
                                    for net in ("10.83.", "127."))), "lab hosts or loopback only"
        self._dir = tempfile.TemporaryDirectory(prefix="keel-load-")
        script = Path(self._dir.name) / "count.lua"
        script.write_text(LUA)
        threads = min(threads, connections)
        self.cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max_seconds}s",
                    "--timeout", "10s", *(a for h in headers for a in ("-H", h)),
                    "-s", str(script), url, "--",
                    str(max_requests // threads)]
        self.max_seconds = max_seconds
        self.proc: subprocess.Popen[str] | None = None
        self.result: LoadResult | None = None

    def start(self) -> Load:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        return self

    def stop(self) -> LoadResult:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=self.max_seconds + 30)
        self._dir.cleanup()
        line = next((ln for ln in out.splitlines() if ln.startswith('{"requests"')), None)
        assert line, f"wrk printed no summary:\n{out}"
        self.result = LoadResult(**json.loads(line))
        return self.result

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
