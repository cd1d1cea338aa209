"""bootstrap -> deploy -> verify on a lab host, idempotence, several apps, and bad input.

Every bad-input case checks: one line naming the host and the cause, a
non-zero exit, and the host still serving what it served before.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import ROOT, TestLab, fab


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
    assert "10 passed" in proc.stdout
    assert 'failures="0"' in junit.read_text()


def test_serves_the_app_through_nginx(deployed: HostSpec) -> None:
    code, body = _get(deployed, "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, body = _get(deployed, "/static/style.css")
    assert code == 200 and body


def test_second_deploy_changes_nothing_and_restarts_nothing(
        test_lab: TestLab, deployed: HostSpec) -> None:
    pid = _main_pid(deployed)
    proc = fab("deploy", "--limit", "lab1", "--stats", "--json", "/dev/stdout",
               inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout
    doc = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    host = doc["hosts"]["lab1"]
    assert host["changed"] == 0, [r for r in host["results"] if r["changed"]]
    # One probe per operation, plus facts, the run lock (take, drop) and nginx's port check.
    assert host["round_trips"] == len(host["results"]) + 4
    assert _main_pid(deployed) == pid


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


# ------------------------------------------------------------------ bad input
def _apps(**overrides: object) -> str:
    app = {"name": "hello", "source": "app", "module": "hello:create_app()",
           "env": {"APP_SECRET_KEY": "lab-only-secret-change-me"},
           "pre_start": ["python -m hello.migrate"], **overrides}
    return json.dumps({"apps": [app]})


@pytest.fixture
def broken_app(tmp_path: Path) -> Path:
    src = tmp_path / "app"
    shutil.copytree(ROOT / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _deploy_bad(test_lab: TestLab, deployed: HostSpec, extra: str) -> str:
    code, before = _get(deployed)
    assert code == 200
    try:
        proc = fab("deploy", "--limit", "lab1", "--extra-vars", extra,
                   inventory=test_lab.inventory_path)
        assert proc.returncode != 0, proc.stdout
        line = _error_line(proc, "lab1")
        assert _get(deployed) == (200, before), "the host stopped serving the old release"
    finally:  # put the good release back, so one failure does not cascade
        fab("deploy", "--limit", "lab1", inventory=test_lab.inventory_path)
    return line


def test_missing_app_dir(test_lab: TestLab, deployed: HostSpec) -> None:
    line = _deploy_bad(test_lab, deployed, _apps(source="/nonexistent/app"))
    assert line == "lab1: app hello: source directory /nonexistent/app does not exist"


def test_missing_module(test_lab: TestLab, deployed: HostSpec) -> None:
    line = _deploy_bad(test_lab, deployed, _apps(module="nosuchmodule:app"))
    assert line.startswith("lab1: command hello: import nosuchmodule:app in release ")
    assert line.endswith("ModuleNotFoundError: No module named 'nosuchmodule'")


def test_app_that_fails_to_import(test_lab: TestLab, deployed: HostSpec, broken_app: Path) -> None:
    init = broken_app / "hello" / "__init__.py"
    init.write_text(init.read_text() + "\nimport definitely_not_installed\n")
    line = _deploy_bad(test_lab, deployed, _apps(source=str(broken_app)))
    assert line.endswith("ModuleNotFoundError: No module named 'definitely_not_installed'")


def test_requirements_that_fail_to_install(test_lab: TestLab, deployed: HostSpec,
                                           broken_app: Path) -> None:
    (broken_app / "requirements.txt").write_text("flask==3.1.3\nno-such-package-keel==9.9.9\n")
    line = _deploy_bad(test_lab, deployed, _apps(source=str(broken_app)))
    assert line.startswith("lab1: venv /srv/hello/venvs/")
    assert "no-such-package-keel==9.9.9" in line


def test_invalid_nginx_config_from_vars(test_lab: TestLab, deployed: HostSpec) -> None:
    line = _deploy_bad(test_lab, deployed, _apps(client_max_body_size="10 megabytes"))
    assert line.startswith("lab1: template /etc/nginx/sites-available/hello: validation failed:")
    assert "client_max_body_size" in line


def test_failing_template(test_lab: TestLab, deployed: HostSpec) -> None:
    line = _deploy_bad(test_lab, deployed, _apps(env={"NOT A NAME": "x"}))
    assert line == ("lab1: template app.env.j2:6: "
                    "'ERROR_app_env_keys_must_be_valid_environment_variable_names' is undefined")


def test_unknown_app_setting(test_lab: TestLab, deployed: HostSpec) -> None:
    line = _deploy_bad(test_lab, deployed, _apps(procesess=4))
    assert line == "lab1: apps: hello: unknown setting(s) ['procesess']"


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
