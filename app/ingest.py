"""Store a callback and apply it to the state, in one transaction."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from psycopg import Cursor
from psycopg.rows import DictRow

from app import decide, storage
from app.db import Connection, Database, jsonb
from app.intake import Callback
from app.queries import sql
from app.state import (
    Discrepancy,
    FinalReport,
    StatusEvent,
    apply_final_report,
    apply_reported_message,
    apply_status,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receipt:
    """What became of one delivery."""

    outcome: Literal["accepted", "duplicate"]
    callback_id: int


def receive(db: Database, callback: Callback, content_type: str | None, now: datetime) -> Receipt:
    """Store the raw callback and apply it; a duplicate changes nothing but a counter."""
    return db.run(lambda conn: receive_in(conn, callback, content_type, now))


def receive_in(
    conn: Connection, callback: Callback, content_type: str | None, now: datetime
) -> Receipt:
    """`receive` inside a transaction the caller runs (reprocessing, batches)."""
    event = callback.event
    params = {
        "kind": callback.kind.value,
        "dedup_key": callback.dedup_key,
        "body": callback.body,
        "payload": jsonb(callback.payload),
        "content_type": content_type,
        "message_uuid": event.message_uuid if isinstance(event, StatusEvent) else None,
        "dispatch_uuid": event.dispatch_uuid,
        "event_at": event.occurred_at,
        "received_at": now,
    }
    raw = conn.execute(sql("insert_raw_callback"), params)
    prelocked = None
    if isinstance(event, StatusEvent) and event.dispatch_uuid is not None:
        # The common case (the callback names its workflow): the raw insert
        # and both locks are queued together and read in one round trip. For
        # a duplicate the locks cost nothing more than the round trip.
        prelocked = (
            storage.queue_lock_dispatch(conn, event.dispatch_uuid, now),
            storage.queue_lock_message(conn, event.message_uuid, now),
        )
    row = raw.fetchone()
    if row is None:
        # The same callback again (providers retry): it was applied the first
        # time, so only the delivery is counted.
        dup = conn.execute(sql("count_redelivery"), params).fetchone()
        assert dup is not None  # the conflicting row exists and rows are never deleted
        return Receipt("duplicate", dup["id"])
    callback_id: int = row["id"]
    apply_stored(conn, event, callback_id, now, prelocked)
    return Receipt("accepted", callback_id)


def apply_stored(
    conn: Connection,
    event: StatusEvent | FinalReport,
    callback_id: int,
    received_at: datetime,
    prelocked: tuple[Cursor[DictRow], Cursor[DictRow]] | None = None,
) -> None:
    """Apply a callback whose raw copy is stored as `callback_id` (receiving, rebuilding)."""
    if isinstance(event, StatusEvent):
        found = _apply_status(conn, event, received_at, prelocked)
    else:
        found = _apply_final_report(conn, event, received_at)
    storage.record_discrepancies(conn, found, callback_id, received_at)


def _apply_status(
    conn: Connection,
    event: StatusEvent,
    now: datetime,
    prelocked: tuple[Cursor[DictRow], Cursor[DictRow]] | None = None,
) -> list[Discrepancy]:
    # Lock order is the workflow, then the message (as for final reports), so
    # that one workflow's callbacks cannot deadlock each other. The workflow
    # comes from the callback's link or, without one, from what is known.
    if prelocked is not None:
        assert event.dispatch_uuid is not None
        locked = {event.dispatch_uuid: storage.locked_dispatch(prelocked[0])}
        message = storage.locked_message(prelocked[1])
    else:
        known = storage.find_message_dispatch(conn, event.message_uuid)
        locked = {
            uuid: storage.lock_dispatch(conn, uuid, now)
            for uuid in sorted({d for d in (event.dispatch_uuid, known) if d is not None})
        }
        message = storage.lock_message(conn, event.message_uuid, now)
    transition = apply_status(message, event)
    linked = (message.dispatch_uuid, transition.state.dispatch_uuid)
    for other in sorted({u for u in linked if u is not None} - locked.keys()):
        # Linked elsewhere (by a final report after we looked), or a link that
        # wins a conflict and so leaves the workflow the message was counted
        # in: both workflows change, so lock the missing one now. A deadlock
        # this could cause is detected by PostgreSQL and the unit retried.
        locked[other] = storage.lock_dispatch(conn, other, now)
    storage.save_message(conn, transition.state, now)
    for dispatch in locked.values():
        decide.messages_changed(conn, dispatch, now)
    return list(transition.discrepancies)


def _apply_final_report(conn: Connection, report: FinalReport, now: datetime) -> list[Discrepancy]:
    # Lock order is always the workflow first, then its messages sorted by id,
    # so that concurrent deliveries of one workflow cannot deadlock.
    locked = storage.lock_dispatch(conn, report.dispatch_uuid, now)
    found: list[Discrepancy] = []
    touched: set[str] = set()  # the workflows the listed messages belonged to, or now do
    for reported in sorted(report.messages, key=lambda m: m.message_uuid):
        message = storage.lock_message(conn, reported.message_uuid, now)
        moved = apply_reported_message(message, report.dispatch_uuid, reported)
        storage.save_message(conn, moved.state, now)
        found.extend(moved.discrepancies)
        touched |= {u for u in (message.dispatch_uuid, moved.state.dispatch_uuid) if u}
    transition = apply_final_report(locked.state, report)
    storage.save_dispatch(conn, transition.state, now, final_report=True)
    decide.messages_changed(conn, locked, now, transition.state)
    # A message the report claims from another workflow (a conflict, kept as
    # a discrepancy) may change that workflow too: lock it (out of order, so a
    # deadlock is possible; PostgreSQL detects it and the unit is retried),
    # then recount and re-decide it with the messages as they now stand.
    for other in sorted(touched - {report.dispatch_uuid}):
        decide.messages_changed(conn, storage.lock_dispatch(conn, other, now), now)
    found.extend(transition.discrepancies)
    return found
