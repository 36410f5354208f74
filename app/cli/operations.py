"""Operators' tasks: analyst logins, pruning, `rebuild`, `reprocess-rejects`."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click
import psycopg

from app.cli.group import database, main, migrated_url
from app.config import Settings
from app.receive import rejects
from app.receive.auth import Credentials
from app.store import operations
from app.store.partitions import PartitionsBusy

if TYPE_CHECKING:
    from app.pipeline.rebuild import RebuildProgress


@main.command("analyst-role")
@click.argument("name")
@click.option("--password-env", metavar="VAR", help="Read the login's password from this variable.")
def analyst_role(name: str, password_env: str | None) -> None:
    """Create (or update) a read-only login for the analytics views.

    Needs a database user with CREATEROLE (DATABASE_URL's). Without
    --password-env the login gets no password, so it can connect only where
    pg_hba.conf trusts it (peer or trust); give one to connect over the network.
    """
    password = os.environ.get(password_env) if password_env else None
    if password_env and not password:
        raise click.ClickException(f"{password_env} is not set")
    try:
        operations.create_analyst(migrated_url(Settings.from_env()), name, password)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise click.ClickException(
            f"the database user may not create roles ({exc.diag.message_primary}): it needs"
            " CREATEROLE, or make the login with your host's tools and grant it"
            " dispatch_ledger_analyst"
        ) from None
    click.echo(f"{name} can read the analytics views (schema analytics) and nothing else")


@main.command("prune-raw")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=1),
    required=True,
    help="Remove raw callbacks dated (their own timestamp) more than this many days ago.",
)
def prune_raw(older_than_days: int) -> None:
    """Remove old raw callbacks, whole weeks at a time; the current state is kept.

    After it, `rebuild` refuses (it would lose what they said). Reads DATABASE_URL.
    """
    try:
        done = operations.prune_raw(
            migrated_url(Settings.from_env()), timedelta(days=older_than_days), datetime.now(UTC)
        )
    except operations.RawLogBusy as busy:
        raise click.ClickException(f"nothing pruned: {busy}") from None
    except PartitionsBusy as busy:
        raise click.ClickException(f"stopped: {busy}") from None
    weeks = ", ".join(done.partitions) or "none"
    click.echo(
        f"removed {done.total} raw callbacks dated more than {older_than_days} days ago:"
        f" {done.dropped} in whole weeks dropped ({weeks}),"
        f" {done.deleted} deleted one by one"
    )


# Vonage sends a status up to 30 days after the message (WhatsApp, Messenger,
# RCS): a workflow nothing changed for longer than that is over for good.
LATEST_STATUS_DAYS = 30


@main.command("prune-state")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=LATEST_STATUS_DAYS + 1),
    required=True,
    help="Delete decided workflows no callback has changed for more than this many days"
    f" (at least {LATEST_STATUS_DAYS + 1}: Vonage sends statuses up to {LATEST_STATUS_DAYS}"
    " days late).",
)
def prune_state(older_than_days: int) -> None:
    """Delete old decided workflows and all that is kept of them, their raw callbacks included.

    For ledgers that must not keep workflows forever. Pending workflows stay.
    After it, `rebuild` refuses. Reads DATABASE_URL.
    """
    try:
        done = operations.prune_state(
            migrated_url(Settings.from_env()), timedelta(days=older_than_days), datetime.now(UTC)
        )
    except operations.RawLogBusy as busy:
        raise click.ClickException(f"nothing pruned: {busy}") from None
    click.echo(
        f"deleted {done.workflows} decided workflows unchanged for {older_than_days} days,"
        f" with their {done.raw_callbacks} raw callbacks"
    )


@main.command("prune-rejects")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=1),
    required=True,
    help="Remove rejects last received more than this many days ago.",
)
@click.option(
    "--unresolved",
    is_flag=True,
    help="Also delete rejects never recovered (their only copy): after a flood of junk.",
)
def prune_rejects(older_than_days: int, unresolved: bool) -> None:
    """Delete old kept rejects: recovered ones, or also unrecovered ones when asked.

    Reads DATABASE_URL.
    """
    try:
        done = operations.prune_rejects(
            migrated_url(Settings.from_env()),
            timedelta(days=older_than_days),
            datetime.now(UTC),
            unresolved=unresolved,
        )
    except PartitionsBusy as busy:
        raise click.ClickException(f"stopped: {busy}") from None
    which = "rejects" if unresolved else "recovered rejects"
    weeks = ", ".join(done.partitions) or "none"
    click.echo(
        f"removed {done.total} {which} last refused more than {older_than_days} days ago:"
        f" {done.dropped} in whole weeks dropped ({weeks}), {done.deleted} deleted one by one"
    )


@main.command()
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Leave out raw callbacks that today's checks refuse (they stay in the raw log).",
)
def rebuild(skip_invalid: bool) -> None:
    """Recompute every workflow, message and decision from the raw log and the definitions.

    One transaction: readers see the old state until it commits; callbacks
    that arrive meanwhile are captured and answered, and applied after it.
    Reads DATABASE_URL, MAX_JSON_DEPTH.
    """
    from app.pipeline.rebuild import RebuildRefused
    from app.pipeline.rebuild import rebuild as run

    settings = Settings.from_env()
    try:
        summary = run(
            migrated_url(settings),
            settings.max_json_depth,
            skip_invalid=skip_invalid,
            progress=_tell_rebuild_progress,
        )
    except RebuildRefused as refused:
        raise click.ClickException(f"not rebuilt: {refused}") from None
    for callback_id, reason in summary.skipped:
        click.echo(f"left out raw callback {callback_id}: {reason}")
    click.echo(
        f"rebuilt from {summary.callbacks} raw callbacks and {summary.definitions} definitions"
        f" in {summary.seconds:.1f} s"
        + (f"; {len(summary.skipped)} left out" if summary.skipped else "")
        + (
            f"; {summary.outcomes_changed} workflows decided otherwise (told as events)"
            if summary.outcomes_changed
            else ""
        )
    )


def _tell_rebuild_progress(progress: RebuildProgress) -> None:
    """On stderr, every PROGRESS_EVERY s: a large log takes hours, and appliers wait meanwhile."""
    minutes = progress.seconds / 60
    if progress.finished:
        click.echo(
            f"rebuilding: the whole raw log applied again ({progress.callbacks:,} callbacks)"
            f" in {minutes:.1f} min; deciding what changed, then committing",
            err=True,
        )
        return
    left = progress.seconds_left
    click.echo(
        f"rebuilding: {progress.callbacks:,} raw callbacks applied again"
        f" (about {progress.share:.0%} of the log) in {minutes:.1f} min"
        + (f"; about {left / 60:.0f} min left" if left is not None else ""),
        err=True,
    )


@main.command("reprocess-rejects")
def reprocess_rejects_command() -> None:
    """Run kept rejects through today's checks (secrets too); recovered ones are applied.

    Exits with status 1 while any kept reject remains unrecovered. Reads
    VONAGE_SIGNATURE_SECRET (and _PREVIOUS), WEBHOOK_BASIC_USER/PASSWORD,
    MAX_JSON_DEPTH, DATABASE_URL.
    """
    settings = Settings.from_env()
    credentials = Credentials.from_settings(settings)
    with database(settings) as db:
        summary = rejects.reprocess(db, credentials, settings.max_json_depth, datetime.now(UTC))
    click.echo(
        f"recovered {summary.recovered}, already stored {summary.duplicates}, "
        f"still rejected {summary.still_rejected}, failed {summary.failed}; "
        f"{summary.remaining} unrecovered rejects remain"
    )
    if summary.remaining:
        sys.exit(1)
