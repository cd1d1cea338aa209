"""keel.ops.server: group, user, authorized_key, hostname and command.

The cases are ``ops_cases/server/*.json``: args and the probe output (``getent``
and ``id`` lines, the home directory and ``present``/``absent``, ``kernel=``,
``file=`` and /etc/hosts ``127.0.1.1`` lines, guard ``done``/``todo``) in, the
exact outcome out. Unguarded commands take no probe.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from keel.operation import Change, simulate
from keel.ops import server
from tests.unit.opcases import check_case, load_cases


# The case loader is repeated in each test_ops_*.py so that each module stands alone.
@pytest.mark.parametrize("case", load_cases("server"))
def test_case(case: dict[str, Any]) -> None:
    check_case(server, case)


# ------------------------------------------------------------ regressions

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKs deploy@ci"


def test_hostname_missing_hosts_entry_is_added() -> None:
    out = simulate(server.hostname("web1"), [(1, "kernel=web1\nfile=web1\n")])
    assert out == Change(["sed -i '/^127.0.1.1[[:space:]]/d' /etc/hosts && "
                          "printf '127.0.1.1\\t%s\\n' web1 >> /etc/hosts"],
                         "/etc/hosts 127.0.1.1 (none) -> web1")


def test_user_home_not_given_is_left_alone() -> None:
    probe = (0, "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nwww-data\nwww-data\n")
    out = simulate(server.user("www-data", groups=["hello"]), [probe])
    assert out == Change(["usermod --append --groups hello www-data"], "added to hello")


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(None, KEY + "\n", id="no-file"),
        pytest.param("", KEY + "\n", id="empty-file"),
        pytest.param("ssh-rsa AAAA old\n", "ssh-rsa AAAA old\n" + KEY + "\n", id="trailing-newline"),
        pytest.param("ssh-rsa AAAA old", "ssh-rsa AAAA old\n" + KEY + "\n", id="no-trailing-newline"),
    ],
)
def test_authorized_key_append_starts_on_a_new_line(tmp_path: Path, before: str | None,
                                                    after: str) -> None:
    """The append commands, run by sh on a local file, never join two keys."""
    out = simulate(server.authorized_key("deploy", KEY), [(0, "/home/deploy\nabsent\n")])
    assert isinstance(out, Change)
    append = [c for c in out.commands if "authorized_keys" in c and not c.startswith(("ch", "h="))]
    assert len(append) == 2, append
    keys = tmp_path / ".ssh" / "authorized_keys"
    keys.parent.mkdir()
    if before is not None:
        keys.write_text(before)
    subprocess.run(["sh", "-ec", "\n".join(append)], env={"h": str(tmp_path), "PATH": os.defpath},
                   check=True)
    assert keys.read_text() == after
