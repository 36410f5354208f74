"""Where the analytics views' daily figures are kept up to date (the tables of schema daily).

Triggers on message, dispatch and workflow_definition note the days a change
touches (migration 0021); the views compute those days and read the others
from the kept figures, so they are exact whenever read, and cost little when
few days are noted. A refresh keeps the noted days' figures again: every
applier runs one each ANALYTICS_REFRESH_SECONDS, and `migrate` after it
applies (the first one, after an upgrade, computes every day once).
"""

from __future__ import annotations

from app.store.db import Connection, Database
from app.store.queries import sql

# One session refreshes at a time ("dl_roll"); the others skip their turn.
DAILY_FIGURES_LOCK = 0x646C5F726F6C6C


def keep_on(conn: Connection) -> int | None:
    """Keep the stale days' figures, in the caller's transaction: how many days, or None when
    another session was refreshing."""
    taken = conn.execute(sql("hold_daily_figures"), {"key": DAILY_FIGURES_LOCK}).fetchone()
    if not taken or not taken["taken"]:
        return None
    row = conn.execute(sql("keep_daily_figures")).fetchone()
    return int(row["days"]) if row else 0


def keep(db: Database) -> int | None:
    """Keep the stale days' figures: how many days, or None when another was refreshing."""
    return db.run(keep_on)


def stale_days(db: Database) -> int:
    """How many days the views compute for want of kept figures (0 just after a refresh)."""
    row = db.run(lambda conn: conn.execute(sql("stale_days")).fetchone())
    return int(row["days"]) if row else 0
