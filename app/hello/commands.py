"""Flask CLI commands (``flask --app hello:create_app <command>``)."""

from __future__ import annotations

import sqlite3

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from hello.migrate import migrate


def register(app: Flask) -> None:
    app.cli.add_command(migrate_command)


@click.command("migrate")
@click.option("--state-dir", help="writable state directory (default: $APP_STATE_DIR)")
@click.option("--release", help="release id to record (default: $APP_RELEASE or 'dev')")
@with_appcontext
def migrate_command(state_dir: str | None, release: str | None) -> None:
    """Create or upgrade the app's database; safe to run again."""
    settings = current_app.config["SETTINGS"]
    state_dir = state_dir or settings.state_dir
    if not state_dir:
        raise click.UsageError("no state dir: set APP_STATE_DIR or pass --state-dir")
    try:
        result = migrate(state_dir, release or settings.release)
    except (OSError, sqlite3.Error) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(result.summary())
