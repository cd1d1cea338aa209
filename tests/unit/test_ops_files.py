"""keel.ops.files and the operation wrapper, state in and commands out.

Table cases live in ``ops_cases/files/*.json`` (args and probe outputs in, the
exact outcome out); ``file`` and ``tree`` are tested here because their probe
outputs carry digests and their stdin is built from content.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from keel.connection import CommandResult
from keel.host import Host
from keel.operation import Change, Fail, NoChange, simulate
from keel.ops import apt, files, systemd
from tests.unit.opcases import check_case, load_cases


# The case loader is repeated in each test_ops_*.py so that each module stands alone.
@pytest.mark.parametrize("case", load_cases("files"))
def test_case(case: dict[str, Any]) -> None:
    check_case(files, case)


# ------------------------------------------------------------------ file

MOTD = b"hello\nworld\n"


def write_commands(directory: str, path: str) -> list[str]:
    """The atomic write of a root:root 0644 file."""
    return [
        f"t=$(mktemp {directory}/.keel.XXXXXX)",
        "trap 'rm -f \"$t\"' EXIT",
        'cat > "$t"',
        'chown root:root "$t"',
        'chmod 644 "$t"',
        f'mv -f "$t" {path}',
    ]


MOTD_WRITE = write_commands("/etc", "/etc/motd")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def existing(meta: str, current: bytes, content: str | None = None) -> tuple[int, str]:
    """The probe output for a regular file: owner|group|mode, sha256, then ``same`` (content as
    asked), ``large`` (too large to diff) or, by default, ``b64:<content>``."""
    third = content if content is not None else "b64:" + base64.b64encode(current).decode()
    return (0, f"{meta}\n{sha(current)}\n{third}\n")


def test_file_probe_script() -> None:
    want = sha(MOTD)
    assert next(files.file("/etc/motd", MOTD)).script == (
        "p=/etc/motd\n"
        'if [ -f "$p" ] && [ ! -L "$p" ]; then\n'
        "  stat -c '%U|%G|%a' \"$p\"\n"
        '  s=$(sha256sum < "$p"); s=${s%% *}; echo "$s"\n'
        f'  if [ "$s" = {want} ]; then echo same\n'
        '  elif [ "$(stat -c %s "$p")" -gt 262144 ]; then echo large\n'
        "  else printf 'b64:'; base64 -w0 \"$p\"; echo; fi\n"
        'elif [ -e "$p" ] || [ -L "$p" ]; then echo notfile\n'
        "else echo absent; fi"
    )


@pytest.mark.parametrize("mode", ["0644", "644", 0o644])
def test_file_unchanged(mode: str | int) -> None:
    probe = existing("root|root|644", MOTD, "same")
    out = simulate(files.file("/etc/motd", MOTD.decode(), mode=mode), [probe])
    assert out == NoChange("content and mode as asked")


def test_file_absent_is_created() -> None:
    out = simulate(files.file("/etc/motd", MOTD.decode()), [(0, "absent\n")])
    diff = "--- /etc/motd (before)\n+++ /etc/motd (after)\n@@ -0,0 +1,2 @@\n+hello\n+world\n"
    assert out == Change(MOTD_WRITE, "created", diff, stdin=MOTD)


def test_file_content_differs() -> None:
    probe = existing("root|root|600", b"hello\nold\n")
    out = simulate(files.file("/etc/motd", MOTD), [probe])
    diff = ("--- /etc/motd (before)\n+++ /etc/motd (after)\n"
            "@@ -1,2 +1,2 @@\n hello\n-old\n+world\n")
    assert out == Change(MOTD_WRITE, "content changed", diff, stdin=MOTD)


def test_file_old_content_too_large() -> None:
    probe = existing("root|root|644", b"x" * 300_000, "large")
    out = simulate(files.file("/etc/motd", MOTD), [probe])
    assert out == Change(MOTD_WRITE, "content changed", "(old content too large to diff)",
                         stdin=MOTD)


def test_file_only_mode_differs() -> None:
    probe = existing("root|root|600", MOTD, "same")
    out = simulate(files.file("/etc/motd", MOTD), [probe])
    assert out == Change(["chown root:root /etc/motd", "chmod 644 /etc/motd"],
                         "owner/mode root:root 600 -> root:root 644")
    assert out.stdin == b""


def test_file_only_owner_differs() -> None:
    probe = existing("root|root|640", MOTD, "same")
    out = simulate(files.file("/etc/hello.env", MOTD, owner="hello", group="www-data",
                              mode="0640"), [probe])
    assert out == Change(["chown hello:www-data /etc/hello.env", "chmod 640 /etc/hello.env"],
                         "owner/mode root:root 640 -> hello:www-data 640")


def test_file_path_is_not_a_regular_file() -> None:
    out = simulate(files.file("/etc/motd", MOTD), [(0, "notfile\n")])
    assert out == Fail("/etc/motd exists and is not a regular file")


def test_file_validate_runs_on_temp_file_before_rename() -> None:
    path = "/etc/nginx/sites-available/my site"
    out = simulate(files.file(path, "server {}\n", owner="root", group="www-data", mode="0640",
                              validate="nginx -t -c %s -g 'pid %s.pid;'"), [(0, "absent\n")])
    assert isinstance(out, Change)
    assert out.commands == [
        "t=$(mktemp /etc/nginx/sites-available/.keel.XXXXXX)",
        "trap 'rm -f \"$t\"' EXIT",
        'cat > "$t"',
        'chown root:www-data "$t"',
        'chmod 640 "$t"',
        # Braced, so 2>&1 covers every command of a multi-command validate.
        'if ! out=$( { nginx -t -c "$t" -g \'pid "$t".pid;\'\n} 2>&1); then '
        'line=$(printf "%s\\n" "$out" | grep -iE "emerg|error|fatal|invalid" | head -n 1); '
        'echo "validation failed: ${line:-$(printf "%s" "$out" | tail -n 1)}" >&2; exit 1; fi',
        "mv -f \"$t\" '/etc/nginx/sites-available/my site'",
    ]


@pytest.mark.parametrize(
    ("probe", "reason", "diff"),
    [
        ((0, "absent\n"), "created",
         "--- /etc/motd (before)\n+++ /etc/motd (after)\n@@ -0,0 +1 @@\n+KEY=s3cret\n"),
        (existing("root|root|644", b"KEY=old\n"), "content changed",
         "--- /etc/motd (before)\n+++ /etc/motd (after)\n@@ -1 +1 @@\n-KEY=old\n+KEY=s3cret\n"),
    ],
)
def test_file_secret_sets_flag(probe: tuple[int, str], reason: str, diff: str) -> None:
    out = simulate(files.file("/etc/motd", "KEY=s3cret\n", secret=True), [probe])
    assert out == Change(MOTD_WRITE, reason, diff, stdin=b"KEY=s3cret\n", secret=True)


def test_file_old_content_unreadable() -> None:
    probe = (0, f"root|root|644\n{sha(b'old')}\n")
    out = simulate(files.file("/etc/motd", MOTD), [probe])
    assert out == Change(MOTD_WRITE, "content changed", "(old content unreadable)", stdin=MOTD)


def test_file_binary_content_differs() -> None:
    new = b"\x89PNG\r\n\x1a\n\xff\x00"
    write = write_commands("/srv", "/srv/logo.png")
    out = simulate(files.file("/srv/logo.png", new), [existing("root|root|644", b"\x89PNG\xfe")])
    assert out == Change(write, "content changed", "(binary content differs)", stdin=new)
    absent = simulate(files.file("/srv/logo.png", new), [(0, "absent\n")])
    assert absent == Change(write, "created", "(binary content differs)", stdin=new)


# ------------------------------------------------------------------ tree

RELEASE = "/srv/hello/releases/3f2a"


def make_tree(root: Path) -> Path:
    (root / "static").mkdir(parents=True)
    (root / "wsgi.py").write_text("from hello import app\n")
    (root / "run.sh").write_text("#!/bin/sh\nexec uwsgi\n")
    (root / "run.sh").chmod(0o700)
    (root / "static" / "style.css").write_text("body {}\n")
    (root / "static" / "style.css").chmod(0o664)
    if os.geteuid() == 0:  # the tarball must not carry the local owner
        os.chown(root / "wsgi.py", 4321, 4321)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "wsgi.cpython-311.pyc").write_bytes(b"\x00pyc")
    (root / "helpers.pyc").write_bytes(b"\x00pyc")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def tree_commands(digest: str, owner: str = "root:root") -> list[str]:
    new, old = f"{RELEASE}.keel-new", f"{RELEASE}.keel-old"
    return [
        f"rm -rf {new} {old}",
        f"mkdir -p {new}",
        f"err=$(tar -xzf - -C {new} --no-same-owner 2>&1) || {{ printf '%s\\n' \"$err\" | "
        "grep -v 'Exiting with failure status' | tail -n 1 >&2; exit 1; }",
        f"echo '{digest} {owner}' > {new}/.keel-tree",
        f"chown -R {owner} {new}",
        f"if [ -e {RELEASE} ]; then mv -T {RELEASE} {old}; fi",
        f"mv -T {new} {RELEASE}",
        f"rm -rf {old}",
    ]


def test_tree_unchanged(tmp_path: Path) -> None:
    local = make_tree(tmp_path / "app")
    digest = files.tree_digest(local)
    gen = files.tree(local, RELEASE + "/")
    assert next(gen).script == f"cat {RELEASE}/.keel-tree 2>/dev/null || true"
    assert simulate(files.tree(local, RELEASE + "/"), [(0, digest + " root:root\n")]) == NoChange(
        "tree up to date")


@pytest.mark.parametrize("marker", ["", "0" * 64 + "\n", "0" * 64 + " hello:hello\n"])
def test_tree_uploads_tarball(tmp_path: Path, marker: str) -> None:
    local = make_tree(tmp_path / "app")
    out = simulate(files.tree(str(local), RELEASE, owner="hello", group="hello"), [(0, marker)])
    assert isinstance(out, Change)
    digest = files.tree_digest(local)
    assert (out.commands, out.reason, out.diff, out.secret) == (
        tree_commands(digest, "hello:hello"), "3 files uploaded", "", False)
    with tarfile.open(fileobj=io.BytesIO(out.stdin), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["run.sh", "wsgi.py", "static/style.css"]
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime, m.type) for m in members} == {
            (0, 0, "root", "root", 0, tarfile.REGTYPE)}
        assert [m.mode for m in members] == [0o755, 0o644, 0o644]
        contents = [tar.extractfile(m).read() for m in members]  # type: ignore[union-attr]
    assert contents == [b"#!/bin/sh\nexec uwsgi\n", b"from hello import app\n", b"body {}\n"]


def test_tree_exclude(tmp_path: Path) -> None:
    local = make_tree(tmp_path / "app")
    out = simulate(files.tree(local, RELEASE, exclude=("static",)), [(0, "")])
    assert isinstance(out, Change)
    assert out.reason == "2 files uploaded"
    assert out.commands == tree_commands(files.tree_digest(local, ("static",)))
    with tarfile.open(fileobj=io.BytesIO(out.stdin), mode="r:gz") as tar:
        assert tar.getnames() == ["run.sh", "wsgi.py"]
    assert files.tree_digest(local, ("static",)) != files.tree_digest(local)


def test_tree_missing_local_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert simulate(files.tree(missing, RELEASE), []) == Fail(
        f"local directory {missing} does not exist")


def test_tree_digest_stable_and_sensitive(tmp_path: Path) -> None:
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b")
    digest = files.tree_digest(a)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert files.tree_digest(b) == digest
    (b / "__pycache__" / "views.cpython-311.pyc").write_bytes(b"other")
    (b / "static" / "old.pyc").write_bytes(b"other")
    assert files.tree_digest(b) == digest, "caches are not part of the tree"
    (b / "static" / "style.css").write_text("body {}\r")
    assert files.tree_digest(b) != digest, "one byte changed"
    (b / "static" / "style.css").write_text("body {}\n")
    (b / "static" / "style.css").chmod(0o644)
    assert files.tree_digest(b) == digest, "only exec bits count"
    (b / "wsgi.py").chmod(0o744)
    assert files.tree_digest(b) != digest, "exec bit set"
    (b / "wsgi.py").chmod(0o644)
    (b / "run.sh").chmod(0o644)
    assert files.tree_digest(b) != digest, "exec bit cleared"
    (b / "run.sh").chmod(0o755)
    (b / "run.sh").rename(b / "start.sh")
    assert files.tree_digest(b) != digest, "file renamed"


# ------------------------------------------------------- operation wrapper


def test_op_without_host_returns_generator() -> None:
    gen = files.symlink("/a", "/b")
    assert inspect.isgenerator(gen)
    assert files.symlink.__name__ == "symlink"
    assert files.symlink.decide.__name__ == "symlink"  # type: ignore[attr-defined]
    assert inspect.isgeneratorfunction(files.symlink.decide)  # type: ignore[attr-defined]


def test_simulate_raises_when_op_asks_for_more_probes() -> None:
    with pytest.raises(AssertionError, match="asked for more probes than given"):
        simulate(files.directory("/srv/hello"), [])


def test_simulate_accepts_command_results_and_tuples() -> None:
    as_tuple = simulate(files.absent("/x"), [(0, "present\n")])
    as_result = simulate(files.absent("/x"), [CommandResult(0, b"present\n", b"warn\n")])
    assert as_tuple == as_result == Change(["rm -rf /x"], "removed")


class RecordingHost(Host):
    """A Host that records what the wrapper hands to ``apply``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool, list[str]]] = []

    def apply(self, op: str, target: str, gen: Any, notify: list[str]) -> Any:
        self.calls.append((op, target, inspect.isgenerator(gen), notify))
        return "result"


def test_op_with_host_applies_on_host() -> None:
    host = RecordingHost()
    assert apt.packages(host, ["nginx", "curl"], notify="reload nginx") == "result"
    systemd.restart(host, "nginx", notify=["a", "b"], name="web server")
    files.file(host, "/etc/motd", "hi\n", op_name="template")
    systemd.daemon_reload(host)
    assert host.calls == [
        ("packages", "nginx curl", True, ["reload nginx"]),
        ("restart", "web server", True, ["a", "b"]),
        ("template", "/etc/motd", True, []),
        ("daemon_reload", "", True, []),
    ]


# ------------------------------------------------------------ regressions


@pytest.mark.parametrize("old", [b"", b"\n"])
def test_file_replacing_empty_file_diffs_from_empty(old: bytes) -> None:
    out = simulate(files.file("/etc/motd", b"new\n"), [existing("root|root|644", old)])
    assert isinstance(out, Change)
    hunk = "@@ -0,0 +1 @@\n+new\n" if not old else "@@ -1 +1 @@\n-\n+new\n"
    assert out.diff == "--- /etc/motd (before)\n+++ /etc/motd (after)\n" + hunk


@pytest.mark.parametrize(
    ("marker", "was"),
    [
        pytest.param("{digest} root:root\n", "root:root", id="owner-changed"),
        pytest.param("{digest} hello:root\n", "hello:root", id="group-changed"),
        pytest.param("{digest}\n", "unknown", id="marker-without-owner"),
    ],
)
def test_tree_owner_change_is_applied(tmp_path: Path, marker: str, was: str) -> None:
    local = make_tree(tmp_path / "app")
    digest = files.tree_digest(local)
    out = simulate(files.tree(local, RELEASE, owner="hello", group="hello"),
                   [(0, marker.format(digest=digest))])
    assert out == Change([f"chown -R hello:hello {RELEASE}",
                          f"echo '{digest} hello:hello' > {RELEASE}/.keel-tree"],
                         f"owner {was} -> hello:hello")
