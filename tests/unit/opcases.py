"""Data-driven operation cases: ``ops_cases/<module>/*.json``, state in and commands out.

A case gives an operation's args and its probe outputs, and the whole
expected outcome; ``check_case`` also insists that a no-change decision takes
exactly one probe and that every given probe is used.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from keel.operation import Change, Fail, NoChange, Outcome, simulate

CASES = Path(__file__).parent / "ops_cases"
CASE_KEYS = {"op", "args", "kwargs", "probes", "probe", "outcome", "reason", "commands", "diff",
             "stdin", "secret", "before"}


def load_cases(name: str) -> list[Any]:
    paths = sorted((CASES / name).glob("*.json"))
    assert paths, f"no cases in {CASES / name}"
    return [pytest.param(json.loads(p.read_text()), id=p.stem) for p in paths]


def expected_outcome(case: dict[str, Any]) -> Outcome:
    if case["outcome"] == "Change":
        return Change(case["commands"], case["reason"], case.get("diff", ""),
                      case.get("stdin", "").encode(), case.get("secret", False),
                      case.get("before", ""))
    assert "commands" not in case, "only a Change has commands"
    return {"NoChange": NoChange, "Fail": Fail}[case["outcome"]](case["reason"])


def check_case(module: types.ModuleType, case: dict[str, Any]) -> None:
    assert set(case) <= CASE_KEYS, f"unknown keys {set(case) - CASE_KEYS}"
    if case["outcome"] == "NoChange":
        assert len(case["probes"]) == 1, "a no-change decision takes exactly one probe"
    op = getattr(module, case["op"])
    args, kwargs = case["args"], case.get("kwargs", {})
    feed = iter([tuple(p) for p in case["probes"]])
    assert simulate(op(*args, **kwargs), feed) == expected_outcome(case)
    assert next(feed, None) is None, "the operation used fewer probes than given"
    if "probe" in case:
        assert next(op(*args, **kwargs)).script == case["probe"]
