"""keel.control's local parts: the socket directory's checks, names, and the session framing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from keel import control


def test_directory_is_private_or_unused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = tmp_path / "made"
    monkeypatch.setenv("KEEL_CONTROL_DIR", str(made))
    assert control.control_dir() == made
    assert made.stat().st_mode & 0o777 == 0o700
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o755)
    monkeypatch.setenv("KEEL_CONTROL_DIR", str(open_dir))
    assert control.control_dir() is None
    link = tmp_path / "link"
    link.symlink_to(made)
    monkeypatch.setenv("KEEL_CONTROL_DIR", str(link))
    assert control.control_dir() is None


def test_persist_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEEL_CONTROL_PERSIST", raising=False)
    assert control.persist_seconds() == control.DEFAULT_PERSIST
    assert control.persist_seconds(enabled=False) == 0
    monkeypatch.setenv("KEEL_CONTROL_PERSIST", "0")
    assert control.persist_seconds() == 0


def test_names_differ_with_any_setting() -> None:
    base = {"user": "deploy", "address": "10.0.0.5", "port": 22, "known_hosts": ["/a"],
            "strict": True}
    assert control.key(base) == control.key(dict(reversed(base.items())))
    for change in ({"user": "root"}, {"port": 2222}, {"known_hosts": ["/b"]}, {"strict": False}):
        assert control.key({**base, **change}) != control.key(base)


def test_no_control_process_means_no_session(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_CONTROL_DIR", str(tmp_path / "c"))
    control.control_dir()
    assert control.session("nosuchname", "true", 1) is None
    assert control.running() == []


def test_mux_pipe_demultiplexes_stdout_and_stderr() -> None:
    ours, theirs = socket.socketpair()
    frame = control._FRAME.pack
    theirs.sendall(frame(b"o", 6) + b"KEEL-A" + frame(b"e", 5) + b"oops\n" + frame(b"o", 9)
                   + b"GENT\n1 2 " + frame(b"o", 3) + b"0\nx" + frame(b"x", 0))
    theirs.close()
    pipe = control.MuxPipe(ours)
    assert pipe.readline() == b"KEEL-AGENT\n"
    assert pipe.readline() == b"1 2 0\n"
    assert pipe.read(1) == b"x"
    assert pipe.readline() == b""  # the end of the session
    assert pipe.stderr_tail() == "oops"
    pipe.close()


def test_stop_all_ends_nothing_it_does_not_own(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "c"
    monkeypatch.setenv("KEEL_CONTROL_DIR", str(directory))
    control.control_dir()
    # A record of a process that holds no lock (it died): not running, not signalled.
    (directory / "k.json").write_text(f'{{"pid": {os.getpid()}, "address": "x"}}')
    (directory / "k.lock").touch()
    assert control.running() == []
    assert control.stop_all() == 0
