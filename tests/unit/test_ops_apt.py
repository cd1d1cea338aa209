"""keel.ops.apt: ``update`` and ``packages``, state in and commands out.

The cases are ``ops_cases/apt/*.json``: args and the probe output (``dpkg-query``
lines ``name ii `` or, with a version pin, ``name ii  version``, and an
``age=<seconds>`` line for the update stamp) in, the exact outcome out.
"""

from __future__ import annotations

from typing import Any

import pytest

from keel.operation import Change, NoChange, simulate
from keel.ops import apt
from tests.unit.opcases import check_case, load_cases


# The case loader is repeated in each test_ops_*.py so that each module stands alone.
@pytest.mark.parametrize("case", load_cases("apt"))
def test_case(case: dict[str, Any]) -> None:
    check_case(apt, case)


# ------------------------------------------------------------ regressions


@pytest.mark.parametrize("status", ["hi ", "ii ", "iiR", "ri ", "pi "])
def test_held_package_counts_as_installed(status: str) -> None:
    out = simulate(apt.packages(["nginx"]), [(0, f"nginx {status}\nage=5\n")])
    assert out == NoChange("all installed")


@pytest.mark.parametrize("status", ["un ", "rc ", "iU ", "iF ", "iH ", "in "])
def test_not_fully_installed_is_installed(status: str) -> None:
    out = simulate(apt.packages(["nginx"]), [(0, f"nginx {status}\nage=5\n")])
    assert isinstance(out, Change) and out.reason == "installed nginx"
