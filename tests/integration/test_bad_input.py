"""The bad-input table: each case gives one line naming the cause (and the host,
where there is one), a non-zero exit, and leaves lab1 serving what it served.

docs/bad-input.md lists the same cases; a test checks that the two agree.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import ROOT, TestLab, fab

DOC = ROOT / "docs" / "bad-input.md"


def _apps(**overrides: object) -> dict:
    app = {"name": "hello", "source": "app", "module": "hello:create_app()",
           "env": {"APP_SECRET_KEY": "lab-only-secret-change-me"},
           "pre_start": ["python -m hello.migrate"], **overrides}
    return {"apps": [app]}


def _copy_app(tmp: Path, edit: Callable[[Path], None]) -> str:
    src = tmp / "app"
    shutil.copytree(ROOT / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
    edit(src)
    return str(src)


def _append(relpath: str, text: str) -> Callable[[Path], None]:
    def edit(src: Path) -> None:
        with open(src / relpath, "a") as fh:
            fh.write(text)
    return edit


@dataclass
class Ctx:
    """What a case may use to build its command line."""

    lab: TestLab
    spec: HostSpec
    tmp: Path

    def inventory(self, **host_overrides: object) -> Path:
        """A copy of the lab inventory with lab1 only, its vars overridden."""
        data = yaml.safe_load(self.lab.inventory_path.read_text())
        hosts = data["all"]["children"]["app"]["hosts"]
        hosts = {"lab1": {**hosts["lab1"], **host_overrides}}
        data["all"]["children"]["app"]["hosts"] = hosts
        path = self.tmp / "inv" / "hosts.yml"
        path.parent.mkdir(exist_ok=True)
        (path.parent / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
        path.write_text(yaml.safe_dump(data))
        return path


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    message: str  # a regular expression for the whole line
    env: Callable[[Ctx], dict[str, str]] = field(default=lambda ctx: {})
    setup: Callable[[Ctx, Connection], None] | None = None
    teardown: Callable[[Ctx, Connection], None] | None = None


def deploy(**extra: object) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ["deploy", "--limit", "lab1", "--inventory", str(ctx.lab.inventory_path),
                        "--extra-vars", json.dumps(extra)]


def deploy_app(**overrides: object) -> Callable[[Ctx], list[str]]:
    return deploy(**_apps(**overrides))


def deploy_source(edit: Callable[[Path], None], **overrides: object) -> Callable[[Ctx], list[str]]:
    return lambda ctx: deploy_app(source=_copy_app(ctx.tmp, edit), **overrides)(ctx)


def _write(ctx: Ctx, name: str, text: str) -> str:
    path = ctx.tmp / name
    path.write_text(text)
    return str(path)


def _http_server_on_8080(ctx: Ctx, conn: Connection) -> None:
    conn.run("nohup python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 & "
             "for i in $(seq 50); do ss -ltnH 'sport = :8080' | grep -q . && break; sleep 0.1; done")


def _stop_http_server(ctx: Ctx, conn: Connection) -> None:
    conn.run("pkill -f 'http.server 8080' || true")


def _password_sudo_user(ctx: Ctx, conn: Connection) -> None:
    key = Path(ctx.spec.key_file + ".pub").read_text().strip()
    # In the deploy group: sshd lets only that group in (AllowGroups).
    conn.run("id pwuser >/dev/null 2>&1 || useradd -m -s /bin/bash -G deploy pwuser; "
             "echo 'pwuser:right-password' | chpasswd; "
             "echo 'pwuser ALL=(ALL) ALL' > /etc/sudoers.d/pwuser; chmod 440 /etc/sudoers.d/pwuser; "
             "install -d -m 700 -o pwuser -g pwuser ~pwuser/.ssh; "
             f"echo '{key}' > ~pwuser/.ssh/authorized_keys; "
             "chown pwuser: ~pwuser/.ssh/authorized_keys")


def _remove_password_sudo_user(ctx: Ctx, conn: Connection) -> None:
    conn.run("rm -f /etc/sudoers.d/pwuser; pkill -u pwuser; userdel -r pwuser 2>/dev/null; true")


def _other_key(ctx: Ctx) -> str:
    key = ctx.tmp / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return str(key)


H = r"lab1: "
CASES = [
    Case("inventory-yaml-syntax",
         lambda ctx: ["deploy", "--inventory", _write(ctx, "bad.yml", "all:\n  hosts:\n    a: b: c\n")],
         r"/.*/bad\.yml:3: mapping values are not allowed here"),
    Case("inventory-ini-syntax",
         lambda ctx: ["deploy", "--inventory", _write(ctx, "bad.ini", "[web\nweb1\n")],
         r"/.*/bad\.ini:1: .*"),
    Case("inventory-missing",
         lambda ctx: ["deploy", "--inventory", str(ctx.tmp / "nope.yml")],
         r"inventory: no such file: /.*/nope\.yml"),
    Case("limit-unknown-group",
         lambda ctx: ["deploy", "--inventory", str(ctx.lab.inventory_path), "--limit", "dbservers"],
         r"--limit: no host or group matches 'dbservers'"),
    Case("extra-vars-not-json",
         lambda ctx: ["deploy", "--inventory", str(ctx.lab.inventory_path), "--extra-vars", "{apps"],
         r"--extra-vars: not valid JSON: .*"),
    Case("app-without-name", deploy(apps=[{"source": "app"}]),
         H + r"apps: each app needs a name, got \{'source': 'app'\}"),
    Case("app-unknown-setting", deploy_app(procesess=4),
         H + r"apps: hello: unknown setting\(s\) \['procesess'\]"),
    Case("apps-duplicate-names", deploy(apps=[{"name": "hello"}, {"name": "hello"}]),
         H + r"apps: duplicate app names in \['hello', 'hello'\]"),
    Case("app-source-missing", deploy_app(source="/nonexistent/app"),
         H + r"app hello: source directory /nonexistent/app does not exist"),
    Case("app-requirements-missing", deploy_app(requirements="nope.txt"),
         H + r"app hello: requirements file /.*/app/nope\.txt does not exist"),
    Case("template-fails", deploy_app(env={"NOT A NAME": "x"}),
         H + r"template app\.env\.j2:\d+: "
             r"'ERROR_app_env_keys_must_be_valid_environment_variable_names' is undefined"),
    Case("module-missing", deploy_app(module="nosuchmodule:app"),
         H + r"command hello: import nosuchmodule:app in release \w{12}: "
             r"ModuleNotFoundError: No module named 'nosuchmodule'"),
    Case("app-import-error",
         deploy_source(_append("hello/__init__.py", "\nimport definitely_not_installed\n")),
         H + r"command hello: import hello:create_app\(\) in release \w{12}: "
             r"ModuleNotFoundError: No module named 'definitely_not_installed'"),
    Case("callable-not-wsgi", deploy_app(module="hello.config:DEFAULT_CPU_MAX_N"),
         H + r"command hello: import hello\.config:DEFAULT_CPU_MAX_N in release \w{12}: "
             r"hello\.config:DEFAULT_CPU_MAX_N is not a WSGI callable"),
    Case("requirement-fails",
         deploy_source(_append("requirements.txt", "no-such-package-keel==9.9.9\n")),
         H + r"venv /srv/hello/venvs/\w{12}: ERROR: No matching distribution found for "
             r"no-such-package-keel==9\.9\.9"),
    Case("pre-start-fails",
         deploy_app(pre_start=["echo 'migration failed: table locked' >&2; exit 3"]),
         H + r"command hello: echo 'migration failed: table locked' >&2; exit 3: "
             r"migration failed: table locked \(data restored as before\)"),
    Case("shared-path-escapes", deploy_app(shared_paths=["../etc"]),
         H + r"app hello: shared_paths: '\.\./etc' is not a path inside the release"),
    Case("server-name-duplicate",
         deploy(apps=[*_apps()["apps"], {**_apps()["apps"][0], "name": "hello2"}]),
         H + r"apps hello and hello2 both use server_name _ on port 80"),
    Case("healthy-statuses-bad", deploy_app(healthy_statuses="ok"),
         H + r"app hello: healthy_statuses 'ok' is not a list of codes like '2xx 3xx' or '200 302'"),
    Case("missing-required-config", deploy_app(env={}),
         H + r"command hello: canary of release \w{12}: /healthz answered 503: "
             r".*missing config: APP_SECRET_KEY.*"),
    Case("uwsgi-option-name-bad", deploy_app(uwsgi_options={"Bad Name": 1}),
         H + r"app hello: uwsgi_options: 'Bad Name': not an option name with one-line values"),
    Case("nginx-config-invalid", deploy_app(client_max_body_size="10 megabytes"),
         H + r"template /etc/nginx/sites-available/hello: validation failed: .*\[emerg\] "
             r".*\"client_max_body_size\" directive in /etc/nginx/sites-available/hello:\d+"),
    Case("port-taken", deploy_app(listen=8080),
         H + r"port 8080 is taken by python3 \(pid \d+\), not nginx",
         setup=_http_server_on_8080, teardown=_stop_http_server),
    Case("host-unreachable",
         lambda ctx: ["deploy", "--inventory",
                      str(ctx.inventory(ansible_host=ctx.spec.address.rsplit(".", 1)[0] + ".250"))],
         H + r"unreachable at 10\.83\.\d+\.250:22: .*"),
    Case("ssh-key-wrong",
         lambda ctx: ["deploy", "--inventory",
                      str(ctx.inventory(ansible_ssh_private_key_file=_other_key(ctx)))],
         H + r"authentication failed for deploy@10\.83\.\d+\.11 \(/.*/wrong_key\)"),
    Case("sudo-password-wrong",
         lambda ctx: ["bootstrap", "--check", "--inventory",
                      str(ctx.inventory(ansible_user="pwuser", initial_user="keep"))],
         H + r"sudo failed: wrong or missing sudo password",
         env=lambda ctx: {"FABRIC_SUDO_PASSWORD": "wrong-password"},
         setup=_password_sudo_user, teardown=_remove_password_sudo_user),
    Case("sudo-password-missing",
         lambda ctx: ["bootstrap", "--check", "--inventory",
                      str(ctx.inventory(ansible_user="pwuser", initial_user="keep"))],
         H + r"sudo failed: wrong or missing sudo password",
         setup=_password_sudo_user, teardown=_remove_password_sudo_user),
    Case("rollback-unknown-release",
         lambda ctx: ["rollback", "--limit", "lab1", "--inventory", str(ctx.lab.inventory_path),
                      "--to", "0123456789ab"],
         H + r"app hello: release 0123456789ab does not exist \(have: .*\)"),
    Case("rollback-unknown-app",
         lambda ctx: ["rollback", "--limit", "lab1", "--inventory", str(ctx.lab.inventory_path),
                      "--app", "nosuchapp"],
         H + r"rollback: no app named 'nosuchapp' \(apps: hello\)"),
]


def _version(spec: HostSpec) -> tuple[int, str]:
    proc = subprocess.run(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}",
                           f"http://{spec.address}/version"], capture_output=True, text=True)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, test_lab: TestLab, deployed: HostSpec, tmp_path: Path) -> None:
    ctx = Ctx(test_lab, deployed, tmp_path)
    before = _version(deployed)
    assert before[0] == 200
    admin = Connection.open(deployed, user="deploy")
    try:
        if case.setup:
            case.setup(ctx, admin)
        proc = fab(*case.argv(ctx), env=case.env(ctx))
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        assert "Traceback" not in output
        lines = [ln for ln in output.splitlines() if re.fullmatch(case.message, ln)]
        assert len(lines) == 1, f"no line matches {case.message!r}:\n{output}"
        assert _version(deployed) == before, "lab1 stopped serving what it served before"
    finally:
        if case.teardown:
            case.teardown(ctx, admin)
        admin.close()
        if case.id in ("missing-required-config", "template-fails"):
            # These reach the env file; put the good one back (and run its handler).
            fab("deploy", "--limit", "lab1", inventory=test_lab.inventory_path)


def test_the_table_is_documented() -> None:
    doc = DOC.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"docs/bad-input.md lacks: {missing}"
    assert len(CASES) >= 25
