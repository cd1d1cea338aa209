"""``fab verify`` masks secret values in what its checks print, as deploy does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from keel.inventory import HostSpec
from keel.vault import Secret
from keel.verify import run_suite

LEAK = '''
import json, os

def test_quotes_a_setting(host):
    expected = json.load(open(os.environ["KEEL_VERIFY_VARS"]))
    name = next(iter(expected))
    assert host.run("exit 3").rc == 0, "server_name is " + expected[name]["server_name"]
'''


def test_a_failed_check_never_prints_a_vault_value(deployed: HostSpec, tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    secret = "vault-only.example.test"
    spec = dataclasses.replace(deployed, vars={**deployed.vars, "site_name": Secret(secret)})
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_leak.py").write_text(LEAK)
    report, failed = tmp_path / "junit.xml", []
    rc = run_suite([spec], suite, lambda h: {"server_name": secret}, user_for=lambda h: "deploy",
                   junit_xml=str(report), failed=failed)
    out = capfd.readouterr().out
    assert rc == 1 and failed == [deployed.name], out[-2000:]
    # The check ran on the host and failed quoting the setting, masked.
    assert "server_name is ********" in out, out[-2000:]
    assert secret not in out and secret not in report.read_text()
