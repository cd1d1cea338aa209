"""Terminal output with rich: one line per change prefixed by host, diffs, the recap.

A no-change run prints only the recap: unchanged operations are shown with
``--verbose``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keel.operation import Result
from keel.vault import Secret

if TYPE_CHECKING:
    from keel.runner import HostOutcome

SECRET_NAME = re.compile(r"(password|passwd|secret|secret_key|token|passphrase|api_key|private_key)$",
                         re.I)
MASK = "********"


def secret_values(variables: Mapping[str, Any]) -> set[str]:
    """Values of variables whose names say they are secret, and every value
    decrypted from ansible-vault (:class:`keel.vault.Secret`), searched recursively.
    Strings shorter than 4 characters are left alone: masking them would hide
    too much of the output to be useful, and they are no secret worth the name.

    >>> sorted(secret_values({"db_password": "hunter22", "app": {"secret_key": "s3cr3tz"},
    ...                       "token_ttl": Secret("from-vault")}))
    ['from-vault', 'hunter22', 's3cr3tz']
    """
    found: set[str] = set()

    def walk(obj: Any, name: str = "") -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, str(k))
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v, name)
        elif isinstance(obj, str) and len(obj) >= 4 and (
                isinstance(obj, Secret) or SECRET_NAME.search(name)):
            found.add(str(obj))

    walk(variables)
    return found


def mask(text: str, secrets: Iterable[str]) -> str:
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, MASK)
    return text


class Reporter:
    """Prints results as they happen; safe to call from host threads."""

    def __init__(self, console: Console | None = None, verbose: bool = False,
                 diff: bool = False) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.verbose = verbose
        self.diff = diff
        self._secrets: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def add_secrets(self, host: str, values: set[str]) -> None:
        with self._lock:
            self._secrets.setdefault(host, set()).update(values)

    def _print(self, text: str) -> None:
        self.console.print(text)

    def result(self, r: Result) -> None:
        secrets = self._secrets.get(r.host, set())
        target = escape(mask(r.target, secrets))
        reason = escape(mask(r.reason, secrets))
        if r.failed:
            self._print(f"[bold]{r.host}[/] [red]failed[/]  {r.op} {target}: "
                        f"{escape(mask(r.error, secrets))}")
        elif r.changed:
            word = "would change" if r.check else "changed"
            self._print(f"[bold]{r.host}[/] [yellow]{word}[/]  {r.op} {target} ({reason})")
            if r.diff and (self.diff or r.check):
                self._print_diff(mask(r.diff, secrets))
        elif self.verbose:
            self._print(f"[bold]{r.host}[/] [green]ok[/]  {r.op} {target} ({reason}) "
                        f"[dim]{r.seconds * 1000:.1f} ms[/]")

    def _print_diff(self, diff: str) -> None:
        for line in diff.rstrip("\n").splitlines():
            style = {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "")
            if line.startswith(("+++", "---")):
                style = "bold"
            text = escape(line)
            self._print(f"    [{style}]{text}[/]" if style else f"    {text}")

    def handler(self, host: str, name: str, check: bool) -> None:
        word = "would run handler" if check else "handler"
        self._print(f"[bold]{host}[/] [magenta]{word}[/]  {escape(name)}")

    def info(self, host: str, message: str) -> None:
        self._print(f"[bold]{host}[/]  {escape(message)}")

    def warn(self, host: str, message: str) -> None:
        self._print(f"[bold]{host}[/] [yellow]warning[/]  {escape(message)}")

    def error(self, host: str, message: str) -> None:
        self._print(f"[red]{escape(message if message.startswith(host) else host + ': ' + message)}[/]")

    def recap(self, outcomes: Iterable[HostOutcome], stats: bool = False) -> None:
        table = Table(title="RECAP", title_justify="left", box=None, pad_edge=False)
        table.add_column("host", style="bold")
        for col in ("ok", "changed", "failed", "unreachable"):
            table.add_column(col, justify="right")
        if stats:
            for col in ("round trips", "commands", "connect s", "total s"):
                table.add_column(col, justify="right")
        for o in outcomes:
            row = [
                o.name, str(o.ok),
                f"[yellow]{o.changed}[/]" if o.changed else "0",
                f"[red]{int(o.failed)}[/]" if o.failed else "0",
                f"[red]{int(o.unreachable)}[/]" if o.unreachable else "0",
            ]
            if stats:
                row += [str(o.round_trips), str(o.commands), f"{o.connect_seconds:.3f}",
                        f"{o.seconds:.3f}"]
            table.add_row(*row)
        self.console.print(table)
