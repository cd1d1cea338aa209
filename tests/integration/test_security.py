"""The measured standards of docs/security.md, on the shared deployed host (lab1).

systemd-analyze rates the app and nginx units, ssh-audit (pinned, test-only)
rates sshd, and the hardened nginx is shown to serve, reload under load and
reopen its logs (logrotate included). The initial login user is locked out once
bootstrap is done, with a clear error for whoever holds only its key. Bad
hardening input (a drop-in nginx cannot start under, an sshd value sshd
refuses) is refused before it takes effect. Lynis (installed on lab1 only)
rates the host at least 80. None of these tests changes lab1 for the others.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from keel.connection import Connection
from keel.errors import HostError
from keel.inventory import HostSpec
from roles import bootstrap, nginx
from tests.conftest import TestLab, fab
from tests.integration.conftest import _version, assert_lynis_rates_well, run_ok
from tests.load import Load

MAX_APP_EXPOSURE = 1.5
MAX_NGINX_EXPOSURE = 3.5
SSH_AUDIT = Path(sys.executable).parent / "ssh-audit"


_run = run_ok


def _exposure(conn: Connection, unit: str) -> float:
    last = _run(conn, f"systemd-analyze security {unit} | tail -n 1")
    return float(last.split(":")[1].split()[0])


def test_units_exposure(root: Connection) -> None:
    app, nginx = _exposure(root, "hello.service"), _exposure(root, "nginx.service")
    assert app <= MAX_APP_EXPOSURE, f"hello.service exposure {app}"
    assert nginx <= MAX_NGINX_EXPOSURE, f"nginx.service exposure {nginx}"


def test_ssh_audit_reports_no_fail(deployed: HostSpec) -> None:
    proc = subprocess.run([str(SSH_AUDIT), "-j", "-p", str(deployed.port or 22), deployed.address],
                          capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout)
    fails = [f"{kind} {alg['algorithm']}: {alg['notes']['fail']}"
             for kind in ("kex", "key", "enc", "mac") for alg in report.get(kind, [])
             if alg.get("notes", {}).get("fail")]
    fails += [f"CVE {cve.get('name')}" for cve in report.get("cves", [])]
    assert not fails, fails
    kex = {alg["algorithm"] for alg in report["kex"]}
    assert kex <= {"mlkem768x25519-sha256", "sntrup761x25519-sha512",
                   "sntrup761x25519-sha512@openssh.com", "curve25519-sha256",
                   "curve25519-sha256@libssh.org"} | {k for k in kex if k.startswith("kex-strict")}


def test_new_ssh_connections_are_rate_limited(test_lab: TestLab, deployed: HostSpec) -> None:
    """From lab2 (so the controller's own budget stays whole): beyond the burst
    (30), new connections to port 22 are dropped."""
    lab2 = Connection.open(test_lab.host("lab2"))
    try:
        out = _run(lab2, f"ok=0; for i in $(seq 45); do timeout 0.5 bash -c "
                         f"'exec 3<>/dev/tcp/{deployed.address}/22' 2>/dev/null && ok=$((ok+1));"
                         " done; echo $ok")
    finally:
        lab2.close()
    accepted = int(out.strip())
    assert 30 <= accepted < 45, f"{accepted} of 45 quick connections accepted"


def test_initial_user_is_locked(deployed: HostSpec, root: Connection) -> None:
    with pytest.raises(HostError, match="authentication failed for debian@"):
        Connection.open(deployed).close()
    assert "sudo" not in _run(root, "id -nG debian").split()
    assert _run(root, "sudo -l -U debian || true").strip().endswith("not allowed to run sudo on lab1.")


def test_hardened_nginx_reloads_under_load(deployed: HostSpec, root: Connection) -> None:
    master = _run(root, "systemctl show -p MainPID --value nginx").strip()
    workers = set(_run(root, f"pgrep -P {master}").split())
    # A new connection per request: an old worker closes its idle keep-alive
    # connections on reload, and wrk never retries on one (browsers do).
    with Load(f"http://{deployed.address}/version", connections=4, max_seconds=30,
              max_requests=20_000, headers=("Connection: close",)) as load:
        _run(root, "systemctl reload nginx")
        deadline = time.monotonic() + 15
        while set(_run(root, f"pgrep -P {master}").split()) & workers:
            assert time.monotonic() < deadline, "old nginx workers still running"
            time.sleep(0.2)
    assert load.result is not None and load.result.errors == 0, load.result
    assert _run(root, "systemctl show -p MainPID --value nginx").strip() == master


def test_hardened_nginx_reopens_its_logs(deployed: HostSpec, root: Connection) -> None:
    """What logrotate's postrotate does (SIGUSR1): the master opens new files, as root."""
    _run(root, "cd /var/log/nginx && mv access.log access.log.keel-test &&"
               " systemctl kill -s USR1 --kill-whom=main nginx")
    try:
        deadline = time.monotonic() + 10
        while _run(root, "test -e /var/log/nginx/access.log && echo y || true").strip() != "y":
            assert time.monotonic() < deadline, "nginx did not reopen access.log"
            time.sleep(0.1)
        assert _version(deployed)[0] == 200
        while "GET /version" not in _run(root, "cat /var/log/nginx/access.log"):
            assert time.monotonic() < deadline, "the new access.log gets no requests"
            time.sleep(0.1)
        assert _run(root, "stat -c %U /var/log/nginx/access.log").strip() == "www-data"
    finally:
        root.run("cd /var/log/nginx && cat access.log >> access.log.keel-test &&"
                 " mv access.log.keel-test access.log && systemctl kill -s USR1 --kill-whom=main nginx")


def test_second_bootstrap_logs_in_as_deploy(test_lab: TestLab, deployed: HostSpec) -> None:
    proc = fab("bootstrap", "--limit", "lab1", "--json", "/dev/stdout",
               inventory=test_lab.inventory_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    host = doc["hosts"]["lab1"]
    assert host["changed"] == 0, [r for r in host["results"] if r["changed"]]


def test_status_reports_a_required_reboot(test_lab: TestLab, root: Connection) -> None:
    _run(root, "echo linux-image-amd64 > /run/reboot-required.pkgs && touch /run/reboot-required")
    try:
        proc = fab("status", "--limit", "lab1", "--json", inventory=test_lab.inventory_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        host = json.loads(proc.stdout)["hosts"]["lab1"]
        assert host["reboot_required"] and host["reboot_packages"] == ["linux-image-amd64"]
        table = fab("status", "--limit", "lab1", inventory=test_lab.inventory_path).stdout
        assert "lab1: reboot required (for linux-image-amd64)" in table
    finally:
        root.run("rm -f /run/reboot-required /run/reboot-required.pkgs")
    proc = fab("status", "--limit", "lab1", "--json", inventory=test_lab.inventory_path)
    assert json.loads(proc.stdout)["hosts"]["lab1"]["reboot_required"] is False


def _get(spec: HostSpec, path: str) -> int:
    proc = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "5", "-w", "%{http_code}",
                           f"http://{spec.address}{path}"], capture_output=True, text=True)
    return int(proc.stdout or 0)


def test_logrotate_rotates_the_hardened_nginx_logs(deployed: HostSpec, root: Connection) -> None:
    """The real thing: Debian's /etc/logrotate.d/nginx (postrotate signals the sandboxed master)."""
    before, after = (uuid.uuid4().hex for _ in range(2))
    assert _get(deployed, f"/healthz?mark={before}") == 200
    deadline = time.monotonic() + 10
    while root.run(f"grep -qF {before} /var/log/nginx/access.log").rc != 0:
        assert time.monotonic() < deadline, "the request is not in access.log"
        time.sleep(0.1)
    _run(root, "logrotate -f /etc/logrotate.d/nginx")
    deadline = time.monotonic() + 15
    while True:  # nginx reopens its logs when the signal arrives
        assert _get(deployed, f"/healthz?mark={after}") == 200
        if root.run(f"grep -qF {after} /var/log/nginx/access.log").rc == 0:
            break
        assert time.monotonic() < deadline, "nginx writes no new access.log after logrotate"
        time.sleep(0.3)
    assert root.run(f"zgrep -qF {before} /var/log/nginx/access.log.1*").rc == 0
    assert not _run(root, "journalctl -u nginx --since -5min -p err -o cat --no-pager").strip()


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("lab1: ")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_a_drop_in_nginx_cannot_start_under_is_refused(test_lab: TestLab, deployed: HostSpec,
                                                      root: Connection) -> None:
    before = _run(root, f"sha256sum {nginx.HARDENING_DROPIN}")
    pid = _run(root, "systemctl show -p MainPID --value nginx")
    line = _one_error(fab("deploy", "--limit", "lab1", "--extra-vars",
                          json.dumps({"nginx_hardening_extra": ["ReadWritePaths=/nonexistent-keel"]}),
                          inventory=test_lab.inventory_path))
    assert f"lab1: template {nginx.HARDENING_DROPIN}: validation failed:" in line, line
    assert _run(root, f"sha256sum {nginx.HARDENING_DROPIN}") == before
    assert _run(root, "systemctl show -p MainPID --value nginx") == pid  # never restarted
    assert _version(deployed)[0] == 200


def test_an_sshd_value_sshd_refuses_is_not_applied(test_lab: TestLab, deployed: HostSpec,
                                                   root: Connection) -> None:
    before = _run(root, f"sha256sum {bootstrap.SSHD_CONF}")
    line = _one_error(fab("bootstrap", "--limit", "lab1", "--extra-vars",
                          json.dumps({"ssh_max_startups": "ten"}), inventory=test_lab.inventory_path))
    assert f"lab1: template {bootstrap.SSHD_CONF}: validation failed:" in line, line
    assert _run(root, f"sha256sum {bootstrap.SSHD_CONF}") == before
    Connection.open(deployed, user="deploy").close()  # still reachable


def test_only_the_initial_users_key_gets_a_clear_error(test_lab: TestLab, deployed: HostSpec,
                                                       root: Connection, tmp_path: Path) -> None:
    """Someone who holds a key of the initial account only, after bootstrap locked it."""
    key = tmp_path / "initial_only"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (tmp_path / "initial_only.pub").read_text().strip()
    _run(root, f"echo '{pub}' >> ~debian/.ssh/authorized_keys")
    try:
        inventory = tmp_path / "hosts.yml"
        inventory.write_text(json.dumps({"all": {"children": {"app": {"hosts": {"lab1": {
            "ansible_host": deployed.address, "ansible_user": "debian",
            "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={test_lab.lab.dir / 'known_hosts'}"
                                       " -o StrictHostKeyChecking=yes"}}}}}}))
        line = _one_error(fab("bootstrap", inventory=inventory))
        assert line.startswith(f"lab1: authentication failed for debian@{deployed.address}"), line
    finally:
        _run(root, f"sed -i '\\#{pub.split()[1]}#d' ~debian/.ssh/authorized_keys")
    Connection.open(deployed, user="deploy").close()


def test_lynis_hardening_index(root: Connection, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        assert_lynis_rates_well(root, "bookworm")
