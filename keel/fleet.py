"""Read-only collection from many hosts at once, over connections kept open between rounds.

A :class:`Fleet` opens one agent connection per host (in parallel) and runs a
function against every host's :class:`~keel.host.Host` in parallel. Like
Fabric's ``Group``, :meth:`Fleet.map` maps each host to its value or to the
error it raised: one unreachable host never hides the others. A host whose
connection failed or dropped is connected again on the next round, so a
refreshing display (``fab status --watch``) recovers by itself.

Facts are not gathered (no round trip spent on them): ``host.facts`` is empty.

Example::

    with Fleet(hosts, login=lambda spec: "deploy") as fleet:
        uptimes = fleet.map(lambda host: host.run("cat /proc/uptime").out.split()[0])
    # {"web1": "1234.5", "web2": HostError("web2: unreachable at 10.0.0.6:22: ...")}
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from keel.connection import Connection
from keel.errors import HostError, KeelError
from keel.facts import Facts
from keel.host import Host
from keel.inventory import HostSpec

T = TypeVar("T")


class Fleet:
    """Connections to ``hosts``, opened on first use and kept until :meth:`close`.

    ``defaults`` are merged under each host's inventory vars and ``extra_vars``
    over them, as a play's role defaults and ``--extra-vars`` would be.
    """

    def __init__(
        self,
        hosts: Sequence[HostSpec],
        *,
        login: Callable[[HostSpec], str | None] | None = None,
        sudo_password: str | None = None,
        parallel: int = 10,
        defaults: Mapping[str, Any] | None = None,
        extra_vars: Mapping[str, Any] | None = None,
    ) -> None:
        self.specs = list(hosts)
        self.login = login
        self.sudo_password = sudo_password
        self.parallel = max(1, parallel)
        self.defaults = dict(defaults or {})
        self.extra_vars = dict(extra_vars or {})
        self._hosts: dict[str, Host] = {}

    def _host(self, spec: HostSpec) -> Host:
        host = self._hosts.get(spec.name)
        if host is None:
            variables = {**self.defaults, **spec.vars, **self.extra_vars}
            user = self.login(replace(spec, vars=variables)) if self.login else None
            conn = Connection.open(spec, sudo_password=self.sudo_password, user=user)
            host = self._hosts[spec.name] = Host(spec, conn, Facts(), variables)
        return host

    def _one(self, spec: HostSpec, fn: Callable[[Host], T]) -> T | KeelError:
        try:
            return fn(self._host(spec))
        except KeelError as exc:
            self._drop(spec.name)  # reconnect next round
            return exc
        except Exception as exc:  # a bug or a library error: still one line, still this host only
            self._drop(spec.name)
            return HostError(spec.name, f"{type(exc).__name__}: {exc}".splitlines()[0])

    def map(self, fn: Callable[[Host], T]) -> dict[str, T | KeelError]:
        """``fn(host)`` on every host in parallel: host name -> value or the error raised.

        The threads are daemons and are joined in short steps, so Ctrl-C ends
        a refreshing display at once, even while a host is still connecting.
        """
        values: dict[str, T | KeelError] = {}
        slots = threading.Semaphore(self.parallel)

        def one(spec: HostSpec) -> None:
            with slots:
                values[spec.name] = self._one(spec, fn)

        threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in self.specs]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.1)
        return {s.name: values[s.name] for s in self.specs}

    def _drop(self, name: str) -> None:
        host = self._hosts.pop(name, None)
        if host is not None:
            with contextlib.suppress(Exception):
                host.conn.close()

    def close(self) -> None:
        for name in list(self._hosts):
            self._drop(name)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
