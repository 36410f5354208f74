"""Overdue workflows: a failover, a step's outcome or a final report later than allowed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app.model.overdue import reason
from app.model.times import iso
from app.store.db import Database
from app.store.queries import sql


@dataclass(frozen=True)
class Overdue:
    dispatch_uuid: str
    api: str | None
    kind: str  # failover_overdue | outcome_overdue | final_report_overdue
    since: datetime
    status: str
    current_step: int | None
    reason: str

    def document(self) -> dict[str, Any]:
        return {
            "dispatch_uuid": self.dispatch_uuid,
            "api": self.api,
            "kind": self.kind,
            "since": iso(self.since),
            "status": self.status,
            "current_step": self.current_step,
            "reason": self.reason,
        }


def list_overdue(
    db: Database,
    now: datetime,
    grace_seconds: int,
    limit: int = 100,
    last_step_timeout_seconds: int = 86_400,
) -> list[Overdue]:
    """Workflows whose failover, step outcome or final report is later than allowed.

    A failover or a final report `grace_seconds` after it was due; the outcome
    of a step with no deadline `last_step_timeout_seconds` after it was submitted.
    """
    params = {**_cutoffs(now, grace_seconds, last_step_timeout_seconds), "limit": limit}
    rows = db.run(lambda conn: conn.execute(sql("list_overdue"), params).fetchall())
    return [
        Overdue(
            r["dispatch_uuid"],
            r["api"],
            r["kind"],
            r["since"],
            r["status"],
            r["current_step"],
            reason(r["kind"], r["api"], r["current_step"], r["since"]),
        )
        for r in rows
    ]


def overdue_counts(
    db: Database, now: datetime, grace_seconds: int, last_step_timeout_seconds: int
) -> dict[tuple[str | None, str], int]:
    """How many workflows `list_overdue` would list, by (api, kind): counted in the database."""
    params = _cutoffs(now, grace_seconds, last_step_timeout_seconds)
    rows = db.run(lambda conn: conn.execute(sql("count_overdue"), params).fetchall())
    return {(r["api"], r["kind"]): r["workflows"] for r in rows}


def _cutoffs(now: datetime, grace_seconds: int, last_step_timeout_seconds: int) -> dict[str, Any]:
    return {
        "cutoff": now - timedelta(seconds=grace_seconds),
        "awaiting_cutoff": now - timedelta(seconds=last_step_timeout_seconds),
    }
