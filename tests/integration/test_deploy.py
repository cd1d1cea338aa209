"""bootstrap -> deploy -> verify on a lab host, idempotence, several apps, lockout safety.

Bad input has its own table: test_bad_input.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import TestLab, fab


def _get(spec: HostSpec, path: str = "/version", host: str = "localhost") -> tuple[int, str]:
    """HTTP GET through nginx on port 80, from the controller over the lab network."""
    proc = subprocess.run(
        ["curl", "-s", "--max-time", "5", "-H", f"Host: {host}", "-w", "\n%{http_code}",
         f"http://{spec.address}{path}"], capture_output=True, text=True)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def _main_pid(spec: HostSpec, unit: str = "hello.service") -> str:
    conn = Connection.open(spec, user="deploy")
    try:
        return conn.run(f"systemctl show -p MainPID --value {unit}").out.strip()
    finally:
        conn.close()


def _error_line(proc: subprocess.CompletedProcess[str], host: str) -> str:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{host}: ")]
    assert len(lines) == 1, f"expected one error line for {host}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_verify_passes_and_writes_junit(test_lab: TestLab, deployed: HostSpec,
                                        tmp_path: Path) -> None:
    junit = tmp_path / "verify.xml"
    proc = fab("verify", "--limit", "lab1", "--junit-xml", str(junit),
               inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
    assert 'failures="0"' in junit.read_text()


def test_serves_the_app_through_nginx(deployed: HostSpec) -> None:
    code, body = _get(deployed, "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, body = _get(deployed, "/static/style.css")
    assert code == 200 and body


def _deploy_with_stats(test_lab: TestLab) -> dict[str, Any]:
    """``fab deploy --stats --json`` on lab1 (must succeed): lab1's part of the JSON."""
    proc = fab("deploy", "--limit", "lab1", "--stats", "--json", "/dev/stdout",
               inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout
    doc = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    return doc["hosts"]["lab1"]


def test_second_deploy_changes_nothing_and_restarts_nothing(
        test_lab: TestLab, deployed: HostSpec) -> None:
    pid = _main_pid(deployed)
    host = _deploy_with_stats(test_lab)
    assert host["changed"] == 0, [r for r in host["results"] if r["changed"]]
    # Facts, the run lock and every probe in one round trip (the probes the first deploy
    # left, keel.prefetch), then the lock's release: whatever the number of operations.
    assert host["round_trips"] == 2, host["round_trips"]
    assert host["prefetch_hits"] >= len(host["results"])
    assert _main_pid(deployed) == pid


def test_a_run_with_changes_costs_a_round_trip_per_change_plus_two(
        test_lab: TestLab, deployed: HostSpec) -> None:
    """A new env value: written, snapshot, pre_start, canary, env swapped in, restart.

    Each change is one round trip, with the probes expected after it riding behind
    (all the rest behind the last ones) and the health check behind the restart; a
    change whose probe was not at hand (a file with new content, a marker named after
    the new settings) rides with its probe. On top: the first request and the lock's
    release (16 round trips for these 6 changes before changes rode with their probes
    and new values were predicted, 11 before files and health checks rode too). Then
    back to the settings before."""
    host_vars = test_lab.inventory_path.parent / "host_vars"
    host_vars.mkdir(exist_ok=True)
    app = {"name": "hello", "source": "app", "module": "hello:create_app()",
           "env": {"APP_SECRET_KEY": "lab-only-secret-change-me", "EXTRA": "1"},
           "pre_start": ["python -m hello.migrate"]}
    (host_vars / "lab1.yml").write_text(json.dumps({"apps": [app]}))
    try:
        host = _deploy_with_stats(test_lab)
        assert host["changed"] == 6, [r["target"] for r in host["results"] if r["changed"]]
        assert host["round_trips"] <= host["changed"] + 2, host["round_trips"]
    except BaseException:
        (host_vars / "lab1.yml").unlink()
        fab("deploy", "--limit", "lab1", inventory=test_lab.inventory_path, check=True)
        raise
    (host_vars / "lab1.yml").unlink()
    # Back to settings deployed before: their snapshot, pre_start and canary markers are
    # there, and their names are foreseen from the env file's checksum (read in a batch,
    # no round trip each): the candidate, the env file and the restart.
    host = _deploy_with_stats(test_lab)
    assert host["changed"] == 3, [r["target"] for r in host["results"] if r["changed"]]
    assert host["round_trips"] <= host["changed"] + 2, host["round_trips"]
    code, _ = _get(deployed, "/healthz")
    assert code == 200


def test_verify_failure_names_host_and_problem(test_lab: TestLab, deployed: HostSpec) -> None:
    conn = Connection.open(deployed, user="deploy")
    try:
        conn.run("chmod 0644 /srv/hello/shared/env")
        proc = fab("verify", "--limit", "lab1", inventory=test_lab.inventory_path)
    finally:
        conn.run("chmod 0640 /srv/hello/shared/env")
        conn.close()
    assert proc.returncode != 0
    assert "lab1: /srv/hello/shared/env mode is 644, not 640" in proc.stdout


# ------------------------------------------------------------------ two apps
def test_two_apps_on_one_host(test_lab: TestLab) -> None:
    spec = test_lab.host("lab3")
    host_vars = test_lab.inventory_path.parent / "host_vars"
    host_vars.mkdir(exist_ok=True)
    (host_vars / "lab3.yml").write_text(json.dumps({"apps": [
        {"name": "hello", "source": "app", "module": "hello:create_app()",
         "server_name": "hello.test", "env": {"APP_SECRET_KEY": "one-secret-value"}},
        {"name": "second", "source": "app", "module": "wsgi:app",
         "server_name": "second.test", "env": {"APP_SECRET_KEY": "two-secret-value"}},
    ]}))
    try:
        fab("bootstrap", "--limit", "lab3", inventory=test_lab.inventory_path, check=True)
        fab("deploy", "--limit", "lab3", inventory=test_lab.inventory_path, check=True)
        for name in ("hello", "second"):
            code, body = _get(spec, "/version", host=f"{name}.test")
            assert code == 200 and json.loads(body)["name"] == name, body
        proc = fab("verify", "--limit", "lab3", inventory=test_lab.inventory_path)
        assert proc.returncode == 0, proc.stdout[-3000:]
        conn = Connection.open(spec, user="deploy")
        try:
            users = conn.run("stat -c %U /run/hello/uwsgi.sock /run/second/uwsgi.sock").out.split()
        finally:
            conn.close()
        assert users == ["hello", "second"]
    finally:
        (host_vars / "lab3.yml").unlink()


def test_bootstrap_with_wrong_deploy_key_leaves_sshd_unhardened(
        test_lab: TestLab, tmp_path: Path) -> None:
    spec = test_lab.host("lab4")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
                   check=True)
    other = (tmp_path / "other.pub").read_text().strip()
    proc = fab("bootstrap", "--limit", "lab4", "--extra-vars",
               json.dumps({"deploy_user_key": other}), inventory=test_lab.inventory_path)
    assert proc.returncode != 0
    line = _error_line(proc, "lab4")
    assert line.startswith("lab4: login as deploy failed (authentication failed for deploy@")
    assert line.endswith("sshd left unhardened")
    conn = Connection.open(spec)  # the initial login still works
    try:
        assert conn.run("test -e /etc/ssh/sshd_config.d/10-keel.conf").rc == 1
        assert "permitrootlogin without-password" in conn.run("sshd -T").out
    finally:
        conn.close()
