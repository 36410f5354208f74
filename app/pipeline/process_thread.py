"""A background thread per process: started on first use, again after a fork or its death.

Threads do not survive a fork, and gunicorn forks its workers after the
application may have been built, so the committer and the applier are
started lazily, by the process that uses them. `ensure` runs on every
request: the common case (running, same process) takes no lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from app.store.db import Database, DatabaseUnavailable

log = logging.getLogger(__name__)


def repeat_until(
    stop: threading.Event,
    every: float,
    work: Callable[[], object],
    doing: str,
    *,
    db: Database | None = None,
) -> None:
    """Run `work` every `every` seconds until `stop` is set (or `db`, when given, is closed).

    Background work that the rest goes on without: a database out of reach
    is warned of and a bug logged, and both are tried again at the next turn.
    `doing` names it in the log ("the overdue sweep").
    """
    while not stop.is_set():
        try:
            work()
        except DatabaseUnavailable as exc:
            if db is not None and db.closed:
                return  # the process is done
            log.warning("%s cannot reach the database, trying again: %s", doing, exc)
        except Exception:
            log.exception("%s failed; trying again", doing)
        stop.wait(every)


class ProcessThread:
    """Runs `target` in one daemon thread (a greenlet under gevent) in whichever process asks."""

    def __init__(
        self,
        name: str,
        target: Callable[[], None],
        *,
        on_start: Callable[[bool], None] | None = None,
    ) -> None:
        self._name = name
        self._target = target
        # Called under the lock before each (re)start, told whether this is a
        # new process (whose inherited state, such as queues, is not its own).
        self._on_start = on_start
        self._lock = threading.Lock()
        # The process whose thread is running the target, None while none is:
        # set before each start, cleared when the target returns or raises.
        # Asked a few times a request, so it is a plain field: Thread.is_alive()
        # takes a lock (2.6 us a call under gevent, against 0.3 for this).
        self._running_in: int | None = None
        self._started_in: int | None = None  # the process that last started one

    @property
    def running(self) -> bool:
        return self._running_in == os.getpid()

    def ensure(self) -> None:
        """Start the thread in this process unless it runs already."""
        if self.running:
            return
        with self._lock:
            if self.running:
                return  # another caller started it meanwhile
            forked = self._started_in != os.getpid()
            if self._on_start is not None:
                self._on_start(forked)
            self._running_in = self._started_in = os.getpid()
            try:
                threading.Thread(target=self._main, name=self._name, daemon=True).start()
            except BaseException:
                self._running_in = None
                raise

    def _main(self) -> None:
        try:
            self._target()
        finally:
            self._running_in = None
