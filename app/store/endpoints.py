"""Where endpoints and their deliveries are read for people: the dashboard, /metrics, `status`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.store.db import Connection
from app.store.queries import sql


def listed(conn: Connection) -> list[dict[str, Any]]:
    """Every endpoint (never its secret) with its health, oldest first."""
    return [dict(row) for row in conn.execute(sql("list_endpoints")).fetchall()]


@dataclass(frozen=True)
class Health:
    endpoints: int
    disabled: int
    # The oldest event an enabled endpoint has not received yet (None: none waits).
    oldest_undelivered_at: datetime | None

    def behind_seconds(self, now: datetime) -> float:
        if self.oldest_undelivered_at is None:
            return 0.0
        return max((now - self.oldest_undelivered_at).total_seconds(), 0.0)


def health(conn: Connection) -> Health:
    row = conn.execute(sql("delivery_health")).fetchone()
    assert row is not None
    waiting = [t for t in (row["oldest_undelivered_at"], row["oldest_unqueued_at"]) if t]
    return Health(row["endpoints"], row["disabled"], min(waiting) if waiting else None)
