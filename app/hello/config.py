"""Settings read from the environment.

In production systemd loads them from the app's EnvironmentFile, and the
uWSGI ini adds the per-release ones. Reading them never fails: missing
required settings are listed in ``Settings.missing`` so the app still
imports, and /healthz can answer 503 naming what is absent.

>>> s = load_settings({"APP_SECRET_KEY": "k", "APP_STATE_DIR": "/tmp"})
>>> s.missing, s.name, s.release
((), 'hello', 'dev')
>>> load_settings({}).missing
('APP_SECRET_KEY', 'APP_STATE_DIR')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REQUIRED = ("APP_SECRET_KEY", "APP_STATE_DIR")

DEFAULT_CPU_MAX_N = 5_000_000


@dataclass(frozen=True)
class Settings:
    """What the app knows about itself, one field per environment variable."""

    name: str
    release: str
    state_dir: str | None
    secret_key: str | None
    cpu_max_n: int
    missing: tuple[str, ...]


def _release_file() -> str | None:
    """The deploy writes the release id to ``RELEASE`` beside the package (like
    Capistrano's REVISION); read per process, so a chain reload picks up the new one."""
    path = Path(__file__).resolve().parent.parent / "RELEASE"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from an environment mapping.

    - ``APP_NAME``: shown on the index page (default ``hello``).
    - ``APP_RELEASE``: release id being served (default: the ``RELEASE`` file, else ``dev``).
    - ``APP_STATE_DIR``: writable directory for state (required).
    - ``APP_SECRET_KEY``: Flask secret key (required).
    - ``APP_CPU_MAX_N``: upper clamp for ``/cpu?n=`` (default 5,000,000).

    Empty values count as missing: ``APP_SECRET_KEY=`` is not a key.
    """

    def get(key: str) -> str | None:
        value = environ.get(key, "").strip()
        return value or None

    try:
        cpu_max_n = max(0, int(get("APP_CPU_MAX_N") or DEFAULT_CPU_MAX_N))
    except ValueError:
        cpu_max_n = DEFAULT_CPU_MAX_N

    return Settings(
        name=get("APP_NAME") or "hello",
        release=get("APP_RELEASE") or _release_file() or "dev",
        state_dir=get("APP_STATE_DIR"),
        secret_key=get("APP_SECRET_KEY"),
        cpu_max_n=cpu_max_n,
        missing=tuple(key for key in REQUIRED if get(key) is None),
    )
