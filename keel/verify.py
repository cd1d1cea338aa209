"""``fab verify``: run a pytest-testinfra suite over SSH against inventory hosts.

The suite gets each host's expected settings as JSON (``KEEL_VERIFY_VARS``),
and reaches hosts through an ssh_config written from the inventory, so
``--limit`` and ``-H`` select hosts exactly as for deploy.

Example::

    rc = run_suite(hosts, Path("tests/verify"), expectations, junit_xml=None)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from keel.connection import _parse_ssh_args
from keel.inventory import HostSpec
from keel.output import mask, secret_values


def ssh_config(
    hosts: Sequence[HostSpec], user_for: Callable[[HostSpec], str | None], control_dir: Path
) -> str:
    """An ssh_config with one ``Host`` block per inventory host.

    OpenSSH itself connects (so known_hosts and ProxyJump are honoured), with
    one multiplexed master per host that is closed when the suite ends.
    """
    blocks = []
    for h in hosts:
        opts = _parse_ssh_args(str(h.vars.get("ansible_ssh_common_args", "")))
        lines = [f"Host {h.name}", f"  HostName {h.address}", f"  Port {h.port or 22}"]
        user = user_for(h) or h.user
        if user:
            lines.append(f"  User {user}")
        if h.key_file:
            lines.append(f"  IdentityFile {h.key_file}")
        if "userknownhostsfile" in opts:
            lines.append(f"  UserKnownHostsFile {opts['userknownhostsfile']}")
        if "stricthostkeychecking" in opts:
            lines.append(f"  StrictHostKeyChecking {opts['stricthostkeychecking']}")
        lines += ["  BatchMode yes", "  ControlMaster auto", f"  ControlPath {control_dir}/%C",
                  "  ControlPersist 30s"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def run_suite(
    hosts: Sequence[HostSpec],
    suite: Path,
    expectations: Callable[[HostSpec], dict[str, Any]],
    user_for: Callable[[HostSpec], str | None] = lambda h: None,
    junit_xml: str | None = None,
    extra_args: Sequence[str] = (),
    failed: list[str] | None = None,
) -> int:
    """Run pytest on ``suite`` against ``hosts``; return pytest's exit code, and append the
    names of the hosts with a failed or erroring test to ``failed`` (when given)."""
    with tempfile.TemporaryDirectory(prefix="keel-verify-") as tmp:
        cfg = Path(tmp) / "ssh_config"
        cfg.write_text(ssh_config(hosts, user_for, Path(tmp)))
        data = Path(tmp) / "expect.json"
        expected = {h.name: expectations(h) for h in hosts}
        data.write_text(json.dumps(expected))
        # What a failed check prints may quote a setting (a vault-decrypted server_name,
        # an env value): the suite's output and report are masked as deploy's output is.
        secrets = set().union(*(secret_values({**h.vars, **expected[h.name]}) for h in hosts))
        report = junit_xml or str(Path(tmp) / "junit.xml")
        cmd = [
            sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider", "-q",
            "--hosts=" + ",".join(f"ssh://{h.name}?controlpersist=0" for h in hosts),
            f"--ssh-config={cfg}", "--sudo", "--tb=line", "--junit-xml", report, *extra_args,
        ]
        env = {**os.environ, "KEEL_VERIFY_VARS": str(data)}
        try:
            with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, errors="replace") as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stdout.write(mask(line, secrets))
                    sys.stdout.flush()
            rc = proc.returncode
            if secrets and Path(report).is_file():
                Path(report).write_text(mask(Path(report).read_text(), secrets))
        finally:
            for h in hosts:  # close the multiplexed masters: leave no ssh behind
                subprocess.run(["ssh", "-F", str(cfg), "-O", "exit", h.name],
                               capture_output=True, timeout=10)
        if failed is not None and rc:
            failed += failed_hosts(Path(report), [h.name for h in hosts])
        return rc


def failed_hosts(junit_xml: Path, names: Sequence[str]) -> list[str]:
    """The hosts (of ``names``, in that order) with a failed or erroring test in a JUnit
    report of the testinfra suite, whose test ids end in ``[ssh://<host>]``.

    A test without a host in its id (a collection error) fails every host.
    """
    try:
        root = ElementTree.parse(junit_xml).getroot()
    except (OSError, ElementTree.ParseError):
        return list(names)
    bad: set[str] = set()
    for case in root.iter("testcase"):
        if case.find("failure") is None and case.find("error") is None:
            continue
        match = re.search(r"\[(?:\w+://)?([^\]?/]+)[^\]]*\]$", case.get("name", ""))
        bad |= {match.group(1)} if match and match.group(1) in names else set(names)
    return [n for n in names if n in bad]
