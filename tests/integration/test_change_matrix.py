"""The change matrix: every kind of change, deployed under load, fails no request.

Each row changes one thing on the shared deployed host (lab1) while wrk keeps
8 keep-alive connections busy, then proves the new setting is in effect on the
host. A second set of rows deploys a change whose new master cannot start:
the canary refuses it, the run fails with one line, and the old master serves
throughout. Each test leaves lab1 serving the example app again (the
``variant`` fixture redeploys it).

The counts of the last run are written to ``reports/change-matrix.md``;
docs/zero-downtime.md keeps a copy.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keel.connection import Connection
from keel.inventory import HostSpec
from roles.uwsgi import READ_STATS
from tests.conftest import ROOT, TestLab, fab
from tests.integration.conftest import Variant, _deploy, _one_line, _version, run_ok
from tests.load import Load, LoadResult

REPORT = ROOT / "reports" / "change-matrix.md"
ROWS: list[tuple[str, str, LoadResult, float]] = []


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if ROWS:
        REPORT.parent.mkdir(exist_ok=True)
        lines = ["| change | what keel did | requests | non-2xx | socket errors | seconds |",
                 "| --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {kind} | {how} | {r.requests} | {r.non2xx} | "
                  f"{r.connect + r.read + r.write + r.timeout} | {s:.1f} |"
                  for kind, how, r, s in ROWS]
        REPORT.write_text("\n".join(lines) + "\n")


def _run(conn: Connection, script: str) -> str:
    return run_ok(conn, script).strip()


def _runtime(spec: HostSpec) -> dict:
    out = subprocess.run(["curl", "-s", "--max-time", "5", f"http://{spec.address}/runtime"],
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _main_pid(conn: Connection) -> str:
    return _run(conn, "systemctl show -p MainPID --value hello")


def _under_load(spec: HostSpec, kind: str, how: str, action: Callable[[], object],
                headers: tuple[str, ...] = ()) -> object:
    """Run ``action`` while wrk loads lab1; record the row; fail on any failed request."""
    with Load(f"http://{spec.address}/version", connections=8, max_seconds=300,
              max_requests=2_000_000, headers=headers) as load:
        time.sleep(0.5)  # load is flowing before the change starts
        t0 = time.monotonic()
        out = action()
        seconds = time.monotonic() - t0
        time.sleep(0.5)
    result = load.result
    assert result is not None and result.requests > 100, result
    ROWS.append((kind, how, result, seconds))
    assert result.errors == 0, f"{kind}: {result}"
    return out


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


# ------------------------------------------------------------------ changes
def test_code(test_lab: TestLab, deployed: HostSpec, variant: Variant) -> None:
    release = variant.change()
    proc = _under_load(deployed, "code", "chain reload",
                       lambda: _deploy(test_lab, variant))
    _ok(proc)
    assert "chain reload" in proc.stdout
    assert _version(deployed) == (200, release)


def test_requirements(test_lab: TestLab, deployed: HostSpec, variant: Variant,
                      root: Connection) -> None:
    before = _run(root, "readlink -f /srv/hello/current/.venv")
    with open(variant.dir / "requirements.txt", "a") as fh:
        fh.write("six==1.16.0\n")
    release = variant.release
    proc = _under_load(deployed, "requirements (new venv)", "new venv, restart under the socket",
                       lambda: _deploy(test_lab, variant))
    _ok(proc)
    after = _run(root, "readlink -f /srv/hello/current/.venv")
    assert after != before
    assert _version(deployed) == (200, release)
    assert _run(root, f"{after}/bin/python -c 'import six; print(six.__version__)'") == "1.16.0"


def test_uwsgi_version(test_lab: TestLab, deployed: HostSpec, variant: Variant) -> None:
    assert _runtime(deployed)["uwsgi"] != "2.0.30"
    proc = _under_load(deployed, "uWSGI version", "new venv, restart under the socket",
                       lambda: _deploy(test_lab, variant, uwsgi_version="2.0.30"))
    _ok(proc)
    assert _runtime(deployed)["uwsgi"] == "2.0.30"  # the master itself was replaced


def test_ini(test_lab: TestLab, deployed: HostSpec, variant: Variant, root: Connection) -> None:
    pid = _main_pid(root)
    proc = _under_load(deployed, "uWSGI ini (threads 4 -> 2)", "graceful reload (SIGHUP)",
                       lambda: _deploy(test_lab, variant, threads=2))
    _ok(proc)
    assert _main_pid(root) == pid  # the same master re-read its ini
    script = READ_STATS + "print(json.dumps(read_stats('/run/hello/stats.sock')))"
    workers = json.loads(_run(root, f"python3 -c {shlex.quote(script)}"))["workers"]
    assert workers and all(len(w["cores"]) == 2 for w in workers), workers


def test_env_file(test_lab: TestLab, deployed: HostSpec, variant: Variant,
                  root: Connection) -> None:
    base = {"APP_SECRET_KEY": "lab-only-secret-change-me"}
    steps = [("add a key", {**base, "APP_GREETING": "hello"}),
             ("change a value", {**base, "APP_GREETING": "bonjour"}),
             ("remove a key", base)]
    for what, env in steps:
        pid = _main_pid(root)
        proc = _under_load(deployed, f"env file: {what}", "restart under the socket",
                           lambda env=env: _deploy(test_lab, variant, env=env))
        _ok(proc)
        assert _main_pid(root) != pid
        runtime = _runtime(deployed)  # APP_GREETING is the one value the app shows
        assert runtime["greeting"] == env.get("APP_GREETING"), what
        assert ("APP_GREETING" in runtime["settings"]) == ("APP_GREETING" in env), what


def test_systemd_unit(test_lab: TestLab, deployed: HostSpec, variant: Variant,
                      root: Connection) -> None:
    proc = _under_load(deployed, "systemd unit (MemoryHigh=400M)", "restart under the socket",
                       lambda: _deploy(test_lab, variant,
                                       systemd_options={"MemoryHigh": "400M"}))
    _ok(proc)
    assert _run(root, "systemctl show -p MemoryHigh --value hello") == str(400 * 1024**2)


def test_nginx_site(test_lab: TestLab, deployed: HostSpec, variant: Variant,
                    tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"x" * 12 * 1024**2)

    def post() -> str:
        return subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
             "--data-binary", f"@{body}", f"http://{deployed.address}/version"],
            capture_output=True, text=True).stdout

    assert post() == "413"  # over the default 10m
    # A graceful nginx reload closes idle keep-alive connections; a request sent on
    # one at that instant sees the close, which HTTP clients answer by sending it
    # again on a new connection. wrk does not, so here each request has its own.
    proc = _under_load(deployed, "nginx site (client_max_body_size 20m), one connection "
                       "per request", "nginx -t, graceful reload",
                       lambda: _deploy(test_lab, variant, client_max_body_size="20m"),
                       headers=("Connection: close",))
    _ok(proc)
    # nginx passes it on; the app takes GET only and answers without reading the body,
    # which must reach the client as the app's 405, not as nginx's 502 (post-buffering).
    assert [post() for _ in range(5)] == ["405"] * 5


def test_bootstrap_rerun(test_lab: TestLab, deployed: HostSpec, root: Connection) -> None:
    extra = json.dumps({"firewall_allow_tcp": [22, 80, 443, 8081], "apt_cache_valid_time": 0})
    try:
        proc = _under_load(
            deployed, "fab bootstrap again (apt update, firewall rule added)", "nft reload",
            lambda: fab("bootstrap", "--limit", "lab1", "--extra-vars", extra,
                        inventory=test_lab.inventory_path))
        _ok(proc)
        assert "8081" in _run(root, "nft list chain inet filter input")
    finally:
        fab("bootstrap", "--limit", "lab1", inventory=test_lab.inventory_path, check=True)


def test_rollback(test_lab: TestLab, deployed: HostSpec, variant: Variant) -> None:
    first = variant.change()
    _ok(_deploy(test_lab, variant))
    variant.change()
    _ok(_deploy(test_lab, variant))
    proc = _under_load(deployed, "fab rollback", "chain reload",
                       lambda: fab("rollback", "--limit", "lab1",
                                   inventory=test_lab.inventory_path))
    _ok(proc)
    assert _version(deployed) == (200, first)


# ------------------------------------------------------- refused before traffic
@dataclass
class Refused:
    id: str
    overrides: dict
    message: str  # the end of the one line the run prints


REFUSED = [
    Refused("unit-directive-breaks-start",
            {"systemd_options": {"ReadWritePaths": "/srv/hello/no-such-dir"}},
            "its service did not start: hello-canary.service: Failed at step NAMESPACE "),
    Refused("ini-option-rejected", {"uwsgi_options": {"no-such-option": "1"}},
            "its service did not start: [strict-mode] unknown config directive: no-such-option"),
    Refused("env-breaks-the-app", {"env": {"APP_SECRET_KEY": ""}},
            '"reason":"missing config: APP_SECRET_KEY"'),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_a_new_master_that_cannot_start_is_refused(case: Refused, test_lab: TestLab,
                                                   deployed: HostSpec, variant: Variant,
                                                   root: Connection) -> None:
    before, pid = _version(deployed), _main_pid(root)
    files = "md5sum /etc/systemd/system/hello.service /etc/uwsgi-apps/hello.ini /srv/hello/shared/env"
    sums = _run(root, files)
    proc = _under_load(deployed, f"refused: {case.id}", "canary failed; nothing changed",
                       lambda: _deploy(test_lab, variant, **case.overrides))
    assert proc.returncode != 0
    line = _one_line(proc)
    assert line.startswith(f"lab1: command hello: canary of release {variant.release}: "), line
    assert case.message in line, line
    assert _version(deployed) == before and _main_pid(root) == pid
    assert _run(root, files) == sums  # the live unit, ini and env file are as they were
    assert _run(root, "ls /run/systemd/system/ /run/uwsgi-apps/ | grep -c canary || true") == "0"


def test_request_in_flight_finishes(deployed: HostSpec, root: Connection) -> None:
    """A restart (a new master) lets the old one finish what it is doing: nothing is cut."""
    slow = subprocess.Popen(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", "30",
         f"http://{deployed.address}/io?seconds=4"], stdout=subprocess.PIPE, text=True)
    try:
        script = READ_STATS + (
            "import time\nfor _ in range(100):\n"
            "    if any(w['status'] == 'busy' for w in read_stats('/run/hello/stats.sock')"
            "['workers']): break\n    time.sleep(0.05)\nelse: sys.exit('no busy worker')\n")
        _run(root, f"python3 -c {shlex.quote('import sys' + chr(10) + script)}")
        _run(root, "systemctl restart hello")
        out, _ = slow.communicate(timeout=60)
    finally:
        slow.kill()
    code, seconds = out.split()
    assert code == "200" and float(seconds) >= 4, out
