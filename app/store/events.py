"""Where workflow events are recorded and read: the outbox and the feed in commit order.

Every transaction that decides a workflow, makes it overdue or records a
disagreement calls `emit` as its last statement. `emit` takes one advisory
lock (FEED_LOCK) and draws the events' feed positions under it; the lock is
released only after the transaction's commit is visible to everyone. So
positions become visible in the order they were drawn: a reader that has
seen position n will never later find a smaller one appear. Several
appliers commit concurrently; only this last step of theirs waits in turn,
and only in transactions that made events.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.model.times import iso
from app.store.db import Connection
from app.store.queries import sql

# Any constant will do; this one spells "dl_feed".
FEED_LOCK = 0x646C5F66656564

DECIDED = "workflow.decided"
OVERDUE = "workflow.overdue"
DISCREPANCY = "workflow.discrepancy"
TYPES = (DECIDED, OVERDUE, DISCREPANCY)


@dataclass(frozen=True)
class NewEvent:
    """An event to record for a workflow locked in this transaction."""

    dispatch_uuid: str
    type: str
    # Merged into the workflow's summary: what this event is about.
    detail: Mapping[str, Any] = field(default_factory=dict)


def emit(conn: Connection, events: Sequence[NewEvent], now: datetime) -> None:
    """Record events in the caller's transaction, which must commit right after (see above).

    The workflows must be locked by the caller (their summaries and
    sequence numbers are read from their rows).
    """
    if not events:
        return
    conn.execute(sql("take_feed_lock"), {"key": FEED_LOCK})
    conn.execute(
        sql("emit_events"),
        {
            "dispatch_uuid": [e.dispatch_uuid for e in events],
            "type": [e.type for e in events],
            "detail": [json.dumps(e.detail, separators=(",", ":")) for e in events],
            "now": now,
        },
    )


def document(row: Mapping[str, Any]) -> dict[str, Any]:
    """An event as consumers get it, from the feed and in a webhook."""
    return {
        "id": row["event_id"],
        "type": row["type"],
        "timestamp": iso(row["created_at"]),
        "data": row["data"],
    }


def feed(conn: Connection, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` events after feed position `after`, in commit order, with their positions."""
    rows = conn.execute(sql("feed_page"), {"after": after, "limit": limit}).fetchall()
    return [{"position": row["position"], **document(row)} for row in rows]


def head(conn: Connection) -> int:
    """The last position handed out (0: none yet)."""
    row = conn.execute(sql("feed_head")).fetchone()
    assert row is not None
    return int(row["head"])


def of_workflow(conn: Connection, dispatch_uuid: str) -> list[dict[str, Any]]:
    rows = conn.execute(sql("workflow_events"), {"dispatch_uuid": dispatch_uuid}).fetchall()
    return [document(row) for row in rows]
