"""Releases under load: zero-downtime switches, the health gate, rollback, and faults.

All on the shared deployed host (lab1 of the test lab). Each test leaves it
serving the example app again.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from keel.connection import Connection
from keel.inventory import HostSpec
from keel.lock import LOCK
from roles.uwsgi import READ_STATS
from tests.conftest import ROOT, TestLab, fab
from tests.integration.conftest import Variant, _deploy, _one_line, _version
from tests.load import Load


def test_five_deploys_under_load_drop_nothing(test_lab: TestLab, deployed: HostSpec,
                                              variant: Variant) -> None:
    url = f"http://{deployed.address}/version"
    with Load(url, connections=4, max_seconds=240, max_requests=400_000) as load:
        for _ in range(5):
            release = variant.change()
            proc = _deploy(test_lab, variant)
            assert proc.returncode == 0, proc.stdout[-2000:]
            assert "chain reload" in proc.stdout
            assert _version(deployed) == (200, release)
    result = load.result
    assert result is not None and result.requests > 500
    assert result.errors == 0, result


def test_new_requirements_switch_venvs_without_dropping(test_lab: TestLab, deployed: HostSpec,
                                                        variant: Variant) -> None:
    """A release with other requirements gets its own venv, and chain reloads onto it."""
    with open(variant.dir / "requirements.txt", "a") as fh:
        fh.write("six==1.16.0\n")
    with open(variant.dir / "hello" / "views.py", "a") as fh:
        fh.write("\n\n@bp.get('/six')\ndef six_version():\n    import six\n\n"
                 "    return {'six': six.__version__}\n")
    release = variant.change()
    with Load(f"http://{deployed.address}/version", connections=4, max_seconds=300) as load:
        proc = _deploy(test_lab, variant)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "venv /srv/hello/venvs/" in proc.stdout and "chain reload" in proc.stdout
    assert _version(deployed) == (200, release)
    six = subprocess.run(["curl", "-s", f"http://{deployed.address}/six"], capture_output=True,
                         text=True)
    assert json.loads(six.stdout) == {"six": "1.16.0"}
    assert load.result is not None and load.result.errors == 0, load.result


def test_changed_ini_is_a_graceful_reload_under_load(test_lab: TestLab, deployed: HostSpec,
                                                     variant: Variant) -> None:
    """Only the uWSGI ini changes: systemd's reload (SIGHUP) re-reads it in the same master."""
    conn = Connection.open(deployed, user="deploy")
    try:
        pid = conn.run("systemctl show -p MainPID --value hello").out.strip()
        with Load(f"http://{deployed.address}/version", connections=4, max_seconds=120) as load:
            proc = _deploy(test_lab, variant, threads=2)
        assert proc.returncode == 0, proc.stdout[-2000:]
        assert "hello: graceful reload" in proc.stdout and "restart hello" not in proc.stdout
        assert conn.run("systemctl show -p MainPID --value hello").out.strip() == pid
        script = READ_STATS + "print(json.dumps(read_stats('/run/hello/stats.sock')))"
        stats = conn.run(f"python3 -c {shlex.quote(script)}")
        assert stats.ok, stats.err
    finally:
        conn.close()
    workers = json.loads(stats.out)["workers"]
    assert workers and all(len(w["cores"]) == 2 for w in workers), workers
    assert load.result is not None and load.result.errors == 0, load.result


def test_unhealthy_release_never_takes_traffic(test_lab: TestLab, deployed: HostSpec,
                                               variant: Variant) -> None:
    before = _version(deployed)
    views = variant.dir / "hello" / "views.py"
    # /healthz answers 503 in this release: it must never become current.
    views.write_text(views.read_text().replace(
        "def _health_problem(s) -> str | None:\n",
        "def _health_problem(s) -> str | None:\n    return 'broken on purpose'\n"))
    with Load(f"http://{deployed.address}/version", connections=4, max_seconds=120) as load:
        proc = _deploy(test_lab, variant)
    assert proc.returncode != 0
    line = _one_line(proc)
    assert line.startswith(
        f"lab1: command hello: canary of release {variant.release}: /healthz answered 503: ")
    assert "broken on purpose" in line
    assert _version(deployed) == before
    assert load.result is not None and load.result.errors == 0, load.result


def test_release_failing_to_import_never_takes_traffic(test_lab: TestLab, deployed: HostSpec,
                                                       variant: Variant) -> None:
    before = _version(deployed)
    init = variant.dir / "hello" / "__init__.py"
    init.write_text(init.read_text() + "\nraise RuntimeError('broken release')\n")
    with Load(f"http://{deployed.address}/version", connections=4, max_seconds=120) as load:
        proc = _deploy(test_lab, variant)
    assert proc.returncode != 0
    assert _one_line(proc).endswith("RuntimeError: broken release")
    assert _version(deployed) == before
    assert load.result is not None and load.result.errors == 0, load.result


def test_releases_and_rollback(test_lab: TestLab, deployed: HostSpec, variant: Variant) -> None:
    first = variant.change()
    assert _deploy(test_lab, variant).returncode == 0
    second = variant.change()
    assert _deploy(test_lab, variant).returncode == 0
    listing = fab("releases", "--limit", "lab1", inventory=test_lab.inventory_path, check=True)
    assert f"hello  {second}  current" in listing.stdout
    assert f"hello  {first}  previous" in listing.stdout
    with Load(f"http://{deployed.address}/version", connections=4, max_seconds=120) as load:
        proc = fab("rollback", "--limit", "lab1", inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout
    assert _version(deployed) == (200, first)
    assert load.result is not None and load.result.errors == 0, load.result
    back = fab("rollback", "--limit", "lab1", "--to", second, inventory=test_lab.inventory_path)
    assert back.returncode == 0 and _version(deployed) == (200, second)
    missing = fab("rollback", "--limit", "lab1", "--to", "0123456789ab",
                  inventory=test_lab.inventory_path)
    assert missing.returncode != 0
    assert _one_line(missing).startswith(
        "lab1: app hello: release 0123456789ab does not exist (have: ")


def test_keeps_the_last_releases(test_lab: TestLab, deployed: HostSpec, variant: Variant) -> None:
    for _ in range(3):
        variant.change()
        assert _deploy(test_lab, variant).returncode == 0
    proc = fab("deploy", "--limit", "lab1", "--extra-vars",
               json.dumps({**json.loads(variant.extra()), "keep_releases": 2}),
               inventory=test_lab.inventory_path)
    assert proc.returncode == 0
    variant.change()
    proc = fab("deploy", "--limit", "lab1", "--extra-vars",
               json.dumps({**json.loads(variant.extra()), "keep_releases": 2}),
               inventory=test_lab.inventory_path)
    assert "prune" in proc.stdout, proc.stdout
    conn = Connection.open(deployed, user="deploy")
    try:
        kept = conn.run("ls /srv/hello/releases").out.split()
        venvs = conn.run("ls /srv/hello/venvs").out.split()
    finally:
        conn.close()
    assert len(kept) == 2 and variant.release in kept, kept
    assert len(venvs) == 1, venvs  # every kept release shares the one venv


def test_concurrent_deploy_fails_clearly(test_lab: TestLab, deployed: HostSpec,
                                         variant: Variant) -> None:
    variant.change()
    slow = variant.extra(pre_start=["python -m hello.migrate", "sleep 6"])
    first = subprocess.Popen(
        [sys.executable, "-m", "fabric", "deploy", "--limit", "lab1", "--inventory",
         str(test_lab.inventory_path), "--extra-vars", slow],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        second = fab("deploy", "--limit", "lab1", inventory=test_lab.inventory_path)
    finally:
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert second.returncode != 0
    line = _one_line(second)
    assert line.startswith("lab1: another run holds the lock: deploy by ")


KILL_POINTS = [0.8, 2.0, 3.5]


def _wait_until_unlocked(spec: HostSpec, timeout: float = 120) -> None:
    conn = Connection.open(spec, user="deploy")
    try:
        deadline = time.monotonic() + timeout
        while not conn.run(f"flock -n {LOCK} true").ok:
            assert time.monotonic() < deadline, "the killed run's lock was never freed"
            time.sleep(0.3)
    finally:
        conn.close()


@pytest.mark.parametrize("delay", KILL_POINTS)
def test_killed_deploy_leaves_a_serving_host_and_converges(
        test_lab: TestLab, deployed: HostSpec, variant: Variant, delay: float) -> None:
    old = _version(deployed)
    new = variant.change()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "deploy", "--limit", "lab1", "--inventory",
         str(test_lab.inventory_path), "--extra-vars", variant.extra()],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # The agent finishes the command it was running (a chain reload takes seconds),
    # then notices the dropped connection and exits: the lock frees itself.
    _wait_until_unlocked(deployed)
    code, release = _version(deployed)
    assert code == 200 and release in (old[1], new), (code, release)
    again = _deploy(test_lab, variant)
    assert again.returncode == 0, again.stdout[-2000:]
    assert _version(deployed) == (200, new)


def test_dropped_ssh_connection(test_lab: TestLab, deployed: HostSpec, variant: Variant) -> None:
    old = _version(deployed)
    variant.change()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "deploy", "--limit", "lab1", "--inventory",
         str(test_lab.inventory_path), "--extra-vars",
         variant.extra(pre_start=["python -m hello.migrate", "sleep 5"])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killer = Connection.open(deployed, user="deploy")
    try:
        # Wait until the deploy is inside its slow pre_start command, then cut it off.
        waited = killer.run("for i in $(seq 200); do pgrep -x sleep -u hello >/dev/null && exit 0; "
                            "sleep 0.1; done; exit 1")
        assert waited.ok, "the deploy never reached its pre_start command"
        # Only the deploy's own session: the sshd process above its pre_start command
        # (the killer's session is another "sshd: deploy").
        killed = killer.run(
            "p=$(pgrep -x sleep -u hello | head -n 1); while [ -n \"$p\" ] && [ \"$p\" != 1 ]; do"
            " case \"$(ps -o args= -p \"$p\")\" in 'sshd: deploy'*) kill -KILL \"$p\"; exit 0;; esac;"
            " p=$(ps -o ppid= -p \"$p\" | tr -d ' '); done; exit 1")
        assert killed.ok, "no sshd session above the deploy's pre_start command"
    finally:
        killer.close()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if ln.startswith("lab1: ")]
    assert lines == ["lab1: connection lost during a command"], out
    assert _version(deployed) == old
    # The cut-off command may still be running on the host; until it ends, the
    # lock keeps other runs out (the safe answer). Then a re-run converges.
    for _ in range(40):
        again = _deploy(test_lab, variant)
        if "another run holds the lock" not in again.stdout:
            break
        time.sleep(0.5)
    assert again.returncode == 0, again.stdout[-2000:]


def test_worker_killed_under_load(deployed: HostSpec) -> None:
    conn = Connection.open(deployed, user="deploy")
    try:
        with Load(f"http://{deployed.address}/version", connections=1, max_seconds=60,
                  max_requests=3000) as load:
            time.sleep(1)
            workers = conn.run("pgrep -f 'hello uWSGI worker'").out.split()
            assert workers, "no uWSGI worker found"
            conn.run(f"kill -KILL {workers[0]}")
            time.sleep(2)
        after = conn.run("pgrep -f 'hello uWSGI worker'").out.split()
    finally:
        conn.close()
    assert workers[0] not in after and after, "the worker was not respawned"
    assert load.result is not None and load.result.errors <= 1, load.result


def test_master_killed_is_restarted_by_systemd(test_lab: TestLab, deployed: HostSpec) -> None:
    conn = Connection.open(deployed, user="deploy")
    try:
        pid = conn.run("systemctl show -p MainPID --value hello").out.strip()
        conn.run(f"kill -KILL {pid}")
        for _ in range(60):
            time.sleep(0.5)
            now = conn.run("systemctl show -p MainPID,ActiveState --value hello").out.split()
            if now[0] not in ("0", pid) and now[1] == "active" and _version(deployed)[0] == 200:
                break
        else:
            pytest.fail(f"hello was not restarted: {now}")
    finally:
        conn.close()
    proc = fab("verify", "--limit", "lab1", inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_reboot_comes_back_by_itself(test_lab: TestLab, deployed: HostSpec) -> None:
    """`systemctl reboot` on the host: it comes back serving, and verify is green."""
    conn = Connection.open(deployed, user="deploy")
    conn.run("touch /run/keel-before-reboot; systemd-run --on-active=1 systemctl reboot")
    conn.close()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if _version(deployed)[0] != 200:
            continue
        try:
            conn = Connection.open(deployed, user="deploy")
        except Exception:  # sshd not up yet
            continue
        try:
            if conn.run("test -e /run/keel-before-reboot").rc != 0:
                break  # a new boot, serving
        finally:
            conn.close()
    else:
        pytest.fail("lab1 did not come back serving after its reboot")
    proc = fab("verify", "--limit", "lab1", inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_disk_full_during_deploy(test_lab: TestLab, deployed: HostSpec, variant: Variant) -> None:
    old = _version(deployed)
    variant.change()
    conn = Connection.open(deployed, user="deploy")
    # A full filesystem under releases/: a small tmpfs holding a copy of what is there.
    fill = ("mkdir -p /run/keel-full && mount -t tmpfs -o size=4m tmpfs /run/keel-full && "
            "cp -a /srv/hello/releases/. /run/keel-full/ && "
            "mount --bind /run/keel-full /srv/hello/releases && "
            "(cat /dev/zero > /srv/hello/releases/.filler 2>/dev/null; true)")
    try:
        assert conn.run(fill).ok
        proc = _deploy(test_lab, variant)
        assert proc.returncode != 0
        line = _one_line(proc)
        assert "No space left on device" in line, line
        assert _version(deployed) == old
    finally:
        # Lazily: workers may have their cwd in the copy until the next reload.
        conn.run("umount -l /srv/hello/releases; umount -l /run/keel-full; rmdir /run/keel-full")
        conn.close()
    assert os.path.exists(ROOT / "app")
