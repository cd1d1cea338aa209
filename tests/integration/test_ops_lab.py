"""Every operation in keel.ops on a real lab host (lab2): idempotent and honest in check mode.

For each group of operations, three runs through ``run_host``:

1. the first run reports every operation changed, and the host is as asked;
2. the second run reports every operation unchanged, costs exactly one round
   trip per operation (plus one for the facts), and changes nothing: a
   fingerprint of the state (stat with inode and ctime, sha256, package and unit
   state) is the same before and after;
3. a check-mode run with a *different* desired state reports every operation
   "changed" (with ``check=True``), sends no change script (again one round trip
   per operation), and the fingerprint is still the same.

Each test cleans up what it made, so the tests can run in any order.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from keel.connection import Connection
from keel.host import Host
from keel.inventory import HostSpec
from keel.operation import q
from keel.ops import apt, files, python, server, systemd
from keel.output import Reporter
from keel.runner import HostOutcome, Play, RunOptions, run_host
from tests.conftest import TestLab

BASE = "/srv/kops-ops"
Body = Callable[[Host], Any]


# ------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def lab2(test_lab: TestLab) -> Iterator[HostSpec]:
    spec = test_lab.host("lab2")
    yield spec
    conn = Connection.open(spec)
    try:
        conn.run(f"rm -rf {BASE}")
    finally:
        conn.close()


@pytest.fixture
def root(lab2: HostSpec, connect) -> Connection:
    """A root agent on lab2 to look at the host (and set it up) behind keel's back."""
    conn = connect(lab2)
    conn.run(f"mkdir -p {BASE}")
    return conn


def run(spec: HostSpec, body: Body, *, check: bool = False,
        template_dirs: list[Path] | None = None) -> HostOutcome:
    """One run of ``body`` on ``spec``, as ``fab`` would do it; the output is kept."""
    reporter = Reporter(console=Console(file=io.StringIO(), width=200, highlight=False))
    out = run_host(spec, Play("ops", [], template_dirs=template_dirs or []),
                   RunOptions(check=check), reporter, body=body)
    out.output = reporter.console.file.getvalue()  # type: ignore[attr-defined]
    return out


def sh(conn: Connection, script: str) -> str:
    res = conn.run(script)
    assert res.ok, f"{script!r} failed: {res.err}"
    return res.out


def fingerprint(conn: Connection, *paths: str, extra: str = "") -> str:
    """Everything about ``paths`` (recursively) a change could touch, plus ``extra``'s output.

    Inode and ctime catch a rewrite with identical content and a no-op chmod/chown.
    """
    script = [
        f"for p in {' '.join(q(p) for p in paths)}; do",
        '  [ -e "$p" ] || [ -L "$p" ] || { echo "$p absent"; continue; }',
        "  find \"$p\" -printf '%p %y %u:%g %m %s ino=%i c=%C@ m=%T@ ->%l\\n' | sort",
        '  find "$p" -type f -exec sha256sum {} + | sort',
        "done",
        extra,
    ]
    return sh(conn, "\n".join(script))


def summary(out: HostOutcome) -> list[tuple[str, str, bool]]:
    assert not out.failed and not out.unreachable, out.error
    return [(r.op, r.target, r.changed) for r in out.results]


def assert_idempotent(
    spec: HostSpec, conn: Connection, body: Body, other: Body, state: Callable[[], str],
    ops: list[tuple[str, str]], template_dirs: list[Path] | None = None,
    other_ops: list[tuple[str, str]] | None = None,
) -> tuple[HostOutcome, HostOutcome]:
    """Runs 2 and 3 of the module docstring; run 1 has been done and checked by the caller.

    ``ops`` are the (op, target) pairs of ``body``; ``other_ops`` those of ``other``
    if they differ. Returns the outcomes of the second run and of the check-mode run.
    """
    before = state()
    again = run(spec, body, template_dirs=template_dirs)
    assert summary(again) == [(op, target, False) for op, target in ops]
    assert again.round_trips == 1 + len(ops), "no-change ops must cost one round trip each"
    assert again.commands == 1 + len(ops)
    assert state() == before, "the second run changed the host"

    plan = run(spec, other, check=True, template_dirs=template_dirs)
    assert summary(plan) == [(op, target, True) for op, target in other_ops or ops]
    assert all(r.check for r in plan.results)
    assert plan.round_trips == 1 + len(other_ops or ops), "check mode must not send changes"
    assert "would change" in plan.output  # type: ignore[attr-defined]
    assert state() == before, "check mode changed the host"
    return again, plan


# --------------------------------------------------------------------- apt
def test_apt_update_and_packages_present(lab2: HostSpec, root: Connection) -> None:
    sh(root, "rm -f /var/lib/keel/apt-update.stamp; "
             "dpkg -s tree >/dev/null 2>&1 && apt-get -q -y purge tree >/dev/null; "
             "dpkg -s jq >/dev/null 2>&1 && apt-get -q -y purge jq >/dev/null; true")

    def body(h: Host) -> None:
        apt.update(h)
        apt.packages(h, ["tree"])

    def other(h: Host) -> None:
        apt.update(h, cache_valid_time=0)
        apt.packages(h, ["tree", "jq"])

    first = run(lab2, body)
    assert summary(first) == [("update", "", True), ("packages", "tree", True)]
    # The lists were refreshed a moment ago, so the install does not update them again.
    assert first.results[1].commands == [
        f"{apt.APT_GET} --no-install-recommends install tree"]
    assert sh(root, "dpkg-query -W -f='${db:Status-Abbrev}' tree").strip() == "ii"

    def state() -> str:
        return fingerprint(root, "/var/lib/keel/apt-update.stamp", "/var/lib/dpkg/status",
                           extra="dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' tree jq "
                                 "2>&1; find /var/lib/apt/lists -maxdepth 1 -printf '%p %T@\\n'"
                                 " | sort")

    _, plan = assert_idempotent(lab2, root, body, other, state,
                                [("update", ""), ("packages", "tree")],
                                other_ops=[("update", ""), ("packages", "tree jq")])
    assert plan.results[1].reason == "installed jq"
    assert sh(root, "dpkg -s jq >/dev/null 2>&1 || echo missing").strip() == "missing"


def test_apt_packages_absent(lab2: HostSpec, root: Connection) -> None:
    sh(root, "dpkg -s tree >/dev/null 2>&1 || apt-get -q -y install tree >/dev/null")

    def body(h: Host) -> None:
        apt.packages(h, ["tree"], present=False)

    def other(h: Host) -> None:
        apt.packages(h, ["tree", "less"], present=False)

    first = run(lab2, body)
    assert summary(first) == [("packages", "tree", True)]
    assert first.results[0].reason == "removed tree"
    assert sh(root, "dpkg -s tree >/dev/null 2>&1 || echo gone").strip() == "gone"

    def state() -> str:
        return fingerprint(root, "/var/lib/dpkg/status", "/usr/bin/less",
                           extra="dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' tree less"
                                 " 2>&1; true")

    _, plan = assert_idempotent(lab2, root, body, other, state, [("packages", "tree")],
                                other_ops=[("packages", "tree less")])
    assert plan.results[0].reason == "removed less"
    assert sh(root, "dpkg-query -W -f='${db:Status-Abbrev}' less").strip() == "ii"


# ------------------------------------------------------------------ server
USERS_CLEANUP = "userdel -r kopsu 2>/dev/null; groupdel kopsg 2>/dev/null; groupdel kopsg2 2>/dev/null; true"


def _pubkey(tmp_path: Path, name: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                    "-f", str(tmp_path / name)], check=True, timeout=30)
    return (tmp_path / f"{name}.pub").read_text().strip()


def test_group_user_authorized_key(lab2: HostSpec, root: Connection, tmp_path: Path) -> None:
    key1, key2 = _pubkey(tmp_path, "kops1"), _pubkey(tmp_path, "kops2")
    sh(root, USERS_CLEANUP)

    def body(h: Host) -> None:
        server.group(h, "kopsg")
        server.user(h, "kopsu", group="kopsg", groups=["users"], system=False,
                    shell="/bin/bash", create_home=True)
        server.authorized_key(h, "kopsu", key1)

    def other(h: Host) -> None:
        server.group(h, "kopsg2")
        server.user(h, "kopsu", group="kopsg", groups=["users"], system=False,
                    shell="/bin/sh", create_home=True)
        server.authorized_key(h, "kopsu", key2)

    try:
        first = run(lab2, body)
        assert summary(first) == [("group", "kopsg", True), ("user", "kopsu", True),
                                  ("authorized_key", "kopsu", True)]
        assert sh(root, "getent passwd kopsu | cut -d: -f6,7; id -gn kopsu; id -Gn kopsu") == (
            "/home/kopsu:/bin/bash\nkopsg\nkopsg users\n")
        assert sh(root, "cat /home/kopsu/.ssh/authorized_keys") == key1 + "\n"
        assert sh(root, "stat -c '%U:%G %a' /home/kopsu/.ssh /home/kopsu/.ssh/authorized_keys") == (
            "kopsu:kopsg 700\nkopsu:kopsg 600\n")

        def state() -> str:
            return fingerprint(root, "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow",
                               "/home/kopsu", extra="getent group kopsg2; true")

        _, plan = assert_idempotent(
            lab2, root, body, other, state,
            [("group", "kopsg"), ("user", "kopsu"), ("authorized_key", "kopsu")],
            other_ops=[("group", "kopsg2"), ("user", "kopsu"), ("authorized_key", "kopsu")])
        assert plan.results[1].reason == "shell /bin/bash -> /bin/sh"
    finally:
        sh(root, USERS_CLEANUP)


def test_authorized_key_for_a_user_made_in_the_same_run(lab2: HostSpec, root: Connection,
                                                        tmp_path: Path) -> None:
    """Check mode cannot see the user an earlier op would create; a real run must not guess."""
    key = _pubkey(tmp_path, "kops3")
    sh(root, USERS_CLEANUP)

    def body(h: Host) -> None:
        server.user(h, "kopsu", system=False, shell="/bin/bash", create_home=True)
        server.authorized_key(h, "kopsu", key)

    try:
        plan = run(lab2, body, check=True)
        assert summary(plan) == [("user", "kopsu", True), ("authorized_key", "kopsu", True)]
        assert plan.results[1].reason == "key added (user kopsu does not exist yet)"
        assert sh(root, "getent passwd kopsu || echo none").strip() == "none"

        # Without the user, the real change fails in one line and writes nothing.
        alone = run(lab2, lambda h: server.authorized_key(h, "kopsu", key))
        assert alone.failed and alone.error == "lab2: authorized_key kopsu: user kopsu does not exist"
        assert sh(root, "ls -d /.ssh 2>/dev/null || echo none").strip() == "none"

        first = run(lab2, body)
        assert summary(first) == [("user", "kopsu", True), ("authorized_key", "kopsu", True)]
        assert sh(root, "cat /home/kopsu/.ssh/authorized_keys") == key + "\n"
    finally:
        sh(root, USERS_CLEANUP)


def test_hostname(lab2: HostSpec, root: Connection) -> None:
    saved = {p: sh(root, f"cat {p}") for p in ("/etc/hostname", "/etc/hosts")}
    assert saved["/etc/hostname"] == "lab2\n"
    try:
        first = run(lab2, lambda h: server.hostname(h, "kops-renamed"))
        assert summary(first) == [("hostname", "kops-renamed", True)]
        assert first.results[0].reason == "lab2 -> kops-renamed"
        assert sh(root, "hostname; cat /etc/hostname; grep '^127.0.1.1' /etc/hosts") == (
            "kops-renamed\nkops-renamed\n127.0.1.1\tkops-renamed\n")

        def state() -> str:
            return fingerprint(root, "/etc/hostname", "/etc/hosts", extra="hostname")

        assert_idempotent(lab2, root, lambda h: server.hostname(h, "kops-renamed"),
                          lambda h: server.hostname(h, "kops-other"), state,
                          [("hostname", "kops-renamed")], other_ops=[("hostname", "kops-other")])
    finally:
        for path, text in saved.items():
            root.run(f"cat > {path}", stdin=text.encode())
        sh(root, "hostname lab2")
    assert sh(root, "hostname") == "lab2\n"


def test_command_creates_and_unless(lab2: HostSpec, root: Connection) -> None:
    d = f"{BASE}/cmd"
    sh(root, f"rm -rf {d} && install -d -o debian -g debian {d}")

    def body(h: Host) -> None:
        server.command(h, f"echo one >> {d}/log && touch {d}/made", creates=f"{d}/made")
        server.command(h, "echo two >> log2", unless=f"grep -qx two {d}/log2", chdir=d)
        server.command(h, "id -un > who", creates=f"{d}/who", chdir=d, user="debian")

    def other(h: Host) -> None:
        server.command(h, f"echo one >> {d}/log && touch {d}/made", creates=f"{d}/made2")
        server.command(h, "echo two >> log2", unless="false", chdir=d)
        server.command(h, "id -un > who", creates=f"{d}/who2", chdir=d, user="debian")

    try:
        first = run(lab2, body)
        assert [changed for _, _, changed in summary(first)] == [True, True, True]
        assert first.results[2].commands == [
            f"runuser -u debian -- sh -c 'cd {d} && id -un > who'"]
        assert sh(root, f"cat {d}/log {d}/log2 {d}/who; stat -c %U {d}/who") == (
            "one\ntwo\ndebian\ndebian\n")
        ops = [(r.op, r.target) for r in first.results]
        assert_idempotent(lab2, root, body, other, lambda: fingerprint(root, d), ops)
        assert sh(root, f"ls {d}") == "log\nlog2\nmade\nwho\n"
    finally:
        sh(root, f"rm -rf {d}")


# ------------------------------------------------------------------- files
def test_directory_file_symlink_absent(lab2: HostSpec, root: Connection) -> None:
    d = f"{BASE}/files"
    sh(root, f"rm -rf {d} {BASE}/gone && mkdir -p {BASE}/gone/sub && touch {BASE}/gone/sub/x")

    def body(h: Host) -> None:
        files.directory(h, d, owner="debian", group="debian", mode="0750")
        files.file(h, f"{d}/f.txt", "hello\n", owner="debian", group="debian", mode="0640")
        files.symlink(h, f"{d}/link", "f.txt")
        files.absent(h, f"{BASE}/gone")

    def other(h: Host) -> None:
        files.directory(h, d, owner="debian", group="debian", mode="0700")
        files.file(h, f"{d}/f.txt", "bye\n", owner="debian", group="debian", mode="0640")
        files.symlink(h, f"{d}/link", "elsewhere")
        files.absent(h, f"{d}/f.txt")

    try:
        first = run(lab2, body)
        ops = [("directory", d), ("file", f"{d}/f.txt"), ("symlink", f"{d}/link"),
               ("absent", f"{BASE}/gone")]
        assert summary(first) == [(op, t, True) for op, t in ops]
        assert first.results[1].diff == (
            f"--- {d}/f.txt (before)\n+++ {d}/f.txt (after)\n@@ -0,0 +1 @@\n+hello\n")
        assert sh(root, f"stat -c '%F %U:%G %a' {d} {d}/f.txt; cat {d}/f.txt; readlink {d}/link; "
                        f"ls {BASE}/gone 2>/dev/null || echo gone") == (
            "directory debian:debian 750\nregular file debian:debian 640\nhello\nf.txt\ngone\n")

        def state() -> str:
            return fingerprint(root, d, f"{BASE}/gone")

        _, plan = assert_idempotent(lab2, root, body, other, state, ops, other_ops=[
            *ops[:3], ("absent", f"{d}/f.txt")])
        assert plan.results[1].diff == (
            f"--- {d}/f.txt (before)\n+++ {d}/f.txt (after)\n@@ -1 +1 @@\n-hello\n+bye\n")
        assert plan.results[2].reason == "f.txt -> elsewhere"

        # A mode-only change keeps the content (same inode) and reports no diff.
        ino = sh(root, f"stat -c %i {d}/f.txt")
        chmod = run(lab2, lambda h: files.file(h, f"{d}/f.txt", "hello\n", owner="debian",
                                               group="debian", mode="0600"))
        assert summary(chmod) == [("file", f"{d}/f.txt", True)]
        assert chmod.results[0].reason == "owner/mode debian:debian 640 -> debian:debian 600"
        assert sh(root, f"stat -c %i {d}/f.txt") == ino
        assert sh(root, f"stat -c %a {d}/f.txt") == "600\n"
    finally:
        sh(root, f"rm -rf {d} {BASE}/gone")


def test_file_validate(lab2: HostSpec, root: Connection) -> None:
    d = f"{BASE}/validate"
    path = f"{d}/conf.json"
    sh(root, f"rm -rf {d} && mkdir -p {d}")
    check = "python3 -m json.tool %s"

    def body(h: Host) -> None:
        files.file(h, path, '{"a": 1}\n', mode="0600", validate=check)

    def other(h: Host) -> None:
        files.file(h, path, '{"a": 2}\n', mode="0600", validate=check)

    try:
        first = run(lab2, body)
        assert summary(first) == [("file", path, True)]
        assert sh(root, f"cat {path}; stat -c '%U:%G %a' {path}") == '{"a": 1}\nroot:root 600\n'
        assert_idempotent(lab2, root, body, other, lambda: fingerprint(root, d),
                          [("file", path)])

        # Content that fails validation never replaces the live file; the temp file is gone.
        before = fingerprint(root, path)
        bad = run(lab2, lambda h: files.file(h, path, "{not json\n", mode="0600", validate=check))
        assert bad.failed
        assert bad.error.startswith(f"lab2: file {path}: validation failed: Expecting property name")
        assert "\n" not in bad.error
        assert fingerprint(root, path) == before
        assert sh(root, f"ls -A {d}") == "conf.json\n"
    finally:
        sh(root, f"rm -rf {d}")


def test_template(lab2: HostSpec, root: Connection, tmp_path: Path) -> None:
    (tmp_path / "kops.conf.j2").write_text(
        "# {{ inventory_hostname }} on {{ facts.os_codename }}\n"
        "port = {{ port }}\n"
        "{% for u in users %}\nuser = {{ u }}\n{% endfor %}\n")
    path = f"{BASE}/kops.conf"
    dirs = [tmp_path]

    def body(h: Host) -> None:
        files.template(h, "kops.conf.j2", path, mode="0640", port=8080, users=["a", "b"])

    def other(h: Host) -> None:
        files.template(h, "kops.conf.j2", path, mode="0640", port=9090, users=["a", "b"])

    try:
        first = run(lab2, body, template_dirs=dirs)
        assert summary(first) == [("template", path, True)]
        assert sh(root, f"cat {path}") == "# lab2 on bookworm\nport = 8080\nuser = a\nuser = b\n"
        _, plan = assert_idempotent(lab2, root, body, other, lambda: fingerprint(root, path),
                                    [("template", path)], template_dirs=dirs)
        assert plan.results[0].diff == (
            f"--- {path} (before)\n+++ {path} (after)\n@@ -1,4 +1,4 @@\n"
            " # lab2 on bookworm\n-port = 8080\n+port = 9090\n user = a\n user = b\n")

        # An undefined variable is one line with the template's name and line; no round trip.
        undefined = run(lab2, lambda h: files.template(h, "kops.conf.j2", path, users=[]),
                        template_dirs=dirs)
        assert undefined.failed and undefined.results == []
        assert undefined.error == "lab2: template kops.conf.j2:2: 'port' is undefined"
        assert undefined.round_trips == 1
    finally:
        sh(root, f"rm -f {path}")


def test_tree(lab2: HostSpec, root: Connection, tmp_path: Path) -> None:
    local = tmp_path / "src"
    (local / "bin").mkdir(parents=True)
    (local / "a.txt").write_text("A\n")
    (local / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (local / "bin" / "run.sh").chmod(0o755)
    (local / "__pycache__").mkdir()
    (local / "__pycache__" / "x.pyc").write_bytes(b"\0")
    remote = f"{BASE}/tree"

    def body(h: Host) -> None:
        files.tree(h, local, remote, owner="debian", group="debian")

    try:
        first = run(lab2, body)
        assert summary(first) == [("tree", str(local), True)]
        assert first.results[0].reason == "2 files uploaded"
        listing = sh(root, f"cd {remote} && find . -printf '%p %y %u:%g %m\\n' | sort; "
                           f"grep -c {files.tree_digest(local)} .keel-tree; ./bin/run.sh")
        assert listing == (
            ". d debian:debian 755\n./.keel-tree f debian:debian 644\n./a.txt f debian:debian 644\n"
            "./bin d debian:debian 755\n./bin/run.sh f debian:debian 755\n1\nhi\n")
        assert sh(root, f"ls -d {remote}.keel-new {remote}.keel-old 2>/dev/null; true") == ""

        def other(h: Host) -> None:
            (local / "c.txt").write_text("C\n")  # the desired state changes under the run
            files.tree(h, local, remote, owner="debian", group="debian")

        _, plan = assert_idempotent(lab2, root, body, other, lambda: fingerprint(root, remote),
                                    [("tree", str(local))])
        assert plan.results[0].reason == "3 files uploaded"
    finally:
        sh(root, f"rm -rf {remote}")


# ----------------------------------------------------------------- systemd
UNIT = "kops-sleep.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
UNIT_TEXT = ("[Unit]\nDescription=kops test {version}\n\n[Service]\nExecStart=/bin/sleep infinity\n\n"
             "[Install]\nWantedBy=multi-user.target\n")
PROPS = "ActiveState,UnitFileState,NeedDaemonReload,MainPID,InvocationID,Description"


def test_systemd_service(lab2: HostSpec, root: Connection) -> None:
    def body(version: int, **kwargs: Any) -> Body:
        def apply(h: Host) -> None:
            files.file(h, UNIT_PATH, UNIT_TEXT.format(version=version))
            systemd.service(h, UNIT, **kwargs)
        return apply

    def show() -> dict[str, str]:
        out = sh(root, f"systemctl show -p {PROPS} {UNIT}")
        return dict(line.split("=", 1) for line in out.splitlines())

    try:
        first = run(lab2, body(1))
        assert summary(first) == [("file", UNIT_PATH, True), ("service", UNIT, True)]
        assert first.results[1].commands[-2:] == [f"systemctl enable {UNIT}",
                                                  f"systemctl start {UNIT}"]
        started = show()
        assert (started["ActiveState"], started["UnitFileState"]) == ("active", "enabled")

        def state() -> str:
            return fingerprint(root, UNIT_PATH, "/etc/systemd/system/multi-user.target.wants",
                               extra=f"systemctl show -p {PROPS} {UNIT}")

        _, plan = assert_idempotent(lab2, root, body(1), body(2, enabled=False, running=False),
                                    state, [("file", UNIT_PATH), ("service", UNIT)])
        assert plan.results[1].commands == [f"systemctl disable {UNIT}", f"systemctl stop {UNIT}"]

        # An edited unit file: daemon-reload, and nothing else (no restart).
        edited = run(lab2, body(2))
        assert summary(edited) == [("file", UNIT_PATH, True), ("service", UNIT, True)]
        assert edited.results[1].commands == ["systemctl daemon-reload"]
        assert edited.results[1].reason == "unit file changed"
        now = show()
        assert now["Description"] == "kops test 2" and now["NeedDaemonReload"] == "no"
        assert (now["MainPID"], now["InvocationID"]) == (started["MainPID"],
                                                         started["InvocationID"])
        # Nothing changed since: no daemon-reload.
        again = run(lab2, body(2))
        assert summary(again) == [("file", UNIT_PATH, False), ("service", UNIT, False)]
        assert again.results[1].commands == []
        assert again.round_trips == 3
    finally:
        sh(root, f"systemctl disable --now {UNIT} 2>/dev/null; rm -f {UNIT_PATH}; "
                 "systemctl daemon-reload")
    assert show()["ActiveState"] == "inactive"


# ------------------------------------------------------------------ python
def test_python_venv(lab2: HostSpec, root: Connection) -> None:
    path = f"{BASE}/venv"
    setup = run(lab2, lambda h: apt.packages(h, ["python3-venv"]))
    assert not setup.failed, setup.error

    def body(h: Host) -> None:
        python.venv(h, path, "six==1.16.0\n")

    def other(h: Host) -> None:
        python.venv(h, path, "six==1.15.0\n")

    try:
        first = run(lab2, body)
        assert summary(first) == [("venv", path, True)]
        assert first.results[0].reason == "created"
        assert sh(root, f"{path}/bin/python -c 'import six; print(six.__version__)'") == "1.16.0\n"
        assert sh(root, f"cat {path}/requirements.txt") == "six==1.16.0\n"
        marker = sh(root, f"cat {path}/.keel-venv").split()
        assert marker[:2] == [python.requirements_key("six==1.16.0\n"), "/usr/bin/python3.11"]

        def state() -> str:
            return fingerprint(root, path)

        _, plan = assert_idempotent(lab2, root, body, other, state, [("venv", path)])
        assert plan.results[0].reason == "requirements or interpreter changed"
    finally:
        sh(root, f"rm -rf {path}")

