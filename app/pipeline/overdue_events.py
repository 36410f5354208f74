"""Where workflows becoming overdue are told: a sweep that records `workflow.overdue` events.

Overdue is a matter of the clock, not of a callback: a failover that is due
and does not come changes no row. So a sweep (run by every deliverer, every
few seconds) looks for workflows overdue in a way not told yet, notes each
kind once per workflow (`overdue_notice`) and records its event in the same
transaction. The rules are the listing's (`overdue_workflows` in SQL).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.model.overdue import reason
from app.model.times import iso
from app.store import events
from app.store.db import Connection, Database
from app.store.events import NewEvent
from app.store.queries import sql

# Workflows told per transaction; a sweep goes on until none is left.
SWEEP_BATCH = 500
# Every deadline, however far back.
EVER = datetime.min.replace(tzinfo=UTC)
# How far before the last sweep's deadlines the next one looks again: a
# deadline written just before that sweep, by a transaction it did not see.
OVERLAP = timedelta(minutes=1)
# How often a sweeper looks at every deadline again (see Sweeper).
FULL_SWEEP_EVERY = timedelta(minutes=10)


def sweep(
    db: Database,
    now: datetime,
    grace_seconds: int,
    last_step_timeout_seconds: int,
) -> int:
    """Record an event for each workflow newly overdue, whenever its deadline passed;
    returns how many were recorded (a deliverer's Sweeper looks at fewer)."""
    return _sweep(db, now, grace_seconds, last_step_timeout_seconds, None)[0]


def _sweep(
    db: Database,
    now: datetime,
    grace_seconds: int,
    last_step_timeout_seconds: int,
    passed_since: datetime | None,
) -> tuple[int, bool]:
    """Tell the workflows overdue whose deadline passed since `passed_since` (None: ever):
    (told, whether every workflow found was told: none held by an applier nor moved on)."""
    grace = timedelta(seconds=grace_seconds)
    timeout = timedelta(seconds=last_step_timeout_seconds)
    params = {
        "cutoff": now - grace,
        "awaiting_cutoff": now - timeout,
        "from": EVER if passed_since is None else passed_since - grace,
        "awaiting_from": EVER if passed_since is None else passed_since - timeout,
        "now": now,
        "limit": SWEEP_BATCH,
    }
    told = 0
    complete = True
    while True:
        looked_at, found = db.run(lambda conn: _sweep_batch(conn, params))
        told += found
        complete = complete and found == looked_at
        # None left, or all held by appliers: the next sweep tries those again.
        if looked_at < SWEEP_BATCH or found == 0:
            return told, complete


class Sweeper:
    """A deliverer's sweeps: each looks at the deadlines passed since the last one's.

    Looking at every workflow ever overdue each time cost a year-old ledger
    (182,250 workflows overdue and told long ago) 0.3-0.5 s of PostgreSQL
    every 5 s; the deadlines passed since the last sweep are a few index
    entries. A late callback can make a workflow overdue at once, its deadline
    long passed (a step submitted days ago, heard of only now): every
    FULL_SWEEP_EVERY, and at the first sweep, every deadline is looked at
    again, so such a workflow is told within that. A sweep that left a
    workflow behind (held by an applier) does not move the window on.
    """

    def __init__(self, full_every: timedelta = FULL_SWEEP_EVERY) -> None:
        self._full_every = full_every
        self._last_full: datetime | None = None
        self._swept_to: datetime | None = None

    def sweep(
        self, db: Database, now: datetime, grace_seconds: int, last_step_timeout_seconds: int
    ) -> int:
        full = self._last_full is None or now - self._last_full >= self._full_every
        since = None if full or self._swept_to is None else self._swept_to - OVERLAP
        told, complete = _sweep(db, now, grace_seconds, last_step_timeout_seconds, since)
        if complete:
            if full:
                self._last_full = now
            self._swept_to = now
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
