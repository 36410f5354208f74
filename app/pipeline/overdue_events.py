"""Where workflows becoming overdue are told: a sweep that records `workflow.overdue` events.

Overdue is a matter of the clock, not of a callback: a failover that is due
and does not come changes no row. So a sweep (run by every deliverer, every
few seconds) looks for workflows overdue in a way not told yet, notes each
kind once per workflow (`overdue_notice`) and records its event in the same
transaction. The rules are the listing's (`overdue_workflows` in SQL).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from app.model.overdue import reason
from app.model.times import iso
from app.store import events
from app.store.db import Connection, Database
from app.store.events import NewEvent
from app.store.queries import sql

# Workflows told per transaction; a sweep goes on until none is left.
SWEEP_BATCH = 500


def sweep(
    db: Database,
    now: datetime,
    grace_seconds: int,
    last_step_timeout_seconds: int,
) -> int:
    """Record an event for each workflow newly overdue; returns how many were recorded."""
    params = {
        "cutoff": now - timedelta(seconds=grace_seconds),
        "awaiting_cutoff": now - timedelta(seconds=last_step_timeout_seconds),
        "now": now,
        "limit": SWEEP_BATCH,
    }
    told = 0
    while True:
        looked_at, found = db.run(lambda conn: _sweep_batch(conn, params))
        told += found
        # None left, or all held by appliers: the next sweep tries those again.
        if looked_at < SWEEP_BATCH or found == 0:
            return told


def _sweep_batch(conn: Connection, params: dict[str, object]) -> tuple[int, int]:
    """Tell one batch; returns (workflows looked at, workflows told)."""
    candidates = [r["dispatch_uuid"] for r in conn.execute(sql("overdue_not_noticed"), params)]
    if not candidates:
        return 0, 0
    locked = [r["dispatch_uuid"] for r in conn.execute(sql("lock_for_notice"), {"ids": candidates})]
    # Read again now that they are locked: an applier may have moved one on.
    noticed = conn.execute(sql("notice_overdue"), {**params, "ids": locked}).fetchall()
    now = params["now"]
    assert isinstance(now, datetime)
    told = [
        NewEvent(
            row["dispatch_uuid"],
            events.OVERDUE,
            {
                "overdue": {
                    "kind": row["kind"],
                    "since": iso(row["since"]),
                    "reason": reason(row["kind"], row["api"], row["current_step"], row["since"]),
                }
            },
        )
        for row in noticed
    ]
    events.emit(conn, told, now)
    return len(candidates), len({row["dispatch_uuid"] for row in noticed})
