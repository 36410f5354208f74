"""Workflow definitions (recorded or sent to Dispatch) and the overdue listing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from marshmallow import ValidationError

from app import decide, dispatch_client
from app.config import Settings
from app.db import Database
from app.definitions import load_definition
from app.failover import Definition
from app.intake import schema_rejection
from app.queries import sql
from app.times import iso


def validate(body: Any) -> Definition:
    """A Dispatch request body as a definition; Rejection(422) lists every problem."""
    try:
        return load_definition(body)
    except ValidationError as exc:
        raise schema_rejection(
            exc, "The workflow definition does not follow the Dispatch API reference."
        ) from None


def record(db: Database, dispatch_uuid: str, body: Any, now: datetime) -> bool:
    """Store the definition of a workflow another system sent; True if it is new."""
    definition = validate(body)
    return db.run(
        lambda conn: decide.record_definition(
            conn, dispatch_uuid, body, definition, "recorded", now
        )
    )


def send(db: Database, body: Any, settings: Settings, now: datetime) -> str:
    """Validate, send to Dispatch, and record under the dispatch_uuid it returns."""
    definition = validate(body)
    dispatch_uuid = dispatch_client.submit(body, settings)
    db.run(
        lambda conn: decide.record_definition(conn, dispatch_uuid, body, definition, "sent", now)
    )
    return dispatch_uuid


def definition(db: Database, dispatch_uuid: str) -> dict[str, Any] | None:
    row = db.run(
        lambda conn: conn.execute(
            sql("get_definition"), {"dispatch_uuid": dispatch_uuid}
        ).fetchone()
    )
    if row is None:
        return None
    return {
        "dispatch_uuid": dispatch_uuid,
        "source": row["source"],
        "steps": row["steps"],
        "request": row["request"],
        "recorded_at": iso(row["recorded_at"]),
    }


@dataclass(frozen=True)
class Overdue:
    dispatch_uuid: str
    kind: str  # failover_overdue | final_report_overdue
    since: datetime
    status: str
    current_step: int | None

    def document(self) -> dict[str, Any]:
        return {
            "dispatch_uuid": self.dispatch_uuid,
            "kind": self.kind,
            "since": iso(self.since),
            "status": self.status,
            "current_step": self.current_step,
        }


def overdue(db: Database, now: datetime, grace_seconds: int, limit: int = 100) -> list[Overdue]:
    """Workflows whose failover, or final report, is later than `grace_seconds`."""
    params = {"cutoff": now - timedelta(seconds=grace_seconds), "limit": limit}
    rows = db.run(lambda conn: conn.execute(sql("list_overdue"), params).fetchall())
    return [
        Overdue(r["dispatch_uuid"], r["kind"], r["since"], r["status"], r["current_step"])
        for r in rows
    ]
