"""Where an applier keeps the analytics views' daily figures: on a thread of its own.

A keep recomputes whole days (app/store/daily_figures.py): a few tenths of a
second a day at five million workflows, so with many days stale (late
callbacks for old messages) it can take seconds. On its own thread it never
holds up applying, which goes on beside it.
"""

from __future__ import annotations

import threading

from app.pipeline.process_thread import repeat_until
from app.store import daily_figures
from app.store.db import Database


def keep_until(db: Database, every: float, stop: threading.Event) -> None:
    """Keep the stale days' figures every `every` seconds until `stop` (or the database
    handle is closed). A failed keep is tried again: the views compute what is not kept."""
    repeat_until(stop, every, lambda: daily_figures.keep(db), "the analytics figures keeper", db=db)


def start_beside(db: Database, every: float) -> threading.Event:
    """Keep the figures on a daemon thread of this process; set the returned event to stop."""
    stop = threading.Event()
    threading.Thread(
        target=keep_until, args=(db, every, stop), name="figures-keeper", daemon=True
    ).start()
    return stop
