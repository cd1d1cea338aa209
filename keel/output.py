"""Terminal output with rich: one line per change prefixed by host, diffs, the recap.

A no-change run prints only the recap: unchanged operations are shown with
``--verbose``. The recap is plain text (ANSI styles on a terminal), so such a
run never imports rich (~20 ms of start-up): rich comes in with the first line
about a change, a warning or an error.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from keel.operation import Result
from keel.vault import Secret

if TYPE_CHECKING:
    from rich.console import Console

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


def escape(text: str) -> str:
    """``text`` safe inside rich markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class Reporter:
    """Prints results as they happen; safe to call from host threads.

    ``console``: a rich console to print to (default: stdout, made on first
    use); ``quiet``: print nothing.
    """

    def __init__(self, console: Console | None = None, verbose: bool = False,
                 diff: bool = False, quiet: bool = False) -> None:
        self._console = console
        self.quiet = quiet
        self.verbose = verbose
        self.diff = diff
        self._secrets: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @property
    def console(self) -> Console:
        with self._lock:
            if self._console is None:
                from rich.console import Console

                self._console = (Console(file=io.StringIO()) if self.quiet else
                                 Console(highlight=False, soft_wrap=True))
            return self._console

    def add_secrets(self, host: str, values: set[str]) -> None:
        with self._lock:
            self._secrets.setdefault(host, set()).update(values)

    def _print(self, text: str) -> None:
        if not self.quiet:
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
        """One row per host; laid out as rich lays out a borderless table."""
        if self.quiet:
            return
        header = ["host", "ok", "changed", "failed", "unreachable"]
        if stats:
            header += ["round trips", "commands", "connect s", "total s"]
        rows = []
        for o in outcomes:
            row = [(o.name, "bold"), (str(o.ok), ""), (str(o.changed), "yellow" if o.changed else ""),
                   (str(int(o.failed)), "red" if o.failed else ""),
                   (str(int(o.unreachable)), "red" if o.unreachable else "")]
            if stats:
                row += [(str(o.round_trips), ""), (str(o.commands), ""),
                        (f"{o.connect_seconds:.3f}", ""), (f"{o.seconds:.3f}", "")]
            rows.append(row)
        if self._console is not None:
            self._rich_recap(header, rows)
            return
        styled = _ansi_enabled(sys.stdout)
        widths = [max([len(h)] + [len(r[i][0]) for r in rows]) for i, h in enumerate(header)]

        def line(cells: list[tuple[str, str]]) -> str:
            out = []
            for i, (text, style) in enumerate(cells):
                pad = " " * (widths[i] - len(text))
                text = _ansi(text, style) if styled and style else text
                out.append(text + pad if i == 0 else pad + text)
            return "  ".join(out)

        text = [_ansi("RECAP", "italic") if styled else "RECAP",
                line([(h, "bold") for h in header])] + [line(r) for r in rows]
        with self._lock:
            sys.stdout.write("\n".join(text) + "\n")
            sys.stdout.flush()

    def _rich_recap(self, header: list[str], rows: list[list[tuple[str, str]]]) -> None:
        from rich.table import Table

        table = Table(title="RECAP", title_justify="left", box=None, pad_edge=False)
        for i, col in enumerate(header):
            table.add_column(col, style="bold" if i == 0 else None,
                             justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(f"[{style}]{text}[/]" if style and i else text
                            for i, (text, style) in enumerate(row)))
        self.console.print(table)


_ANSI = {"bold": "1", "italic": "3", "red": "31", "yellow": "33"}


def _ansi(text: str, style: str) -> str:
    return f"\x1b[{_ANSI[style]}m{text}\x1b[0m"


def _ansi_enabled(stream: Any) -> bool:
    """Colours as rich would decide them: a terminal, unless NO_COLOR or TERM=dumb."""
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())
