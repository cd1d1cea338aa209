"""Errors that end a host's run with one line: ``<host>: <cause>``."""

from __future__ import annotations


class KeelError(Exception):
    """Base class: the message is one line, fit to print as it is."""


class HostError(KeelError):
    """Something failed on one host; other hosts go on."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.reason = message


class UnreachableError(HostError):
    """The host could not be reached or logged into."""


class OperationError(HostError):
    """An operation's change failed on the host."""


class TemplateError(KeelError):
    """A template failed to render (undefined variable, syntax error)."""
