"""How far the appliers are: what is captured but not applied, for operators and readers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from app.store.db import Connection, Database
from app.store.queries import sql


@dataclass(frozen=True)
class Backlog:
    waiting: int  # captured, not applied, not failed
    failed: int  # failed to apply; retried with backoff
    oldest_received_at: datetime | None  # of any callback not applied

    def oldest_age(self, now: datetime) -> float:
        """Seconds since the oldest unapplied callback was received (0 when none)."""
        if self.oldest_received_at is None:
            return 0.0
        return max((now - self.oldest_received_at).total_seconds(), 0.0)

    def describe(self, now: datetime | None = None) -> str:
        age = self.oldest_age(now or datetime.now(UTC))
        oldest = f", the oldest received {age:.1f} s ago" if self.oldest_received_at else ""
        return f"{self.waiting} callbacks waiting to be applied, {self.failed} failed{oldest}"

    def document(self, now: datetime) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "failed": self.failed,
            "oldest_waiting_seconds": round(self.oldest_age(now), 3),
        }


def summary(db: Database) -> Backlog:
    row = db.run(lambda conn: conn.execute(sql("backlog")).fetchone())
    assert row is not None  # an aggregate
    return Backlog(row["waiting"], row["failed"], row["oldest_received_at"])


def failed(db: Database, limit: int) -> list[dict[str, Any]]:
    """Callbacks that failed to apply, oldest first."""
    return db.run(lambda conn: conn.execute(sql("failed_callbacks"), {"limit": limit}).fetchall())


def pending(
    conn: Connection, subject: Literal["workflow", "message"], subject_id: str
) -> tuple[int, int]:
    """A workflow's or message's callbacks not applied yet: (waiting, failed)."""
    query = "workflow_backlog" if subject == "workflow" else "message_backlog"
    row = conn.execute(sql(query), {"id": subject_id}).fetchone()
    assert row is not None  # an aggregate
    return row["waiting"], row["failed"]
