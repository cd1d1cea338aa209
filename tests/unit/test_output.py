"""The plain recap (what a no-change run prints, without importing rich) is rich's table."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from keel.output import Reporter
from keel.runner import HostOutcome


def _outcomes() -> list[HostOutcome]:
    ok = HostOutcome("lab1", round_trips=2, commands=39, connect_seconds=0.1234, seconds=0.4)
    ok.results = []
    bad = HostOutcome("a-longer-host-name", failed=True, unreachable=True, error="x")
    return [ok, bad]


@pytest.mark.parametrize("stats", [False, True])
def test_plain_recap_is_richs_table(stats: bool, capsys: pytest.CaptureFixture[str]) -> None:
    Reporter().recap(_outcomes(), stats=stats)
    plain = capsys.readouterr().out
    buf = io.StringIO()
    Reporter(console=Console(file=buf, width=200, highlight=False, soft_wrap=True)).recap(
        _outcomes(), stats=stats)
    assert plain == buf.getvalue()
    assert plain.splitlines()[0] == "RECAP"
    assert plain.splitlines()[2].split()[1:5] == ["0", "0", "0", "0"]


def test_plain_recap_styles_only_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    Reporter().recap(_outcomes())
    out = capsys.readouterr().out
    assert "\x1b[31m1\x1b[0m" in out  # failed, in red
    assert "\x1b[1mlab1" in out


def test_quiet_reporter_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = Reporter(quiet=True)
    quiet.recap(_outcomes())
    quiet.warn("lab1", "something")
    assert capsys.readouterr().out == ""
