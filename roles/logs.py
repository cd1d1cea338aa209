"""logs: the journal of the apps' units on every selected host, each line prefixed by its host.

Each host runs ``journalctl -o json`` on its own SSH channel (see
:mod:`keel.stream`), and each entry is printed here as::

    web1  2026-01-31 12:00:01 hello[4242]: GET /version => generated 40 bytes ...

Which units: with ``--app NAME``, that app's unit (hosts without it are left
out); without, every app's unit plus ``nginx.service``, and on a load
balancer ``nginx.service`` only. nginx's journal holds its starts, reloads
and configuration errors; its access and error logs are files in
``/var/log/nginx``, not journal entries, and are not shown.

Without ``--follow``, the last ``lines`` entries per host (or all since
``--since``) are merged across hosts in time order. With ``--follow``,
entries are printed as they arrive until Ctrl-C, which also ends every remote
``journalctl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.text import Text

from keel.errors import KeelError
from keel.inventory import HostSpec
from keel.operation import q
from keel.stream import stream
from roles import apps, lb


def units(spec: HostSpec, only: str = "") -> list[str]:
    """The journal units to show for ``spec``; [] if it does not run app ``only``."""
    if lb.is_balancer(spec):
        return [] if only else ["nginx.service"]
    names = [a["unit"] for a in apps.expectations(spec.vars)["apps"]
             if not only or a["name"] == only]
    return names if only else [*names, "nginx.service"]


def command(unit_names: Sequence[str], since: str = "", follow: bool = False,
            lines: int = 50) -> str:
    """The journalctl command line.

    >>> command(["hello.service"], since="-10min", follow=True)
    'journalctl --no-pager --output=json --unit=hello.service --since=-10min --follow'
    """
    args = ["journalctl", "--no-pager", "--output=json", *(f"--unit={u}" for u in unit_names)]
    if since:
        args.append(f"--since={since}")
    else:
        args.append(f"--lines={int(lines)}")
    if follow:
        args.append("--follow")
    return " ".join(q(a) for a in args)


@dataclass
class Entry:
    """One journal entry, or one line of other output (``usec`` 0, ``raw`` True)."""

    usec: int
    ident: str
    message: str
    priority: int = 6
    raw: bool = False


def parse(line: str) -> Entry:
    """One line of ``journalctl -o json``; anything else (an error message) is kept raw.

    >>> e = parse('{"__REALTIME_TIMESTAMP": "1700000000000000", "SYSLOG_IDENTIFIER": "hello",'
    ...           ' "_PID": "42", "MESSAGE": "hi", "PRIORITY": "6"}')
    >>> (e.ident, e.message)
    ('hello[42]', 'hi')
    >>> parse("Failed to parse timestamp: yesterdayish").raw
    True
    """
    try:
        doc: Mapping[str, Any] = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError
    except ValueError:
        return Entry(0, "", line, 3, raw=True)
    msg = doc.get("MESSAGE")
    if isinstance(msg, list):  # not valid UTF-8: journalctl sends the bytes
        msg = bytes(b for b in msg if isinstance(b, int)).decode(errors="replace")
    ident = doc.get("SYSLOG_IDENTIFIER") or doc.get("_COMM") or doc.get("_SYSTEMD_UNIT") or "?"
    pid = doc.get("_PID") or doc.get("SYSLOG_PID")
    return Entry(int(doc.get("__REALTIME_TIMESTAMP", 0) or 0), f"{ident}[{pid}]" if pid else ident,
                 str(msg if msg is not None else "").rstrip("\n"), int(doc.get("PRIORITY", 6) or 6))


def render(host: str, width: int, entry: Entry) -> Text:
    text = Text(f"{host:<{width}}  ", style="bold")
    style = "red" if entry.priority <= 3 else "yellow" if entry.priority == 4 else ""
    if entry.raw:
        return text.append(entry.message, style="red")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.usec / 1e6))
    return text.append(f"{stamp} {entry.ident}: ", style="dim").append(entry.message, style=style)


def show(hosts: Sequence[HostSpec], *, only: str = "", since: str = "", follow: bool = False,
         lines: int = 50, login: Callable[[HostSpec], str | None] | None = None,
         sudo_password: str | None = None, console: Console | None = None) -> int:
    """Print the logs; return how many hosts failed. Ctrl-C propagates (after cleanup)."""
    console = console or Console(highlight=False, soft_wrap=True)
    chosen = {h.name: units(h, only) for h in hosts}
    targets = [h for h in hosts if chosen[h.name]]
    if not targets:
        raise KeelError(f"logs: no selected host runs an app named {only!r}")
    width = max(len(h.name) for h in targets)
    merged: list[tuple[int, str, Entry]] = []

    def on_line(host: str, line: str) -> None:
        if not line.strip():
            return
        entry = parse(line)
        if follow or entry.raw:
            console.print(render(host, width, entry))
        else:
            merged.append((entry.usec, host, entry))

    def on_error(exc: KeelError) -> None:
        console.print(Text(str(exc), style="red"))

    status = stream(targets, lambda spec: command(chosen[spec.name], since, follow, lines),
                    on_line, login=login, sudo_password=sudo_password, on_error=on_error)
    for _, host, entry in sorted(merged, key=lambda item: item[0]):
        console.print(render(host, width, entry))
    bad = {name: rc for name, rc in status.items() if rc != 0}
    for name, rc in bad.items():
        if not isinstance(rc, KeelError):
            console.print(Text(f"{name}: journalctl ended with status {rc}", style="red"))
    return len(bad)
