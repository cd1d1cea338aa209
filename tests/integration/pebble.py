"""Pebble, Let's Encrypt's test CA, on the controller, for the ACME tests (apps and the lb).

Pebble listens on the test lab's gateway (the controller's side of the lab bridge),
where the lab hosts reach it; it validates HTTP-01 on port 80 of whatever the name
resolves to, and pebble-challtestsrv answers its DNS: every name is one lab host
(``address``), except the ones a test points elsewhere. Pebble's own TLS certificate
comes from a CA made here, which the hosts given trust while it runs (lab-only setup,
like the lab's CA trust: the product's roles know nothing of it). The certificates
Pebble issues chain to a root it makes at start, fetched from its management port
(``/roots/0``); curl verifies HTTPS on the lab hosts against it.

Both processes are ended when the context exits, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from keel.connection import Connection

TRUSTED = "/usr/local/share/ca-certificates/keel-test-pebble-listener.crt"


@dataclass
class Pebble:
    gateway: str
    dir: Path
    listener_ca: Path  # signed Pebble's own TLS certificate (ACME and management ports)

    @property
    def directory(self) -> str:
        return f"https://{self.gateway}:14000/dir"

    @property
    def nowhere(self) -> str:
        """An ACME directory URL on the gateway where nothing listens: an unreachable CA."""
        return f"https://{self.gateway}:14001/dir"

    def management(self, path: str) -> bytes:
        return _https(f"https://{self.gateway}:15000{path}", self.listener_ca)

    def root(self) -> Path:
        """The root Pebble's certificates chain to (made anew each time Pebble starts)."""
        path = self.dir / "issuer-root.pem"
        path.write_bytes(self.management("/roots/0"))
        return path

    def dns(self, endpoint: str, doc: dict) -> None:
        """Change pebble-challtestsrv's mock DNS (its management API, on the gateway)."""
        req = urllib.request.Request(f"http://{self.gateway}:8055{endpoint}",
                                     data=json.dumps(doc).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200, (endpoint, resp.status)


def _https(url: str, ca: Path) -> bytes:
    proc = subprocess.run(["curl", "-sf", "--max-time", "5", "--cacert", str(ca), url],
                          capture_output=True)
    assert proc.returncode == 0, f"{url}: curl exit {proc.returncode}"
    return proc.stdout


def _listener_certs(folder: Path, gateway: str) -> Path:
    """A CA and, signed by it, a certificate for Pebble's listeners on ``gateway``."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=keel test Pebble listener CA", "-keyout", "ca.key",
            "-out", "ca.pem")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={gateway}", "-keyout", "key.pem", "-out", "cert.csr")
    (folder / "san.ext").write_text(f"subjectAltName=IP:{gateway}\n")
    openssl("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "cert.pem")
    return folder / "ca.pem"


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < end, f"{what} not ready in {timeout:.0f}s"
        time.sleep(0.2)


def _answers(url: str, ca: Path) -> bool:
    return subprocess.run(["curl", "-sf", "--max-time", "2", "--cacert", str(ca), "-o", "/dev/null",
                           url]).returncode == 0


@contextlib.contextmanager
def running(gateway: str, folder: Path, address: str,
            trusting: Sequence[Connection]) -> Iterator[Pebble]:
    """Pebble and pebble-challtestsrv on ``gateway``, every name resolving to ``address``;
    the hosts of ``trusting`` trust Pebble's listener certificate meanwhile."""
    ca = _listener_certs(folder, gateway)
    (folder / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"{gateway}:14000", "managementListenAddress": f"{gateway}:15000",
        "certificate": str(folder / "cert.pem"), "privateKey": str(folder / "key.pem"),
        # HTTP-01 is asked on port 80 of the name, as a public CA does.
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as logs:
        def log(name: str) -> IO[bytes]:
            return logs.enter_context(open(folder / name, "wb"))

        try:
            procs.append(subprocess.Popen(
                ["pebble-challtestsrv", "-dns01", f"{gateway}:8053", "-management", f"{gateway}:8055",
                 "-http01", "", "-https01", "", "-tlsalpn01", "",
                 "-defaultIPv4", address, "-defaultIPv6", ""],
                stdout=log("challtestsrv.log"), stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen(
                ["pebble", "-config", str(folder / "pebble.json"), "-dnsserver", f"{gateway}:8053"],
                # No artificial validation delay; no good nonce rejected at random (Pebble's
                # default is 5%, to exercise clients' retries): every run the same.
                env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"},
                stdout=log("pebble.log"), stderr=subprocess.STDOUT))
            server = Pebble(gateway, folder, ca)

            def up() -> bool:
                for proc, name in zip(procs, ("challtestsrv.log", "pebble.log"), strict=True):
                    assert proc.poll() is None, f"{name}: {(folder / name).read_text()[-2000:]}"
                return _answers(server.directory, ca)

            wait_for("pebble", up)
            # LAB ONLY: the hosts trust Pebble's listener certificate, as they trust the lab's CA.
            for conn in trusting:
                res = conn.run(f"cat > {TRUSTED} && update-ca-certificates >/dev/null",
                               stdin=ca.read_bytes())
                assert res.ok, f"{conn.spec.name}: update-ca-certificates: {res.err}"
            yield server
        finally:
            for conn in trusting:
                conn.run(f"rm -f {TRUSTED} && update-ca-certificates --fresh >/dev/null")
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
