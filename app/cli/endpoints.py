"""`endpoints`: receivers of webhooks out; `deliver`: the deliverer as a process of its own."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
from marshmallow import ValidationError

from app.cli.group import database, main, wait_for_the_database
from app.config import Settings
from app.store.events import TYPES

if TYPE_CHECKING:
    from app.outbound.delivery import Deliverer


@main.group("endpoints")
def endpoints_group() -> None:
    """Receivers of webhooks out: each workflow event, signed (Standard Webhooks).

    The same as POST/GET/DELETE /endpoints. Reads DATABASE_URL,
    ENDPOINTS_ALLOW_HTTP, ENDPOINTS_ALLOW_PRIVATE.
    """


def _not_found(endpoint_id: str) -> click.ClickException:
    return click.ClickException(f"no endpoint has the id {endpoint_id!r} (endpoints list)")


@endpoints_group.command("add")
@click.argument("url")
@click.option(
    "--event",
    "event_types",
    multiple=True,
    type=click.Choice(TYPES),
    help="An event type to send it (repeat for more; default: every type).",
)
@click.option("--description", default="", help="What it is, for whoever reads the list.")
def add(url: str, event_types: tuple[str, ...], description: str) -> None:
    """Register URL; prints its id and its secret (shown only now: keep it)."""
    from app.outbound import endpoints

    settings = Settings.from_env()
    body = {"url": url, "description": description}
    if event_types:
        body["events"] = list(event_types)  # type: ignore[assignment]
    try:
        fields = endpoints.check(body, settings)
    except ValidationError as exc:
        raise click.ClickException(f"not registered: {exc.messages}") from None
    with database(settings) as db:
        added = endpoints.add(
            db, fields["url"], fields["events"], fields["description"], datetime.now(UTC)
        )
    click.echo(f"id:     {added['id']}")
    click.echo(f"url:    {added['url']}")
    click.echo(f"events: {', '.join(added['events'])}")
    click.echo(f"secret: {added['secret']}")
    click.echo("the secret is shown only now: give it to the receiver to check signatures")


@endpoints_group.command("list")
def list_command() -> None:
    """Every endpoint and how far it is: what waits to be sent, its last outcome."""
    from app.outbound import endpoints

    settings = Settings.from_env()
    with database(settings) as db:
        found = endpoints.listed(db)
    if not found:
        click.echo("no endpoints (endpoints add URL)")
    for e in found:
        state = "enabled" if e["enabled"] else f"DISABLED since {e['disabled_at']}"
        click.echo(f"{e['id']}  {e['url']}  [{state}]")
        click.echo(
            f"  events: {', '.join(e['events'])}"
            + (f"; {e['description']}" if e["description"] else "")
        )
        click.echo(f"  {describe(e)}")
        if e["disabled_reason"]:
            click.echo(f"  disabled: {e['disabled_reason']}")


def describe(e: dict[str, object]) -> str:
    """How far an endpoint is, in one line (`endpoints list` and `status`)."""
    text = f"{e['pending']} events waiting"
    if e["oldest_pending_at"]:
        text += f" (oldest made {e['oldest_pending_at']})"
    if e["last_attempt_at"]:
        text += f"; last attempt {e['last_attempt_at']}: {e['last_outcome']}"
    if e["last_delivered_at"]:
        text += f"; last delivered {e['last_delivered_at']}"
    return text


@endpoints_group.command("remove")
@click.argument("endpoint_id")
def remove(endpoint_id: str) -> None:
    """Remove an endpoint; what was still to be sent to it is dropped."""
    from app.outbound import endpoints

    with database(Settings.from_env()) as db:
        try:
            endpoints.remove(db, endpoint_id)
        except endpoints.NotFound:
            raise _not_found(endpoint_id) from None
    click.echo(f"removed {endpoint_id}")


@endpoints_group.command("rotate-secret")
@click.argument("endpoint_id")
def rotate_secret(endpoint_id: str) -> None:
    """Give an endpoint a new secret; the old one keeps signing too for 24 hours."""
    from app.outbound import endpoints

    with database(Settings.from_env()) as db:
        try:
            secret = endpoints.rotate_secret(db, endpoint_id, datetime.now(UTC))
        except endpoints.NotFound:
            raise _not_found(endpoint_id) from None
    click.echo(f"secret: {secret}")
    click.echo("deliveries carry a signature by each secret for 24 hours; then by this one only")


@endpoints_group.command("enable")
@click.argument("endpoint_id")
def enable(endpoint_id: str) -> None:
    """Turn a disabled endpoint back on: it gets the events made from now on (replay sends the
    ones it missed)."""
    from app.outbound import endpoints

    with database(Settings.from_env()) as db:
        try:
            endpoints.enable(db, endpoint_id, datetime.now(UTC))
        except endpoints.NotFound:
            raise _not_found(endpoint_id) from None
    click.echo(f"enabled {endpoint_id}")


@endpoints_group.command("replay")
@click.argument("endpoint_id")
@click.option(
    "--since",
    required=True,
    help="Send the events made since this time (ISO 8601, e.g. 2026-12-07T08:00:00Z).",
)
def replay(endpoint_id: str, since: str) -> None:
    """Send an endpoint again every event made since a time that it has not received."""
    from app.outbound import endpoints

    try:
        start = datetime.fromisoformat(since)
    except ValueError:
        raise click.BadParameter(
            f"{since!r} is not an ISO 8601 time", param_hint="--since"
        ) from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)  # a time without an offset is UTC, as everywhere here
    with database(Settings.from_env()) as db:
        try:
            count = endpoints.replay(db, endpoint_id, start, datetime.now(UTC))
        except endpoints.NotFound:
            raise _not_found(endpoint_id) from None
    click.echo(f"{count} events queued for {endpoint_id}")


@main.command("deliver")
@click.option("--once", is_flag=True, help="Send what is due, then exit (default: keep running).")
def deliver(once: bool) -> None:
    """Send workflow events to the endpoints (a `worker:` process of its own).

    The applier does it too unless DELIVER_IN_APPLIER=false; any number of
    deliverers share the work. Reads DATABASE_URL, ENDPOINT_RETRY_SECONDS,
    ENDPOINT_TIMEOUT_SECONDS.
    """
    from app.outbound.delivery import Deliverer, own_database

    settings = Settings.from_env()
    if not once:
        wait_for_the_database(settings)
    with database(settings) as shared:
        db = own_database(shared)
        try:
            _deliver(Deliverer(db, settings), once)
        finally:
            db.close()


def _deliver(deliverer: Deliverer, once: bool) -> None:
    if once:
        done = deliverer.turn()
        click.echo(
            f"delivered {done.delivered}, failed {done.failed}, gave up {done.gave_up};"
            f" {done.overdue} workflows newly overdue"
        )
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo("delivering workflow events to the endpoints; Ctrl-C to stop", err=True)
    try:
        deliverer.run(stop)
    except KeyboardInterrupt:
        stop.set()
