"""A TCP relay that adds a fixed one-way delay, for benchmarks over a "real" network.

This kernel has no ``netem`` qdisc, so latency is added in user space: every
chunk read from one side is written to the other ``delay`` seconds later, in
order, in both directions (so a round trip gains ``2 * delay``). Bandwidth is
not limited. The relay also counts *turns*: how often the server answered after
the client had sent something since the server's last answer, i.e. the round
trips a client waited for, SSH handshake included, whatever the tool.

    with Relay(("10.83.10.11", 22), delay=0.025) as relay:   # 50 ms RTT
        ssh -p relay.port 127.0.0.1 ...
        relay.turns                                           # round trips so far

Or from a shell: ``python bench/relay.py 10.83.10.11:22 0.025`` (prints the port).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time


class Relay:
    """Listens on 127.0.0.1 (a free port) and forwards to ``target`` with ``delay`` each way."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.port = 0
        self.turns = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> Relay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self) -> tuple[int, int]:
        """(turns, connections) since the last reset."""
        counts = self.turns, self.connections
        self.turns = self.connections = 0
        return counts

    # ------------------------------------------------------------ serving
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            # Connections still open (a kept SSH connection) end here, quietly.
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(6, 1, 1)  # TCP_NODELAY: the delay is ours alone
        state = {"client_sent": False}
        try:
            await asyncio.gather(self._pipe(client_r, server_w, state, upstream=True),
                                 self._pipe(server_r, client_w, state, upstream=False),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # the relay is closing: end this connection quietly
            for w in (client_w, server_w):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    state: dict[str, bool], upstream: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.close()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if upstream:
                    state["client_sent"] = state["client_sent"] or bool(data)
                elif data and state["client_sent"]:
                    self.turns += 1
                    state["client_sent"] = False
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
        except OSError:
            queue.put_nowait((0.0, b""))
        await sender


def main() -> None:
    host, _, port = sys.argv[1].rpartition(":")
    with Relay((host, int(port)), float(sys.argv[2])) as relay:
        print(relay.port, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
