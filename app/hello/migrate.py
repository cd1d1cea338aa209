"""The app's schema: a small SQLite file in the state dir.

This is the example of a command run in the new code before it takes
traffic. The deploy runs it from the new release directory, as the app
user, with the app's environment::

    python migrate.py                      # uses APP_STATE_DIR, APP_RELEASE
    python migrate.py --state-dir /srv/hello/shared/state --release r42
    flask --app hello:create_app migrate   # the same, as a Flask command

It is idempotent: a second run changes nothing. Its first line of output
starts with ``changed:`` or ``unchanged:`` so a caller can report which.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "hello.sqlite3"

# Each entry takes the schema from version N to N + 1. Append, never edit.
MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS releases (
        release     TEXT PRIMARY KEY,
        migrated_at TEXT NOT NULL
    )
    """,
)

LATEST = len(MIGRATIONS)


@dataclass(frozen=True)
class MigrateResult:
    """What a migrate run did: schema versions before and after, and whether
    the release was recorded for the first time."""

    db_path: Path
    before: int
    after: int
    release: str
    release_recorded: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.release_recorded

    def summary(self) -> str:
        word = "changed" if self.changed else "unchanged"
        if self.before == self.after:
            schema = f"schema at version {self.after}"
        else:
            schema = f"schema version {self.before} -> {self.after}"
        recorded = "recorded" if self.release_recorded else "already recorded"
        return f"{word}: {schema} in {self.db_path}; release {self.release} {recorded}"


def db_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / DB_NAME


def schema_version(state_dir: str | os.PathLike | None) -> int | None:
    """The schema version, or None if there is no database (or no state dir)."""
    if not state_dir:
        return None
    path = db_path(state_dir)
    if not path.is_file():
        return None
    try:
        # Read-only: a probe must never create or lock the database.
        with _closing(sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)) as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error:
        return None


def migrate(state_dir: str | os.PathLike, release: str) -> MigrateResult:
    """Bring the schema to the latest version and record ``release``.

    The state dir must exist: it is created by the deploy with the right
    owner, and creating it here (perhaps as another user) would hide that.
    """
    state = Path(state_dir)
    if not state.is_dir():
        raise FileNotFoundError(f"state dir {state} does not exist")
    path = db_path(state)
    with _closing(sqlite3.connect(path, isolation_level=None)) as conn:
        # IMMEDIATE takes the write lock now, so two concurrent runs queue up
        # instead of both applying the same migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.execute("PRAGMA user_version").fetchone()[0]
            for version in range(before, LATEST):
                conn.execute(MIGRATIONS[version])
            if before < LATEST:
                conn.execute(f"PRAGMA user_version = {LATEST}")
            cursor = conn.execute(
                "INSERT OR IGNORE INTO releases (release, migrated_at)"
                " VALUES (?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
                (release,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return MigrateResult(
        db_path=path,
        before=before,
        after=max(before, LATEST),
        release=release,
        release_recorded=cursor.rowcount == 1,
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="migrate.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("APP_STATE_DIR"),
        help="writable state directory (default: $APP_STATE_DIR)",
    )
    parser.add_argument(
        "--release",
        default=os.environ.get("APP_RELEASE") or "dev",
        help="release id to record (default: $APP_RELEASE or 'dev')",
    )
    args = parser.parse_args(argv)
    if not args.state_dir:
        print("error: no state dir: set APP_STATE_DIR or pass --state-dir", file=sys.stderr)
        return 2
    try:
        result = migrate(args.state_dir, args.release)
    except (OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


class _closing:
    """sqlite3's own context manager commits but does not close."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc_info) -> None:
        self.conn.close()
