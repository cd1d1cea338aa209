"""tls: acme against a real ACME server: Pebble, Let's Encrypt's test CA, on the controller.

Pebble (tests/integration/pebble.py) listens on the test lab's gateway; every name
resolves to lab1, which trusts Pebble's listener certificate for the duration of the
module. curl verifies HTTPS on lab1 against the root Pebble's certificates chain to.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import TestLab, fab
from tests.integration import pebble as pebble_lab
from tests.integration.conftest import Variant, run_ok
from tests.integration.pebble import Pebble, wait_for
from tests.load import Load

NAME = "hello.acme.test"
EMAIL = "ops@acme.test"


@pytest.fixture(scope="module")
def lab1(deployed: HostSpec) -> Iterator[Connection]:
    conn = Connection.open(deployed, user="deploy")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def pebble(test_lab: TestLab, deployed: HostSpec, lab1: Connection,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with pebble_lab.running(test_lab.lab.gateway, tmp_path_factory.mktemp("pebble"),
                            deployed.address, [lab1]) as server:
        yield server


@pytest.fixture(scope="module")
def restore(test_lab: TestLab, deployed: HostSpec, lab1: Connection) -> Iterator[None]:
    """At the end, lab1 back to the example app over HTTP: the ACME certificate goes too."""
    yield
    fab("deploy", "--limit", "lab1", inventory=test_lab.inventory_path, check=True)
    assert run_ok(lab1, "ls /etc/letsencrypt/renewal 2>/dev/null; true").split() == []
    code, _ = _get(deployed.address, f"http://{deployed.address}/healthz")
    assert code == 200


def _app(**overrides: object) -> str:
    app = {"name": "hello", "source": "app", "module": "hello:create_app()",
           "env": {"APP_SECRET_KEY": "lab-only-secret-change-me"},
           "pre_start": ["python -m hello.migrate"], "server_name": NAME, "tls": "acme",
           "acme_email": EMAIL, **overrides}
    return json.dumps({"apps": [app]})


def _deploy(test_lab: TestLab, *args: str, **overrides: object) -> subprocess.CompletedProcess[str]:
    return fab("deploy", "--limit", "lab1", *args, "--extra-vars", _app(**overrides),
               inventory=test_lab.inventory_path)


def _inventory(test_lab: TestLab, tmp_path: Path, variables: str) -> Path:
    """The test lab's inventory with ``variables`` (JSON) as lab1's host_vars (for fab verify)."""
    path = tmp_path / "inventory" / "lab.yml"
    (path.parent / "host_vars").mkdir(parents=True)
    path.write_text(test_lab.inventory_path.read_text())
    (path.parent / "group_vars").symlink_to(test_lab.inventory_path.parent / "group_vars")
    (path.parent / "host_vars" / "lab1.yml").write_text(variables)
    return path


def _errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stdout.splitlines() if ln.startswith("lab1: ")]


def _get(address: str, url: str, *curl: str) -> tuple[int, str]:
    proc = subprocess.run(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}",
                           "--resolve", f"{NAME}:443:{address}", "--resolve", f"{NAME}:80:{address}",
                           *curl, url], capture_output=True, text=True)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def _serial(address: str) -> str:
    """The serial of the certificate lab1 serves for NAME."""
    pem = subprocess.run(["openssl", "s_client", "-connect", f"{address}:443", "-servername", NAME],
                         input="", capture_output=True, text=True, timeout=10).stdout
    return subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True,
                          text=True, check=True).stdout.strip()


# ------------------------------------------------------------------ the tests, in order
def test_bad_input_changes_nothing(test_lab: TestLab, deployed: HostSpec, restore: None) -> None:
    proc = _deploy(test_lab, tls_cert="cert.pem")
    assert proc.returncode != 0
    assert _errors(proc) == ["lab1: app hello: tls: acme and tls_cert are both set "
                             "(use one: ACME gets the certificate itself)"], proc.stdout
    assert "lab1 changed" not in proc.stdout, proc.stdout
    assert re.search(r"^lab1\s+0\s+0\s+1\s+0$", proc.stdout, re.M), proc.stdout  # the recap


def test_unreachable_ca_keeps_http_and_fails_in_one_line(
        test_lab: TestLab, deployed: HostSpec, pebble: Pebble, lab1: Connection, restore: None) -> None:
    nowhere = pebble.nowhere
    proc = _deploy(test_lab, acme_directory=nowhere)
    assert proc.returncode != 0
    errors = _errors(proc)
    assert len(errors) == 1, proc.stdout
    print(f"\n{errors[0]}")
    assert errors[0].startswith(f"lab1: app hello: no certificate for {NAME} from {nowhere}: "
                                "cannot reach the CA ("), errors
    assert errors[0].endswith("; serving HTTP"), errors
    code, body = _get(deployed.address, f"http://{NAME}/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok", (code, body)
    run_ok(lab1, "nginx -t -q")


def test_issue_serves_https_with_pebbles_chain(test_lab: TestLab, deployed: HostSpec, pebble: Pebble,
                                               lab1: Connection, tmp_path: Path) -> None:
    plan = fab("plan", "--limit", "lab1", "--extra-vars", _app(acme_directory=pebble.directory),
               inventory=test_lab.inventory_path)
    assert plan.returncode == 0, plan.stdout[-3000:]
    assert f"would change  command hello: ACME certificate for {NAME} (none yet)" in plan.stdout
    proc = _deploy(test_lab, acme_directory=pebble.directory)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"hello: ACME certificate for {NAME} (none yet)" in proc.stdout
    root = pebble.root()
    code, body = _get(deployed.address, f"https://{NAME}/healthz", "--cacert", str(root))
    assert code == 200 and json.loads(body)["status"] == "ok", (code, body)
    # Without Pebble's root the chain is not trusted: it is Pebble's, not another's.
    assert _get(deployed.address, f"https://{NAME}/healthz")[0] == 0
    redirect = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                               "-H", f"Host: {NAME}", f"http://{deployed.address}/healthz"],
                              capture_output=True, text=True).stdout
    assert redirect == f"301 https://{NAME}/healthz"
    # The challenge location still answers over HTTP, for renewals.
    run_ok(lab1, "echo token > /var/www/keel-acme/.well-known/acme-challenge/keel-test")
    assert _get(deployed.address, f"http://{NAME}/.well-known/acme-challenge/keel-test") == (
        200, "token\n")
    run_ok(lab1, "rm /var/www/keel-acme/.well-known/acme-challenge/keel-test")
    again = _deploy(test_lab, "--json", "/dev/stdout", acme_directory=pebble.directory)
    assert again.returncode == 0, again.stdout[-3000:]
    doc = json.loads(again.stdout[again.stdout.index("{"):again.stdout.rindex("}") + 1])
    assert doc["hosts"]["lab1"]["changed"] == 0, again.stdout[-3000:]
    # The certificate's probe rides in the batch with the others: still 2 round trips.
    assert doc["hosts"]["lab1"]["round_trips"] == 2, doc["hosts"]["lab1"]["round_trips"]
    verify = fab("verify", "--limit", "lab1", inventory=_inventory(
        test_lab, tmp_path, _app(acme_directory=pebble.directory)))
    assert verify.returncode == 0, verify.stdout[-3000:]
    assert run_ok(lab1, "systemctl is-enabled certbot.timer; systemctl is-active certbot.timer"
                  ).split() == ["enabled", "active"]


def test_forced_renewal_reloads_nginx_without_a_failed_request(
        deployed: HostSpec, pebble: Pebble, lab1: Connection) -> None:
    """Two renewals under load: by hand (--force-renewal), then as certbot's timer runs it
    (``certbot -q renew``) with the renewal due; each runs keel's deploy hook, which reloads
    nginx. (certbot sleeps up to 8 minutes first when its stdin is no terminal, as under
    the timer: --no-random-sleep-on-renew.)"""
    conf = "/etc/letsencrypt/renewal/hello.conf"
    assert "ExecStart=/usr/bin/certbot -q renew" in run_ok(lab1, "systemctl cat certbot.service")
    serials, logged = [_serial(deployed.address)], _access_lines(lab1)
    # A new TLS connection per request: every one meets the configuration live then.
    with Load(f"https://{deployed.address}/healthz", connections=4, max_seconds=90,
              max_requests=200_000, headers=(f"Host: {NAME}", "Connection: close")) as load:
        wait_for("load", lambda: _access_lines(lab1) > logged + 50)
        t0 = time.monotonic()
        run_ok(lab1, "certbot renew --force-renewal --cert-name hello -q --no-random-sleep-on-renew")
        wait_for("the renewed certificate", lambda: _serial(deployed.address) != serials[-1])
        serials.append(_serial(deployed.address))
        t1 = time.monotonic()
        # Due as if it were 30 days before expiry (Pebble's certificates last years): a
        # top-level setting, before the file's first section.
        run_ok(lab1, f"sed -i '1i renew_before_expiry = 100000 days' {conf}")
        try:
            run_ok(lab1, "certbot -q renew --no-random-sleep-on-renew")
        finally:
            run_ok(lab1, f"sed -i '/^renew_before_expiry = 100000 days$/d' {conf}")
        wait_for("the renewed certificate", lambda: _serial(deployed.address) != serials[-1])
        serials.append(_serial(deployed.address))
        t2 = time.monotonic()
        logged = _access_lines(lab1)
        wait_for("more load", lambda: _access_lines(lab1) > logged + 50)  # after the reload
    result = load.result
    assert result is not None
    print(f"\nrenewals under load: {result.requests} requests, {result.errors} failed, "
          f"p99 {result.p99_ms} ms; forced {t1 - t0:.1f} s, due {t2 - t1:.1f} s")
    assert len(set(serials)) == 3, serials
    assert result.errors == 0, result
    assert "reload" in run_ok(lab1, "journalctl -u nginx -n 20 -o cat --no-pager").lower()
    root = pebble.root()
    assert _get(deployed.address, f"https://{NAME}/healthz", "--cacert", str(root))[0] == 200


def _access_lines(lab1: Connection) -> int:
    """Requests for /healthz nginx logged so far (the load's progress)."""
    return int(run_ok(lab1, "grep -c 'GET /healthz' /var/log/nginx/access.log || true").strip())


def test_a_name_that_fails_its_challenge(test_lab: TestLab, deployed: HostSpec, pebble: Pebble,
                                         lab1: Connection) -> None:
    bad = "elsewhere.acme.test"
    pebble.dns("/add-a", {"host": bad, "addresses": ["127.0.0.1"]})  # not lab1: nothing there
    serial = _serial(deployed.address)
    proc = _deploy(test_lab, acme_directory=pebble.directory, server_name=f"{NAME} {bad}")
    assert proc.returncode != 0
    errors = _errors(proc)
    assert len(errors) == 1, proc.stdout
    print(f"\n{errors[0]}")
    assert errors[0].startswith(f"lab1: app hello: no certificate for {NAME} {bad} from "
                                f"{pebble.directory}: {bad}: "), errors
    assert errors[0].endswith("; still serving the previous one"), errors
    assert _serial(deployed.address) == serial
    root = pebble.root()
    assert _get(deployed.address, f"https://{NAME}/healthz", "--cacert", str(root))[0] == 200



def test_rollback_asks_the_https_site(test_lab: TestLab, deployed: HostSpec, pebble: Pebble,
                                      lab1: Connection, host_python: str, tmp_path: Path) -> None:
    """fab rollback knows the app has its certificate: its health gate asks over HTTPS (a 200
    in nginx's log from 127.0.0.1), not over HTTP (which only redirects)."""
    variant = Variant(tmp_path, host_python)
    before = variant.release
    acme = {"server_name": NAME, "tls": "acme", "acme_email": EMAIL,
            "acme_directory": pebble.directory}
    new = variant.change()
    proc = fab("deploy", "--limit", "lab1", "--extra-vars", variant.extra(**acme),
               inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    root = pebble.root()
    https = ["--cacert", str(root)]
    assert json.loads(_get(deployed.address, f"https://{NAME}/version", *https)[1])["release"] == new
    proc = fab("rollback", "--limit", "lab1",
               inventory=_inventory(test_lab, tmp_path, variant.extra(**acme)))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert json.loads(_get(deployed.address, f"https://{NAME}/version", *https)[1])["release"] == before
    gate = run_ok(lab1, "grep '^127.0.0.1 .*\"GET /healthz ' /var/log/nginx/access.log | tail -n 1")
    assert '" 200 ' in gate, gate


def test_prune_deletes_the_certificate_of_the_app_it_removes(
        test_lab: TestLab, deployed: HostSpec, pebble: Pebble, lab1: Connection) -> None:
    """fab deploy --prune of an app that had tls: acme: certbot deletes its lineage (its
    timer would renew it for ever), and only once the app is gone."""
    assert run_ok(lab1, "ls /etc/letsencrypt/renewal").split() == ["hello.conf"]
    proc = fab("deploy", "--limit", "lab1", "--prune", "--extra-vars", json.dumps({"apps": []}),
               inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "hello: no longer in the inventory: removed (data kept)" in proc.stdout, proc.stdout
    assert run_ok(lab1, "ls /etc/letsencrypt/renewal; ls -d /etc/letsencrypt/live/hello "
                        "/etc/letsencrypt/archive/hello 2>/dev/null; true").split() == []
    assert "No certificates found." in run_ok(lab1, "certbot certificates 2>&1")
    run_ok(lab1, "nginx -t -q")
