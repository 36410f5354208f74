"""Where an applier keeps the analytics views' daily figures: on a thread of its own.

A keep recomputes whole days (app/store/daily_figures.py): a few tenths of a
second a day at five million workflows, so with many days stale (late
callbacks for old messages) it can take seconds. On its own thread it never
holds up applying, which goes on beside it.
"""

from __future__ import annotations

import logging
import threading

from app.store import daily_figures
from app.store.db import Database, DatabaseUnavailable

log = logging.getLogger(__name__)


def keep_until(db: Database, every: float, stop: threading.Event) -> None:
    """Keep the stale days' figures every `every` seconds until `stop` (or the database
    handle is closed)."""
    while not stop.is_set():
        try:
            daily_figures.keep(db)
        except DatabaseUnavailable as exc:
            if db.closed:
                return  # the process is done
            log.warning("cannot keep the analytics figures, trying again: %s", exc)
        except Exception:  # the views compute what is not kept: never worth stopping for
            log.exception("could not keep the analytics figures; trying again")
        stop.wait(every)


def start_beside(db: Database, every: float) -> threading.Event:
    """Keep the figures on a daemon thread of this process; set the returned event to stop."""
    stop = threading.Event()
    threading.Thread(
        target=keep_until, args=(db, every, stop), name="figures-keeper", daemon=True
    ).start()
    return stop
