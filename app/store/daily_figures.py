"""Where the analytics views' daily figures are kept up to date (the tables of schema daily).

Triggers on message, dispatch and workflow_definition note the days a change
touches (migration 0021); the views compute those days and read the others
from the kept figures, so they are exact whenever read, and cost little when
few days are noted. A keep stores the noted days' figures again, a few days
per transaction: every applier runs one each ANALYTICS_REFRESH_SECONDS (on a
thread of its own), and `migrate` after it applies (the first one, after an
upgrade, computes every day once).
"""

from __future__ import annotations

from collections.abc import Callable

from app.store.db import Connection, Database
from app.store.queries import sql

# One session keeps at a time ("dl_roll"); the others skip their turn.
DAILY_FIGURES_LOCK = 0x646C5F726F6C6C
# Days kept per transaction, the most recent first: a day took 0.3 s at five
# million workflows a year, so a keep of a whole year (after an upgrade or a
# rebuild) is many short transactions, never one that runs for minutes.
DAYS_AT_A_TIME = 7
# Longer than a request's 10 s (app/store/db.py): a day of a large sender may take seconds.
KEEP_TIMEOUT = "5min"
# A day's rows are read whole, through a bitmap of the day index: with
# PostgreSQL's 4 MB the bitmap of a day of 275,000 messages spread over a
# year-old table went lossy (5.1 million rows rechecked) and the sorts spilled
# to disk: 5.4 s a keep against 2.3 s with this (BENCHMARKS.md). For this
# transaction only, and one session keeps at a time.
KEEP_WORK_MEM = "64MB"

Run = Callable[[Callable[[Connection], int | None]], int | None]


def keep_some(conn: Connection) -> int | None:
    """Keep up to DAYS_AT_A_TIME stale days, in the caller's transaction: how many, or None
    when another session was keeping."""
    taken = conn.execute(sql("hold_daily_figures"), {"key": DAILY_FIGURES_LOCK}).fetchone()
    if not taken or not taken["taken"]:
        return None
    conn.execute(sql("keep_without_hurry"), {"timeout": KEEP_TIMEOUT, "work_mem": KEEP_WORK_MEM})
    rows = conn.execute(sql("stale_days_to_keep"), {"limit": DAYS_AT_A_TIME}).fetchall()
    if not rows:
        return 0
    days = ",".join(row["day"].isoformat() for row in rows)
    conn.execute(sql("keeping"), {"days": "{" + days + "}"})
    kept = conn.execute(sql("keep_daily_figures")).fetchone()
    return int(kept["days"]) if kept else 0


def keep_with(run: Run) -> int | None:
    """Keep every stale day, DAYS_AT_A_TIME per transaction (`run` makes each one): how many
    days, or None when another session was keeping."""
    total = 0
    while True:
        done = run(keep_some)
        if done is None:
            return total or None
        total += done
        if done < DAYS_AT_A_TIME:
            return total


def keep(db: Database) -> int | None:
    """Keep every stale day: how many, or None when another session was keeping."""
    return keep_with(db.run)


def stale_days(db: Database) -> int:
    """How many days the views compute for want of kept figures (0 just after a keep)."""
    row = db.run(lambda conn: conn.execute(sql("stale_days")).fetchone())
    return int(row["days"]) if row else 0
