"""The testinfra suite run by ``fab verify``: expectations arrive as JSON per host."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def expect(host: Any) -> dict[str, Any]:
    """What this host should look like (from inventory vars and role defaults)."""
    path = os.environ.get("KEEL_VERIFY_VARS")
    if not path:
        pytest.fail("KEEL_VERIFY_VARS is not set: run this suite through `fab verify`")
    data = json.loads(Path(path).read_text())
    return data[host.backend.hostname]
