"""Operating a fleet on lab hosts: a load balancer in front of three app hosts, status, logs,
TLS (files, and ACME from Pebble on the lb).

lab5 is the load balancer (inventory group ``lb``) and lab6..lab8 the app
hosts (group ``app``), in an inventory of their own; lab1..lab4 belong to the
other modules, so this module can run beside them in one session.

Load through the load balancer uses one connection per request: each lb
reload (two per batch) closes idle keep-alive client connections, and wrk,
unlike browsers and HTTP libraries, does not retry a request sent on a
connection the server closed at that instant (see README, "Load balancer").
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import ROOT, TestLab, fab
from tests.integration import pebble as pebble_lab
from tests.integration.conftest import Variant
from tests.integration.pebble import Pebble, wait_for
from tests.load import Load

CONNECTION_VARS = ("ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
                   "ansible_ssh_common_args")
TLS_NAME = "hello.fleet.test"


@dataclass
class Fleet:
    inventory: Path
    lb: HostSpec
    apps: list[HostSpec]

    @property
    def hosts(self) -> list[HostSpec]:
        return [self.lb, *self.apps]


def _inventory(path: Path, groups: dict[str, list[HostSpec]]) -> Path:
    doc = {"all": {"children": {
        group: {"hosts": {s.name: {k: s.vars[k] for k in CONNECTION_VARS} for s in specs}}
        for group, specs in groups.items()}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (path.parent / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
    return path


@pytest.fixture(scope="module")
def fleet(test_lab: TestLab, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """lab5 (lb) + lab6..lab8 (app), bootstrapped and deployed; the app hosts in one batch."""
    specs = test_lab.hosts(8)[4:]
    inventory = _inventory(tmp_path_factory.mktemp("fleet") / "fleet.yml",
                           {"lb": specs[:1], "app": specs[1:]})
    fab("bootstrap", inventory=inventory, check=True)
    fab("deploy", "--serial", "3", inventory=inventory, check=True)
    return Fleet(inventory, specs[0], specs[1:])


def _get(url: str, *curl: str) -> tuple[int, str]:
    proc = subprocess.run(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", *curl, url],
                          capture_output=True, text=True)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def _release(spec: HostSpec) -> str:
    code, body = _get(f"http://{spec.address}/version")
    return json.loads(body)["release"] if code == 200 else f"HTTP {code}"


def _status(fleet: Fleet) -> dict:
    proc = fab("status", "--json", inventory=fleet.inventory, check=True)
    return json.loads(proc.stdout)["hosts"]


def _on(spec: HostSpec, script: str) -> str:
    conn = Connection.open(spec, user="deploy")
    try:
        return conn.run(script).out
    finally:
        conn.close()


# ------------------------------------------------------------------ load balancer
def test_lb_spreads_requests_over_every_app_host(fleet: Fleet) -> None:
    before = _status(fleet)
    for _ in range(30):
        assert _get(f"http://{fleet.lb.address}/version")[0] == 200
    after = _status(fleet)
    served = {s.name: after[s.name]["apps"]["hello"]["requests"]
              - before[s.name]["apps"]["hello"]["requests"] for s in fleet.apps}
    assert all(n >= 5 for n in served.values()), served
    pool = after[fleet.lb.name]["backends"]
    assert [(b["name"], b["address"], b["down"]) for b in pool] == [
        (s.name, f"{s.address}:80", False) for s in fleet.apps]


def test_second_deploy_changes_nothing_and_drains_nothing(fleet: Fleet) -> None:
    proc = fab("deploy", "--json", "/dev/stdout", inventory=fleet.inventory, check=True)
    doc = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert {name: h["changed"] for name, h in doc["hosts"].items()} == {
        s.name: 0 for s in fleet.hosts}
    assert "out of service" not in proc.stdout


def test_rolling_deploy_under_load_drops_nothing(fleet: Fleet, tmp_path: Path) -> None:
    variant = Variant(tmp_path, _on(fleet.apps[0], "python3 -V").split()[1])
    release = variant.change()
    with Load(f"http://{fleet.lb.address}/version", connections=4, max_seconds=240,
              max_requests=400_000, headers=("Connection: close",)) as load:
        t0 = time.monotonic()
        proc = fab("deploy", "--extra-vars", variant.extra(), inventory=fleet.inventory)
        seconds = time.monotonic() - t0
    result = load.result
    print(f"\nrolling deploy of {len(fleet.apps)} hosts: {seconds:.1f} s; load through the lb: {result}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    # One host per batch: out of service, deployed, back in, before the next one goes out.
    events = [ln.split(None, 1) for ln in proc.stdout.splitlines()
              if "out of service on" in ln or "back in service on" in ln]
    assert [(host, text.split(" on ")[0]) for host, text in events] == [
        (s.name, word) for s in fleet.apps for word in ("out of service", "back in service")]
    assert result is not None and result.requests > 1000, result
    assert result.errors == 0, result
    assert {s.name: _release(s) for s in fleet.apps} == {s.name: release for s in fleet.apps}
    assert " down;" not in _on(fleet.lb, "cat /etc/nginx/sites-available/lb")


def test_app_host_reboot_behind_the_lb_drops_nothing(fleet: Fleet) -> None:
    """An app host reboots under load: the lb's passive checks and retries carry every request."""
    spec = fleet.apps[0]
    with Load(f"http://{fleet.lb.address}/version", connections=4, max_seconds=300,
              max_requests=1_000_000, headers=("Connection: close",)) as load:
        _on(spec, "touch /run/keel-before-reboot; systemd-run --on-active=1 systemctl reboot")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if _get(f"http://{spec.address}/healthz")[0] != 200:
                continue
            with contextlib.suppress(Exception):  # sshd may not be up yet
                if "gone" in _on(spec, "test -e /run/keel-before-reboot || echo gone"):
                    break
        else:
            pytest.fail(f"{spec.name} did not come back serving after its reboot")
    result = load.result
    print(f"\nreboot of {spec.name} behind the lb: {result}")
    assert result is not None and result.requests > 500, result
    assert result.errors == 0, result


def test_verify_passes_on_the_lb_and_the_app_hosts(fleet: Fleet) -> None:
    proc = fab("verify", inventory=fleet.inventory)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


# ------------------------------------------------------------------ status
def test_status_table(fleet: Fleet) -> None:
    proc = fab("status", inventory=fleet.inventory, check=True)
    print(f"\n{proc.stdout}")
    lines = proc.stdout.splitlines()
    header = lines[1].split()  # some headers take two lines
    assert header[:4] == ["host", "app", "service", "release"]
    for col in ("workers", "busy/", "idle", "requests", "RPS", "avg", "ms", "RSS", "MiB", "respawns",
                "exceptions", "nginx"):
        assert col in lines[0].split() + header, lines[:2]
    lb_row = next(ln for ln in lines if ln.startswith(f"{fleet.lb.name} ")).split()
    assert lb_row[1:4] == ["(lb)", "3/3", "up"] and lb_row[-1] == "active"
    for spec in fleet.apps:
        row = next(ln for ln in lines if ln.startswith(f"{spec.name} ")).split()
        assert row[1:3] == ["hello", "active"] and row[-1] == "active", row
        running, configured = map(int, row[4].split("/"))
        assert 1 <= running <= configured, row
    assert "RPS: requests in 1 s between two samples" in proc.stdout


def test_status_json_watch_and_bad_input(fleet: Fleet) -> None:
    proc = fab("status", "--watch", "--json", "--interval", "0.5", "--count", "2",
               inventory=fleet.inventory, check=True)
    frames = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(frames) == 2
    assert frames[1]["rps_method"].startswith("change since the previous refresh")
    hello = frames[1]["hosts"][fleet.apps[0].name]["apps"]["hello"]
    assert hello["rps"] is not None and hello["processes"] >= hello["workers"] >= 1
    bad = fab("status", "--watch", "--interval", "0", inventory=fleet.inventory)
    assert bad.returncode != 0 and "--interval must be 0.5 to 60 seconds" in bad.stderr
    none = fab("status", "--app", "nope", inventory=fleet.inventory)
    assert none.returncode != 0 and "no selected host runs an app named 'nope'" in none.stderr


# ------------------------------------------------------------------ logs
def test_logs_prefix_every_line_with_its_host(fleet: Fleet) -> None:
    proc = fab("logs", "--lines", "20", inventory=fleet.inventory, check=True)
    lines = proc.stdout.splitlines()
    assert lines and all(ln.split()[0] in {s.name for s in fleet.hosts} for ln in lines), lines[:5]
    for spec in fleet.apps:
        assert any(ln.startswith(spec.name) and " hello[" in ln for ln in lines), spec.name
    only = fab("logs", "--app", "hello", "--lines", "5", inventory=fleet.inventory, check=True)
    assert {ln.split()[0] for ln in only.stdout.splitlines()} == {s.name for s in fleet.apps}
    # The lb's own journal: nginx's reloads during the rolling deploy.
    lb = fab("logs", "--since", "-30min", "--limit", fleet.lb.name, inventory=fleet.inventory,
             check=True)
    assert any(ln.startswith(f"{fleet.lb.name} ") and "Reloaded nginx.service" in ln
               for ln in lb.stdout.splitlines()), lb.stdout[-2000:]
    bad = fab("logs", "--since", "yesterdayish", "--limit", fleet.lb.name, inventory=fleet.inventory)
    assert bad.returncode != 0 and f"{fleet.lb.name}  Failed to parse timestamp" in bad.stdout


def _follow(fleet: Fleet, out: Path) -> subprocess.Popen[bytes]:
    """``fab logs --follow`` of the app on every app host, printing into ``out``."""
    with open(out, "w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "fabric", "logs", "--follow", "--app", "hello", "--lines", "0",
             "--inventory", str(fleet.inventory)], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)


def _await_lines(fleet: Fleet, out: Path, hosts: list[HostSpec]) -> None:
    """Until each of ``hosts`` has printed a line: uWSGI logs only slow and failing requests."""
    names, seen = {s.name for s in hosts}, set()
    deadline = time.monotonic() + 30
    while not names <= seen and time.monotonic() < deadline:
        _get(f"http://{fleet.lb.address}/io?seconds=1.1")
        seen = {ln.split()[0] for ln in out.read_text().splitlines() if "GET /io" in ln}
    assert names <= seen, out.read_text()[-2000:]


def _stream_gone_after(conn: Connection, since: float, limit: float = 30) -> float:
    """Seconds from ``since`` until the host runs no stream (sudo, watchdog, journalctl)."""
    while time.monotonic() - since < limit:
        # "[-]": the pattern does not match the shell running pgrep.
        if not conn.run("pgrep -af 'journalctl [-]-no-pager'; true").out.strip():
            break
        time.sleep(0.05)
    return time.monotonic() - since


def _ctrl_c(proc: subprocess.Popen[bytes],
            checks: list[Connection]) -> tuple[float, dict[str, float]]:
    """SIGINT ``proc``; seconds until it exits, and until each host runs no stream, from the signal.

    The hosts are watched over connections opened beforehand, while fab exits.
    """
    with ThreadPoolExecutor(len(checks)) as pool:
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        gone = {c.spec.name: pool.submit(_stream_gone_after, c, sent) for c in checks}
        with contextlib.suppress(subprocess.TimeoutExpired):  # then `took` fails the bound
            proc.wait(timeout=30)
        took = time.monotonic() - sent
        return took, {name: round(f.result(), 2) for name, f in gone.items()}


def _ended_cleanly(proc: subprocess.Popen[bytes], out: Path, took: float,
                   gone: dict[str, float]) -> None:
    text = out.read_text()
    assert proc.returncode == 0, (proc.returncode, text[-2000:])
    assert "Traceback" not in text, text[-2000:]
    assert took < 2, f"fab logs --follow took {took:.2f} s to end after Ctrl-C"
    assert all(t < 2 for t in gone.values()), f"seconds until no stream was left: {gone}"


def test_logs_follow_ends_cleanly_on_ctrl_c(fleet: Fleet, tmp_path: Path) -> None:
    """Ctrl-C ends fab and every remote journalctl within 2 s of the signal."""
    out = tmp_path / "follow.out"
    checks = [Connection.open(spec, user="deploy") for spec in fleet.apps]
    try:
        proc = _follow(fleet, out)
        try:
            _await_lines(fleet, out, fleet.apps)
            took, gone = _ctrl_c(proc, checks)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        for conn in checks:
            conn.close()
    print(f"\nCtrl-C: fab ended after {took:.2f} s, the remote streams after {gone} s")
    _ended_cleanly(proc, out, took, gone)


def test_logs_follow_ctrl_c_while_a_host_is_still_connecting(fleet: Fleet,
                                                              tmp_path: Path) -> None:
    """A host whose sshd does not answer holds back neither the others' lines nor Ctrl-C."""
    *serving, stuck = fleet.apps
    out = tmp_path / "follow.out"
    checks = [Connection.open(spec, user="deploy") for spec in fleet.apps]
    # The listener stopped, a new connection is accepted by the kernel and then
    # waits for the SSH banner (paramiko gives up after 15 s).
    checks[-1].run("kill -STOP $(cat /run/sshd.pid)")
    try:
        proc = _follow(fleet, out)
        try:
            _await_lines(fleet, out, serving)
            assert f"{stuck.name}:" not in out.read_text(), (
                f"the other hosts' lines came only after {stuck.name} gave up connecting")
            took, gone = _ctrl_c(proc, checks)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        checks[-1].run("kill -CONT $(cat /run/sshd.pid)")
        for conn in checks:
            conn.close()
    print(f"\nCtrl-C while {stuck.name} connects: fab ended after {took:.2f} s, "
          f"the remote streams after {gone} s")
    _ended_cleanly(proc, out, took, gone)


# ------------------------------------------------------------------ TLS
@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={TLS_NAME}", "-addext", f"subjectAltName=DNS:{TLS_NAME}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _tls_inventory(tmp_path: Path, spec: HostSpec, **app: object) -> Path:
    """``spec`` alone (no lb: its nginx redirects HTTP), with a TLS app in its host_vars."""
    path = _inventory(tmp_path / "tls" / "hosts.yml", {"app": [spec]})
    (path.parent / "host_vars").mkdir()
    (path.parent / "host_vars" / f"{spec.name}.yml").write_text(json.dumps({"apps": [{
        "name": "hello", "source": "app", "module": "hello:create_app()", "server_name": TLS_NAME,
        "env": {"APP_SECRET_KEY": "lab-only-secret-change-me"},
        "pre_start": ["python -m hello.migrate"], **app}]}))
    return path


def test_tls(fleet: Fleet, tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    spec = fleet.apps[-1]
    cert, key = tls_files
    secret = "".join(key.read_text().splitlines()[1:4])  # a slice of the key's base64
    inventory = _tls_inventory(tmp_path, spec, tls_cert=str(cert), tls_key=str(key), tls_hsts=600)
    try:
        plan = fab("plan", "--json", str(tmp_path / "plan.json"), inventory=inventory, check=True)
        assert "file /etc/nginx/tls/hello.key (created)\n    (secret content hidden)" in plan.stdout
        deploy = fab("deploy", "--diff", "--json", str(tmp_path / "deploy.json"),
                     inventory=inventory, check=True)
        for text in (plan.stdout, deploy.stdout, (tmp_path / "plan.json").read_text(),
                     (tmp_path / "deploy.json").read_text()):
            assert secret not in text and "PRIVATE KEY" not in text
        https = f"https://{TLS_NAME}/healthz"
        resolve = ["--resolve", f"{TLS_NAME}:443:{spec.address}"]
        code, body = _get(https, "--cacert", str(cert), *resolve)
        assert code == 200 and json.loads(body)["status"] == "ok", (code, body)
        head = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "--cacert", str(cert),
                               *resolve, https], capture_output=True, text=True).stdout
        assert "strict-transport-security: max-age=600" in head.lower()
        redirect = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
             "-H", f"Host: {TLS_NAME}", f"http://{spec.address}/healthz"],
            capture_output=True, text=True).stdout
        assert redirect == f"301 https://{TLS_NAME}/healthz"
        old = subprocess.run(["curl", "-s", "--tls-max", "1.1", "--cacert", str(cert), *resolve,
                              https], capture_output=True)
        assert old.returncode != 0, "TLS 1.1 was accepted"
        assert _on(spec, "stat -c '%U:%G %a' /etc/nginx/tls/hello.key").strip() == "root:root 600"
        verify = fab("verify", inventory=inventory)
        assert verify.returncode == 0, verify.stdout[-3000:]

        missing = tmp_path / "missing.pem"
        broken = _tls_inventory(tmp_path / "broken", spec, tls_cert=str(cert), tls_key=str(missing))
        proc = fab("deploy", inventory=broken)
        assert proc.returncode != 0
        errors = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{spec.name}: ")]
        assert errors == [f"{spec.name}: app hello: tls_key {missing} does not exist"], proc.stdout
        assert _get(https, "--cacert", str(cert), *resolve)[0] == 200  # untouched
    finally:  # back to plain HTTP behind the lb; the key and certificate are removed
        fab("deploy", "--limit", spec.name, inventory=fleet.inventory, check=True)
    assert _on(spec, "ls /etc/nginx/tls").split() == ["ffdhe2048.pem"]
    assert _get(f"http://{fleet.lb.address}/healthz")[0] == 200


# ------------------------------------------------------------------ TLS on the load balancer
LB_NAME = "fleet.test"


def _rolling_deploy_under_https_load(fleet: Fleet, inventory: Path, tmp_path: Path,
                                     lb: str) -> None:
    """A rolling deploy of a new release to every app host under HTTPS load through the lb
    (one TLS handshake per request): no request fails."""
    variant = Variant(tmp_path, _on(fleet.apps[0], "python3 -V").split()[1])
    release = variant.change()
    with Load(f"https://{fleet.lb.address}/version", connections=4, max_seconds=240,
              max_requests=200_000, headers=("Connection: close",)) as load:
        t0 = time.monotonic()
        proc = fab("deploy", "--extra-vars", variant.extra(), inventory=inventory)
        seconds = time.monotonic() - t0
    result = load.result
    print(f"\nrolling deploy behind {lb}: {seconds:.1f} s; HTTPS load through the lb: {result}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.count("back in service on") == len(fleet.apps), proc.stdout[-3000:]
    assert result is not None and result.requests > 300, result
    assert result.errors == 0, result
    assert {s.name: _release(s) for s in fleet.apps} == {s.name: release for s in fleet.apps}


def test_tls_on_the_lb_and_a_rolling_deploy_behind_it(fleet: Fleet, tmp_path: Path) -> None:
    """The lb terminates TLS (user files) and speaks HTTP to the app hosts; a rolling deploy
    under HTTPS load (one TLS handshake per request) fails no request."""
    cert, key = tmp_path / "lb.crt", tmp_path / "lb.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", f"/CN={LB_NAME}",
                    "-addext", f"subjectAltName=DNS:{LB_NAME}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    secret = "".join(key.read_text().splitlines()[1:3])
    inventory = _inventory(tmp_path / "tlslb" / "hosts.yml", {"lb": [fleet.lb], "app": fleet.apps})
    (inventory.parent / "host_vars").mkdir()
    (inventory.parent / "host_vars" / f"{fleet.lb.name}.yml").write_text(json.dumps(
        {"lb_tls_cert": str(cert), "lb_tls_key": str(key), "lb_tls_hsts": 300}))
    https = f"https://{LB_NAME}/version"
    resolve = ["--cacert", str(cert), "--resolve", f"{LB_NAME}:443:{fleet.lb.address}"]
    try:
        first = fab("deploy", "--diff", "--json", str(tmp_path / "deploy.json"), inventory=inventory,
                    check=True)
        for text in (first.stdout, (tmp_path / "deploy.json").read_text()):
            assert secret not in text and "PRIVATE KEY" not in text
        changed = json.loads((tmp_path / "deploy.json").read_text())["hosts"][fleet.lb.name]
        assert changed["changed"] > 0
        code, body = _get(https, *resolve)
        assert code == 200 and "release" in json.loads(body), (code, body)
        redirect = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H",
             f"Host: {LB_NAME}", f"http://{fleet.lb.address}/version?x=1"],
            capture_output=True, text=True).stdout
        assert redirect == f"301 https://{LB_NAME}/version?x=1"
        assert subprocess.run(["curl", "-s", "--tls-max", "1.1", *resolve, https],
                              capture_output=True).returncode != 0, "TLS 1.1 was accepted"
        assert _on(fleet.lb, "stat -c '%U:%G %a' /etc/nginx/tls/lb.key").strip() == "root:root 600"
        # The app hosts still answer plain HTTP, from the lb's network.
        assert _get(f"http://{fleet.apps[0].address}/healthz")[0] == 200

        _rolling_deploy_under_https_load(fleet, inventory, tmp_path, "a TLS lb")

        verify = fab("verify", inventory=inventory)
        assert verify.returncode == 0, verify.stdout[-3000:]

        missing = tmp_path / "nope.key"
        (inventory.parent / "host_vars" / f"{fleet.lb.name}.yml").write_text(json.dumps(
            {"lb_tls_cert": str(cert), "lb_tls_key": str(missing)}))
        bad = fab("deploy", "--limit", fleet.lb.name, inventory=inventory)
        assert bad.returncode != 0
        errors = [ln for ln in bad.stdout.splitlines() if ln.startswith(f"{fleet.lb.name}: ")]
        assert errors == [f"{fleet.lb.name}: lb: lb_tls_key {missing} does not exist"], bad.stdout
        assert _get(https, *resolve)[0] == 200  # untouched
    finally:  # back to plain HTTP; the lb's key and certificate are removed
        fab("deploy", "--limit", fleet.lb.name, inventory=fleet.inventory, check=True)
    assert _on(fleet.lb, "ls /etc/nginx/tls").split() == ["ffdhe2048.pem"]
    assert _get(f"http://{fleet.lb.address}/healthz")[0] == 200


# ------------------------------------------------------------------ ACME on the load balancer
ACME_NAME = "acme.fleet.test"


@pytest.fixture(scope="module")
def lb_pebble(test_lab: TestLab, fleet: Fleet,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """Pebble on the lab's gateway, every name resolving to the lb, which trusts it."""
    conn = Connection.open(fleet.lb, user="deploy")
    try:
        with pebble_lab.running(test_lab.lab.gateway, tmp_path_factory.mktemp("pebble"),
                                fleet.lb.address, [conn]) as server:
            yield server
    finally:
        conn.close()


def _acme_inventory(fleet: Fleet, tmp_path: Path, directory: str) -> Path:
    """The fleet with ``lb_tls: acme`` for ACME_NAME in the lb's host_vars."""
    inventory = _inventory(tmp_path / "acmelb" / "hosts.yml", {"lb": [fleet.lb], "app": fleet.apps})
    (inventory.parent / "host_vars").mkdir()
    (inventory.parent / "host_vars" / f"{fleet.lb.name}.yml").write_text(json.dumps({
        "lb_tls": "acme", "lb_acme_email": "ops@fleet.test", "lb_server_name": ACME_NAME,
        "lb_acme_directory": directory}))
    return inventory


def _lb_errors(fleet: Fleet, proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{fleet.lb.name}: ")]


def _served_serial(fleet: Fleet) -> str:
    """The serial of the certificate the lb serves for ACME_NAME."""
    pem = subprocess.run(["openssl", "s_client", "-connect", f"{fleet.lb.address}:443",
                          "-servername", ACME_NAME], input="", capture_output=True, text=True,
                         timeout=10).stdout
    return subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_acme_lb_with_an_unreachable_ca_keeps_serving_http(fleet: Fleet, lb_pebble: Pebble,
                                                            tmp_path: Path) -> None:
    inventory = _acme_inventory(fleet, tmp_path, lb_pebble.nowhere)
    try:
        proc = fab("deploy", "--limit", fleet.lb.name, inventory=inventory)
        assert proc.returncode != 0
        errors = _lb_errors(fleet, proc)
        assert len(errors) == 1, proc.stdout
        print(f"\n{errors[0]}")
        assert errors[0].startswith(f"{fleet.lb.name}: lb: no certificate for {ACME_NAME} from "
                                    f"{lb_pebble.nowhere}: cannot reach the CA ("), errors
        assert errors[0].endswith("; serving HTTP"), errors
        code, body = _get(f"http://{fleet.lb.address}/version", "-H", f"Host: {ACME_NAME}")
        assert code == 200 and "release" in json.loads(body), (code, body)
        _on(fleet.lb, "nginx -t -q")
    finally:
        fab("deploy", "--limit", fleet.lb.name, inventory=fleet.inventory, check=True)


def test_acme_lb_serves_https_and_a_rolling_deploy_behind_it(fleet: Fleet, lb_pebble: Pebble,
                                                             tmp_path: Path) -> None:
    """The lb gets its certificate from Pebble, the challenge answered by the lb itself;
    HTTPS through it verifies against Pebble's root; certbot renews it (graceful reload);
    a rolling deploy under HTTPS load fails no request; without ACME the certificate goes."""
    inventory = _acme_inventory(fleet, tmp_path, lb_pebble.directory)
    https = f"https://{ACME_NAME}/version"
    try:
        plan = fab("plan", "--limit", fleet.lb.name, inventory=inventory, check=True)
        assert f"would change  command lb: ACME certificate for {ACME_NAME} (none yet)" in plan.stdout
        first = fab("deploy", "--limit", fleet.lb.name, inventory=inventory)
        assert first.returncode == 0, first.stdout[-3000:]
        assert f"lb: ACME certificate for {ACME_NAME} (none yet)" in first.stdout, first.stdout
        resolve = ["--cacert", str(lb_pebble.root()), "--resolve", f"{ACME_NAME}:443:{fleet.lb.address}"]
        code, body = _get(https, *resolve)
        assert code == 200 and "release" in json.loads(body), (code, body)
        # Without Pebble's root the chain is not trusted: it is Pebble's.
        assert _get(https, "--resolve", f"{ACME_NAME}:443:{fleet.lb.address}")[0] == 0
        redirect = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H",
             f"Host: {ACME_NAME}", f"http://{fleet.lb.address}/version?x=1"],
            capture_output=True, text=True).stdout
        assert redirect == f"301 https://{ACME_NAME}/version?x=1"
        # The challenge path is the lb's own, over HTTP (renewals): never an app host's.
        challenge = f"http://{fleet.lb.address}/.well-known/acme-challenge/keel-test"
        _on(fleet.lb, "echo token > /var/www/keel-acme/.well-known/acme-challenge/keel-test")
        assert _get(challenge, "-H", f"Host: {ACME_NAME}") == (200, "token\n")
        _on(fleet.lb, "rm /var/www/keel-acme/.well-known/acme-challenge/keel-test")
        assert _get(challenge, "-H", f"Host: {ACME_NAME}")[0] == 404
        # Neither the CA's requests nor a missing token reached an app host. (keel's probe
        # may: an old worker still proxies it during the reload the probe waits out.)
        for spec in fleet.apps:
            asked = _on(spec, "grep 'acme-challenge/' /var/log/nginx/access.log; true").splitlines()
            assert [ln for ln in asked if "keel-probe-lb" not in ln] == [], (spec.name, asked)
        assert _on(fleet.lb, "stat -L -c '%U:%G %a' /etc/letsencrypt/live/lb/privkey.pem"
                   ).strip() == "root:root 600"
        again = fab("deploy", "--limit", fleet.lb.name, "--json", "/dev/stdout", inventory=inventory)
        doc = json.loads(again.stdout[again.stdout.index("{"):again.stdout.rindex("}") + 1])
        assert again.returncode == 0 and doc["hosts"][fleet.lb.name]["changed"] == 0, again.stdout

        # certbot's renewal, as its timer runs it, ends in keel's deploy hook: a graceful reload.
        serial = _served_serial(fleet)
        _on(fleet.lb, "certbot renew --force-renewal --cert-name lb -q --no-random-sleep-on-renew")
        wait_for("the renewed certificate", lambda: _served_serial(fleet) != serial)
        assert _get(https, *resolve)[0] == 200

        _rolling_deploy_under_https_load(fleet, inventory, tmp_path, "an ACME lb")
        verify = fab("verify", inventory=inventory)
        assert verify.returncode == 0, verify.stdout[-3000:]
    finally:  # back to plain HTTP: certbot deletes the lb's certificate
        fab("deploy", "--limit", fleet.lb.name, inventory=fleet.inventory, check=True)
    assert _on(fleet.lb, "ls /etc/letsencrypt/renewal").split() == []
    assert _get(f"http://{fleet.lb.address}/healthz")[0] == 200


@pytest.mark.parametrize(("settings", "error"), [
    ({"lb_acme_email": "ops"}, "lb: lb_acme_email 'ops' is not an email address"),
    ({"lb_server_name": "_"}, "lb: lb_server_name '_' cannot get an ACME certificate"),
    ({"lb_tls_cert": "lb.crt"}, "lb: lb_tls: acme and lb_tls_cert are both set"),
])
def test_bad_acme_settings_on_the_lb_change_nothing(fleet: Fleet, tmp_path: Path, settings: dict,
                                                     error: str) -> None:
    inventory = _acme_inventory(fleet, tmp_path, "https://ca.fleet.test/dir")
    path = inventory.parent / "host_vars" / f"{fleet.lb.name}.yml"
    path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    before = _on(fleet.lb, "md5sum /etc/nginx/sites-available/lb")
    proc = fab("deploy", inventory=inventory)
    assert proc.returncode != 0
    errors = _lb_errors(fleet, proc)
    assert len(errors) == 1 and errors[0].startswith(f"{fleet.lb.name}: {error}"), proc.stdout
    assert f"{fleet.lb.name} changed" not in proc.stdout, proc.stdout
    assert _on(fleet.lb, "md5sum /etc/nginx/sites-available/lb") == before
    assert _get(f"http://{fleet.lb.address}/healthz")[0] == 200
