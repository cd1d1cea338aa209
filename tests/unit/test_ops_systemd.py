"""keel.ops.systemd: service, restart, reload and daemon_reload.

The cases are ``ops_cases/systemd/*.json``: args and the ``systemctl show``
key=value lines in, the exact outcome out. restart, reload and daemon_reload
take no probe.
"""

from __future__ import annotations

from typing import Any

import pytest

from keel.operation import NoChange, simulate
from keel.ops import systemd
from tests.unit.opcases import check_case, load_cases


# The case loader is repeated in each test_ops_*.py so that each module stands alone.
@pytest.mark.parametrize("case", load_cases("systemd"))
def test_case(case: dict[str, Any]) -> None:
    check_case(systemd, case)


# ------------------------------------------------------------ regressions


@pytest.mark.parametrize("file_state", ["generated", "indirect", "transient", "enabled-runtime", "alias",
                                        "static"])
def test_generated_or_indirect_unit_counts_as_enabled(file_state: str) -> None:
    probe = (0, f"LoadState=loaded\nUnitFileState={file_state}\nActiveState=active\n"
                "NeedDaemonReload=no\n")
    assert simulate(systemd.service("hello"), [probe]) == NoChange(f"{file_state}, active")


@pytest.mark.parametrize(("enabled", "running"), [(False, False), (False, None), (None, False),
                                                  (None, None)])
def test_missing_unit_asked_stopped_and_disabled_is_not_a_change(enabled: bool | None,
                                                                 running: bool | None) -> None:
    probe = (0, "LoadState=not-found\nUnitFileState=\nActiveState=inactive\nNeedDaemonReload=no\n")
    out = simulate(systemd.service("hello", enabled=enabled, running=running), [probe])
    assert out == NoChange("unit absent")
