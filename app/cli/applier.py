"""`apply`: the applier as a process of its own (a `worker:`); `status`: how far it is."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

import click

from app.cli.group import database, main, wait_for_the_database
from app.config import Settings
from app.pipeline import figures_keeper
from app.store import backlog, daily_figures, partitions
from app.store.db import Database, DatabaseUnavailable

if TYPE_CHECKING:
    from app.outbound.delivery import Deliverer


@main.command("apply")
@click.option(
    "--once", is_flag=True, help="Apply what is waiting and due, then exit (default: keep running)."
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Retry callbacks that failed to apply now, without waiting for their backoff.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.01),
    default=0.05,
    show_default=True,
    help="Seconds between looks for new callbacks while idle.",
)
@click.option(
    "--niceness",
    type=click.IntRange(0, 19),
    default=None,
    help="Run at this CPU priority (nice; 19 is the lowest), so that what else runs comes first.",
)
@click.option("--parent", type=int, default=None, hidden=True)
@click.option("--wake-fd", type=int, default=None, hidden=True)
def apply_command(
    once: bool,
    retry_failed: bool,
    poll: float,
    niceness: int | None,
    parent: int | None,
    wake_fd: int | None,
) -> None:
    """Apply captured callbacks to workflows and messages (a `worker:` process).

    The web dyno runs one too unless APPLY_IN_WEB=false; any number of
    appliers share the work. Reads DATABASE_URL, APPLY_BATCH_SIZE. With
    --once, exits with status 1 if callbacks that failed to apply remain.
    Unless DELIVER_IN_APPLIER=false, it also sends workflow events to the
    endpoints (as `deliver` does).
    """
    from app.pipeline.applier_process import set_niceness
    from app.pipeline.apply import apply_waiting

    settings = Settings.from_env()
    if niceness is not None:
        set_niceness(niceness)
    if not once:
        # A worker outlives outages: started while PostgreSQL is down (the
        # platform restarts both, in any order), it waits instead of exiting.
        wait_for_the_database(settings)
    with database(settings) as db:
        if once:
            _keep_partitions(db)
            summary = apply_waiting(
                db,
                settings.max_json_depth,
                batch=settings.apply_batch_size,
                retry_failed=retry_failed,
            )
            daily_figures.keep(db)
            click.echo(f"applied {summary.applied}, failed {summary.failed}")
            found = backlog.summary(db)
            click.echo(found.describe())
            sys.exit(1 if found.failed else 0)
        if parent is None:
            click.echo("applying captured callbacks; Ctrl-C to stop", err=True)
        else:
            # Ctrl-C at a terminal reaches the whole process group; the master
            # stops this applier itself once its workers are done.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            click.echo(f"applying captured callbacks beside the web server ({parent})", err=True)
            # Counted in the server's metrics folder: a rising count is an
            # applier that keeps dying (DispatchLedgerApplierRestarting).
            from app import metrics

            metrics.APPLIER_STARTS.inc()
        deliverer = None
        if settings.deliver_in_applier:
            from app.outbound.delivery import start_beside

            deliverer = start_beside(db, settings)

            def terminate(*_: object) -> None:
                raise SystemExit(0)  # unwinds to the `finally` below: a batch rolls back

            # Stopped (by gunicorn's master, or the platform), the deliverer
            # gives back what it leased and did not send, for the next one now.
            signal.signal(signal.SIGTERM, terminate)
        keeper = figures_keeper.start_beside(db, settings.analytics_refresh_seconds)
        try:
            _apply_forever(db, settings, poll, parent, wake_fd, retry_failed, deliverer)
        finally:
            keeper.set()
            if deliverer is not None:
                deliverer.stop()


# How often an applier makes sure the partitioned tables' weeks ahead exist (there are
# WEEKS_AHEAD of them: an hour is far more often than needed, and cheap).
PARTITIONS_UPKEEP_SECONDS = 3600


def _keep_partitions(db: Database) -> bool:
    """Make the missing weekly partitions; False (tried again soon) if that failed."""
    try:
        db.run_autocommit(partitions.ensure_all)
    except Exception as exc:  # never worth stopping the applier: captures land in the default
        click.echo(f"could not make the partitions ahead, trying again: {exc}", err=True)
        return False
    return True


def _apply_forever(
    db: Database,
    settings: Settings,
    poll: float,
    parent: int | None,
    wake_fd: int | None,
    retry_failed: bool,
    deliverer: Deliverer | None,
) -> None:
    import time

    from app.pipeline.applier_process import Wakes
    from app.pipeline.apply import apply_waiting, worth_lingering

    retry = retry_failed
    applied = failed = 0
    reported = time.monotonic()
    upkeep = 0.0  # the partitions' upkeep is due at once
    wakes = Wakes(wake_fd)
    turn = 0.0
    while True:
        if parent is not None and os.getppid() != parent:
            # Started by a gunicorn master (--parent) that is gone: so are we.
            click.echo("the web server that started this applier is gone; stopping", err=True)
            return
        turn = time.monotonic()
        if turn >= upkeep:
            upkeep = turn + (PARTITIONS_UPKEEP_SECONDS if _keep_partitions(db) else 60)
        try:
            summary = apply_waiting(
                db, settings.max_json_depth, batch=settings.apply_batch_size, retry_failed=retry
            )
        except DatabaseUnavailable as exc:
            click.echo(f"database unavailable, trying again in 5 s: {exc}", err=True)
            time.sleep(5)
            continue
        retry = False
        if summary.applied and deliverer is not None:
            # What was applied may have made events: send them now, not at the next poll.
            deliverer.wake.set()
        applied, failed = applied + summary.applied, failed + summary.failed
        if (applied or failed) and time.monotonic() - reported >= 10:
            # One line per 10 s of work, not one per batch.
            click.echo(f"applied {applied}, failed {failed}", err=True)
            applied = failed = 0
            reported = time.monotonic()
        if wakes.wait(poll):
            # Woken again: one capture since the last turn began is a rate of
            # at least 1 / (time since); if captures come often, let a few
            # more gather and apply them in one transaction.
            per_second = 1 / max(time.monotonic() - turn, 1e-6)
            if worth_lingering(per_second, settings.apply_linger_seconds):
                time.sleep(settings.apply_linger_seconds)


@main.command()
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many failed callbacks to list.",
)
def status(limit: int) -> None:
    """Say how far the applier is: callbacks waiting, failed (listed, with errors), the oldest;
    and how far each webhook endpoint is.

    Exits with status 1 while callbacks that failed to apply remain. Reads DATABASE_URL.
    """
    from app.cli.endpoints import describe
    from app.outbound import endpoints

    settings = Settings.from_env()
    with database(settings) as db:
        found = backlog.summary(db)
        failed = backlog.failed(db, limit)
        hooks = endpoints.listed(db)
    click.echo(found.describe())
    for hook in hooks:
        state = "enabled" if hook["enabled"] else f"DISABLED since {hook['disabled_at']}"
        click.echo(f"endpoint {hook['id']} ({hook['url']}, {state}): {describe(hook)}")
    for item in failed:
        click.echo(
            f"  raw callback {item['id']} ({item['kind']}, received {item['received_at']}):"
            f" {item['attempts']} attempts, next {item['retry_at'] or 'now'}: {item['error']}"
        )
    if found.failed:
        click.echo("fix the cause, then: dispatch-ledger apply --once --retry-failed")
        sys.exit(1)
