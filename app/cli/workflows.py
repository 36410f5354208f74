"""`send` a workflow to Vonage and record it; list what is `overdue`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from app.cli.group import database, main
from app.config import Settings
from app.read.overdue import list_overdue
from app.send import workflows
from app.send.dispatch_client import DispatchNotConfigured, DispatchRefused, DispatchUnanswered
from app.spec.intake import Rejection


@main.command()
@click.argument("request_file", type=click.File("rb"))
def send(request_file: Any) -> None:
    """Validate a Dispatch or Messages API failover request (JSON file, - for stdin), send it
    to Vonage, and record it under the id Vonage returns.

    It goes to the real Vonage API (https://api.nexmo.com) unless DISPATCH_API_URL
    says otherwise (a stand-in: `dispatch-ledger emulate`). Reads DISPATCH_API_KEY and
    DISPATCH_API_SECRET, or DISPATCH_APPLICATION_ID and DISPATCH_PRIVATE_KEY;
    DISPATCH_TIMEOUT_SECONDS; DATABASE_URL.
    """
    settings = Settings.from_env()
    try:
        body = json.loads(request_file.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{request_file.name} is not JSON: {exc}") from None
    try:
        with database(settings) as db:
            sent = workflows.send(db, body, settings, datetime.now(UTC))
    except Rejection as rejection:
        click.echo(json.dumps(rejection.errors, indent=2), err=True)
        raise click.ClickException(rejection.message) from None
    except (DispatchNotConfigured, DispatchRefused, DispatchUnanswered) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(sent.dispatch_uuid)
    if not sent.recorded:
        # Exit 0 all the same: a script that retried on failure would send it twice.
        click.echo(sent.not_recorded(), err=True)


@main.command()
@click.option(
    "--grace", type=int, help="Seconds of lateness allowed (default: OVERDUE_GRACE_SECONDS)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option("--fail-if-any", is_flag=True, help="Exit with status 1 if anything is overdue.")
def overdue(grace: int | None, as_json: bool, fail_if_any: bool) -> None:
    """List workflows whose failover, step outcome or final report is overdue, and why.

    Reads OVERDUE_GRACE_SECONDS and LAST_STEP_TIMEOUT_SECONDS.
    """
    settings = Settings.from_env()
    allowed = grace if grace is not None else settings.overdue_grace_seconds
    timeout = settings.last_step_timeout_seconds
    with database(settings) as db:
        found = list_overdue(db, datetime.now(UTC), allowed, 10_000, timeout)
    for item in found:
        doc = item.document()
        if as_json:
            click.echo(json.dumps(doc))
        else:
            click.echo(f"{doc['dispatch_uuid']}  {doc['kind']:<22} {doc['reason']}")
    if not as_json:
        click.echo(f"{len(found)} overdue (grace {allowed} s, outcome timeout {timeout} s)")
    if fail_if_any and found:
        sys.exit(1)
