"""Where a callback is captured: one durable, deduplicated insert of its raw copy.

This is all the request path does after its checks; applying it to the state
is the applier's work (`app.pipeline.apply`). Nothing is answered before its commit.
Concurrent requests of a process share commits (`GroupCommit`): one
statement, committing by itself in one round trip, stores what every waiting
request brought.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from psycopg import Cursor
from psycopg.rows import DictRow

from app.model.state import FinalReport, StatusEvent
from app.pipeline.process_thread import ProcessThread
from app.spec.intake import Callback
from app.store.db import Connection, Database, DatabaseUnavailable, jsonb_text
from app.store.queries import sql

log = logging.getLogger(__name__)

# The longest a request waits for its shared commit: more than a statement's
# timeout (10 s) plus the pool's wait and a new connection's, so that this
# fires only if the committer is stuck.
WAIT_SECONDS = 20.0


@dataclass(frozen=True)
class Receipt:
    """What became of one delivery."""

    outcome: Literal["accepted", "duplicate"]
    callback_id: int


@dataclass(frozen=True)
class Delivery:
    """One delivery to capture: the checked callback, its media type, when it came."""

    callback: Callback
    content_type: str | None
    received_at: datetime


def capture(db: Database, delivery: Delivery) -> Receipt:
    """Store one delivery (committed when this returns)."""
    return db.run_autocommit(lambda conn: capture_in(conn, [delivery]))[0]


def capture_in(conn: Connection, deliveries: Sequence[Delivery]) -> list[Receipt]:
    """Store deliveries with one statement; a duplicate only counts a delivery.

    The first delivery of a callback not stored before is `accepted`; every
    other (an earlier statement's, or the same one twice here) is a
    `duplicate` and adds one to the stored row's `deliveries`.

    Inside the caller's transaction, or on an autocommit connection
    (`Database.run_autocommit`), where the insert commits by itself before it
    answers: then the new callbacks are stored even if counting a duplicate
    fails after it, and the duplicates' senders get the error (and retry).
    """
    params = [_params(d) for d in deliveries]
    first: dict[tuple[str, bytes], int] = {}
    for i, p in enumerate(params):
        first.setdefault((p["kind"], p["dedup_key"]), i)
    # Rows in key order: concurrent statements that share callbacks wait for
    # each other's rows in one order, never in a cycle.
    inserting = [first[key] for key in sorted(first)]
    stored: dict[int, int] = {}  # index of the delivery -> id of the row it inserted
    with conn.cursor() as cur:
        cur.execute(
            _insert_rows(len(inserting)),
            [value for i in inserting for value in _row(params[i])],
        )
        ids = {(row["kind"], bytes(row["dedup_key"])): row["id"] for row in cur.fetchall()}
        for i in inserting:
            key = (params[i]["kind"], params[i]["dedup_key"])
            if key in ids:
                stored[i] = ids[key]
        again = [i for i in range(len(params)) if i not in stored]
        if again:
            # The conflicting rows exist: ON CONFLICT waited for their
            # inserters to commit, and rows are never deleted here.
            cur.executemany(sql("count_redelivery"), [params[i] for i in again], returning=True)
            counted = dict(zip(again, _each_result(cur), strict=True))
    receipts = []
    for i in range(len(params)):
        if i in stored:
            receipts.append(Receipt("accepted", stored[i]))
        else:
            row = counted[i]
            assert row is not None
            receipts.append(Receipt("duplicate", row["id"]))
    return receipts


# The values of one row of insert_raw_callbacks, in its column order.
_COLUMNS = (
    "kind",
    "dedup_key",
    "body",
    "payload",
    "content_type",
    "message_uuid",
    "dispatch_uuid",
    "event_at",
    "received_at",
    "received_at",  # last_received_at: the first delivery is also the last so far
)


def _row(params: dict[str, Any]) -> list[Any]:
    return [params[column] for column in _COLUMNS]


@functools.cache
def _insert_rows(count: int) -> str:
    """insert_raw_callbacks with `count` rows (one text per count, so each is prepared once)."""
    row = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    return sql("insert_raw_callbacks").replace("{rows}", ", ".join([row] * count))


def _each_result(cur: Cursor[DictRow]) -> list[DictRow | None]:
    """The one row (or none) of each statement an executemany(returning=True) ran."""
    rows = [cur.fetchone()]
    while cur.nextset():
        rows.append(cur.fetchone())
    return rows


def _params(delivery: Delivery) -> dict[str, Any]:
    callback = delivery.callback
    event = callback.event
    return {
        "kind": callback.kind.value,
        "dedup_key": callback.dedup_key,
        "body": callback.body,
        "payload": jsonb_text(callback.canonical),
        "content_type": delivery.content_type,
        "message_uuid": event.message_uuid if isinstance(event, StatusEvent) else None,
        "dispatch_uuid": event.dispatch_uuid,
        "event_at": event.occurred_at,
        "received_at": delivery.received_at,
    }


@dataclass
class _Waiting:
    delivery: Delivery
    done: threading.Event = field(default_factory=threading.Event)
    receipt: Receipt | None = None
    error: BaseException | None = None


class GroupCommit:
    """Captures of one process, stored together: one commit answers every request waiting.

    A committer thread (a greenlet under gevent) takes whatever deliveries
    are waiting, stores them in one transaction, and wakes their requests.
    At low load a batch is one delivery and costs one hand-over; under load
    the batch grows by itself while the previous one commits.
    """

    def __init__(
        self,
        db: Database,
        max_batch: int = 64,
        on_accepted: Callable[[list[tuple[int, StatusEvent | FinalReport]]], None] | None = None,
    ) -> None:
        self._db = db
        self._max_batch = max_batch
        self._on_accepted = on_accepted
        self._queue: queue.Queue[_Waiting] = queue.Queue()
        self._committer = ProcessThread("group-commit", self._run, on_start=self._fresh_queue)

    def capture(self, delivery: Delivery) -> Receipt:
        """Store one delivery, with whatever else is waiting; returns once it is committed."""
        self._committer.ensure()
        waiting = _Waiting(delivery)
        self._queue.put(waiting)
        if not waiting.done.wait(WAIT_SECONDS):
            # Answered 503, so Vonage retries; should the commit still happen,
            # the retry is a duplicate. Nothing is acknowledged uncommitted.
            raise DatabaseUnavailable("the capture did not finish in time")
        if waiting.error is not None:
            raise waiting.error
        assert waiting.receipt is not None
        return waiting.receipt

    def _fresh_queue(self, forked: bool) -> None:
        if forked:
            self._queue = queue.Queue()  # a parent's waiting requests are not this process's

    def _run(self) -> None:
        own = self._queue
        while True:
            try:
                batch = [own.get(timeout=1.0)]
            except queue.Empty:
                if self._db.closed:
                    return  # the application is done
                continue
            while len(batch) < self._max_batch:
                try:
                    batch.append(own.get_nowait())
                except queue.Empty:
                    break
            try:
                self._store(batch)
            except Exception as exc:  # never leave a request waiting, nor the committer dead
                log.exception("the committer failed")
                for w in batch:
                    if not w.done.is_set():
                        w.error = exc
                        w.done.set()

    def _store(self, batch: list[_Waiting]) -> None:
        try:
            receipts = self._db.run_autocommit(
                lambda conn: capture_in(conn, [w.delivery for w in batch])
            )
        except DatabaseUnavailable as exc:
            for w in batch:
                w.error = exc
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                # Something in one delivery failed the shared statement (which
                # then stored none of them): store each alone, so that only its
                # own request fails.
                log.warning("a shared capture failed; storing its deliveries one by one")
                for w in batch:
                    self._store([w])
                return
        else:
            for w, receipt in zip(batch, receipts, strict=True):
                w.receipt = receipt
            accepted = [
                (r.callback_id, w.delivery.callback.event)
                for w, r in zip(batch, receipts, strict=True)
                if r.outcome == "accepted"
            ]
            if self._on_accepted is not None and accepted:
                try:
                    self._on_accepted(accepted)
                except Exception:
                    # Committed all the same: an applier finds them by looking.
                    log.exception("could not hand captured callbacks to the applier")
        for w in batch:
            w.done.set()
