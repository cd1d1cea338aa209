"""``fab plan`` on a fresh host (lab2), where deploy would change nearly everything.

The plan must leave the host byte-for-byte as it was (every path, type, mode,
owner, symlink target and content hash under /etc, /srv, /var/lib/keel,
/usr/local and /home, plus dpkg's database), show unified diffs, and never
print a secret value: only ``********`` in its place.

lab2 is not bootstrapped, so there is no ``deploy`` user yet: the plan logs in
as the image's ``debian`` user through ``--extra-vars`` (the login is picked
from the same variables the roles see).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from keel.connection import Connection
from keel.inventory import HostSpec
from tests.conftest import ROOT, TestLab, fab

SNAPSHOT_DIRS = ("/etc", "/srv", "/var/lib/keel", "/usr/local", "/home")
# One round trip: walks the trees on the host and prints one JSON object.
SNAPSHOT = r"""
import hashlib, json, os, stat, sys
out = {}
def add(p):
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        out[p] = "absent"; return
    kind = stat.S_IFMT(st.st_mode)
    entry = [oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid]
    if stat.S_ISLNK(st.st_mode):
        entry += ["link", os.readlink(p)]
    elif stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        entry += ["file", h.hexdigest()]
    else:
        entry += [kind]
    out[p] = entry
for top in sys.argv[1:]:
    add(top)
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            add(os.path.join(d, n))
json.dump(out, sys.stdout)
"""


def snapshot(conn: Connection) -> dict[str, object]:
    args = " ".join([*SNAPSHOT_DIRS, "/var/lib/dpkg/status"])
    res = conn.run(f"python3 -c {shlex.quote(SNAPSHOT)} {args}")
    assert res.ok, res.err
    return json.loads(res.out)


def diff_paths(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@pytest.fixture(scope="module")
def lab2(test_lab: TestLab) -> HostSpec:
    return test_lab.host("lab2")


def app_secret() -> str:
    doc = yaml.safe_load((ROOT / "inventory" / "group_vars" / "app.yml").read_text())
    secret = doc["apps"][0]["env"]["APP_SECRET_KEY"]
    assert len(secret) >= 8
    return secret


def plan(test_lab: TestLab, tmp_path: Path, extra: dict[str, object]) -> tuple[str, dict]:
    """``fab plan`` on lab2 with ``--json``; returns (everything printed, the JSON document)."""
    report = tmp_path / "plan.json"
    proc = fab("plan", "--limit", "lab2", "--stats", "--json", str(report),
               "--extra-vars", json.dumps({"deploy_user": "debian", **extra}),
               inventory=test_lab.inventory_path, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text
    return text, json.loads(report.read_text())


def test_plan_changes_nothing_and_shows_diffs(test_lab: TestLab, lab2: HostSpec, connect,
                                              tmp_path: Path) -> None:
    conn = connect(lab2)
    before = snapshot(conn)
    assert "/srv/hello" not in before  # never deployed

    text, doc = plan(test_lab, tmp_path, {})

    after = snapshot(conn)
    assert diff_paths(before, after) == [], "fab plan changed the host"
    assert len(after) > 500  # the walk really covered /etc

    host = doc["hosts"]["lab2"]
    assert doc["check"] is True and host["failed"] is False
    changed = {(r["op"], r["target"]) for r in host["results"] if r["changed"]}
    for item in [
        ("group", "hello"), ("user", "hello"), ("directory", "/srv/hello"),
        ("template", "/srv/hello/shared/env"), ("template", "/etc/uwsgi-apps/hello.ini"),
        ("template", "/etc/systemd/system/hello.service"), ("packages", "nginx logrotate"),
        ("template", "/etc/nginx/sites-available/hello"),
        ("symlink", "/etc/nginx/sites-enabled/hello"), ("service", "nginx"),
        ("service", "hello.service"), ("symlink", "/srv/hello/current"),
    ]:
        assert item in changed, f"{item} missing from the plan: {sorted(changed)}"
    assert host["changed"] == len(changed) >= 15
    recap = re.search(r"^lab2\s+(\d+)\s+(\d+)\s+0\s+0\s+(\d+)\s+(\d+)\s", text, re.M)
    assert recap, text[-2000:]
    assert [int(g) for g in recap.groups()] == [host["ok"], host["changed"], host["round_trips"],
                                                host["commands"]]

    # Unified diffs of the files it would write, each under its "would change" line.
    lines = text.splitlines()
    site = lines.index("lab2 would change  template /etc/nginx/sites-available/hello (created)")
    assert lines[site + 1:site + 3] == ["    --- /etc/nginx/sites-available/hello (before)",
                                        "    +++ /etc/nginx/sites-available/hello (after)"]
    assert re.fullmatch(r"    @@ -0,0 \+1,\d+ @@", lines[site + 3])
    assert "    +    listen 80 default_server;" in lines
    assert "    --- /etc/systemd/system/hello.service (before)" in lines
    assert any(ln.startswith("    +ExecStart=") for ln in lines)
    assert "lab2 would run handler  reload nginx" in lines

    # The env file holds the secret: its diff is withheld, the value never printed.
    env = lines.index("lab2 would change  template /srv/hello/shared/env (created)")
    assert lines[env + 1] == "    (secret content hidden)"
    assert app_secret() not in text
    assert app_secret() not in json.dumps(doc)


def test_plan_masks_secret_values_wherever_they_appear(test_lab: TestLab, lab2: HostSpec,
                                                       tmp_path: Path) -> None:
    """A secret from the inventory that lands in a command line shows as ********, in the
    terminal output and in the --json report."""
    secret = app_secret()
    apps = yaml.safe_load((ROOT / "inventory" / "group_vars" / "app.yml").read_text())["apps"]
    apps[0]["pre_start"] = [*apps[0]["pre_start"], f"python -m hello.migrate --key {secret}"]
    text, doc = plan(test_lab, tmp_path, {"apps": apps})
    assert secret not in text
    assert "lab2 would change  command hello: python -m hello.migrate --key ******** (ran)" in (
        text.splitlines())
    # The --json report is masked the same way.
    assert secret not in (tmp_path / "plan.json").read_text()
    targets = [r["target"] for r in doc["hosts"]["lab2"]["results"] if r["op"] == "command"]
    assert "hello: python -m hello.migrate --key ********" in targets


def test_plan_masks_values_from_ansible_vault(test_lab: TestLab, lab2: HostSpec,
                                              tmp_path: Path) -> None:
    """A group_vars file encrypted by the real ansible-vault CLI: decrypted with
    --vault-password-file, and every value from it masked whatever its name."""
    marker = "vault-only-7f3a2c"
    inv = tmp_path / "inv"
    (inv / "group_vars" / "app").mkdir(parents=True)
    (inv / "lab.yml").write_text(test_lab.inventory_path.read_text())
    main = yaml.safe_load((ROOT / "inventory" / "group_vars" / "app.yml").read_text())
    main["apps"][0]["pre_start"].append(f"python -m hello.migrate --note {marker}")
    vault = inv / "group_vars" / "app" / "vault.yml"
    vault.write_text(yaml.safe_dump(main))
    (tmp_path / "pass").write_text("lab vault password\n")
    subprocess.run([str(Path(sys.executable).with_name("ansible-vault")), "encrypt",
                    "--vault-password-file", str(tmp_path / "pass"), str(vault)],
                   check=True, capture_output=True, timeout=60)
    assert marker not in vault.read_text()
    report = tmp_path / "plan.json"
    proc = fab("plan", "--limit", "lab2", "--json", str(report), "--vault-password-file",
               str(tmp_path / "pass"), "--extra-vars", json.dumps({"deploy_user": "debian"}),
               inventory=inv / "lab.yml", timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    # Every string of the file is a secret: the app's name and each pre_start command too.
    commands = [ln for ln in text.splitlines() if ln.startswith("lab2 would change  command")]
    assert "lab2 would change  command ********: ******** (ran)" in commands, text[-3000:]
    assert "lab2 would change  template /etc/nginx/sites-available/******** (created)" in text
    assert marker not in text
    assert marker not in report.read_text()
