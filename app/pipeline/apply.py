"""Where captured callbacks are applied to the state: in batches, by any number of appliers.

An applier claims a batch of waiting raw callbacks by deleting their rows
from `apply_queue` (rows another applier holds are skipped, so nothing is
applied twice), locks the workflows and messages they name in one order
(workflows by id, then messages by id: no deadlocks between appliers), folds
the events into them with the pure joins of `app.model.state`, writes them back and
decides each touched workflow once, all in one transaction: committed, the
batch is applied; rolled back, it is waiting again.

A callback that cannot be applied is set aside with its error and tried
again later (backoff), so that it never holds up the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from app.model.state import (
    Discrepancy,
    FinalReport,
    StatusEvent,
    apply_final_report,
    apply_link,
    apply_reported_message,
    apply_status,
)
from app.pipeline import decide, figures_keeper
from app.pipeline.process_thread import ProcessThread
from app.pipeline.tally import Tally
from app.spec.intake import CallbackKind, Rejection, read
from app.store import events, storage
from app.store.db import Connection, Database, DatabaseUnavailable
from app.store.queries import sql

log = logging.getLogger(__name__)

# Callbacks per transaction when the caller does not say (APPLY_BATCH_SIZE's default).
BATCH = 100
# A failed callback waits 5 s, then twice as long after each failure, at most an hour.
FIRST_RETRY_SECONDS = 5
LAST_RETRY_SECONDS = 3600
ERROR_CHARS = 2000
# Captures "pour in" to a process at this rate or more: its applier then lets
# them gather into larger transactions (BackgroundApplier._gather).
POURING_PER_SECOND = 500
# Below this many captures a second, a process's applier applies each at once:
# a 20 ms linger would rarely gather a second one, so it would only delay.
# Above, the transactions a linger saves are worth more than its delay: at 75/s
# a process, applying each at once cost 2.5 ms more CPU a callback (BENCHMARKS.md).
LINGER_FROM_PER_SECOND = 25


@dataclass(frozen=True)
class Captured:
    """A stored raw callback's event, as the applier folds it."""

    callback_id: int
    event: StatusEvent | FinalReport
    received_at: datetime


def fold(conn: Connection, batch: Sequence[Captured], *, events_at: datetime | None) -> Tally:
    """Apply captured callbacks to workflows and messages in the caller's transaction.

    Returns what changed, for the metrics: count it only once the caller commits.
    The events it made are recorded last (`events.emit`), made at `events_at`,
    so the caller must commit right after; None records none (a rebuild).

    Any order gives the same state (the joins commute), so the batch is
    folded in id order only to make its discrepancies' first witness stable.
    """
    first_message: dict[str, datetime] = {}
    first_dispatch: dict[str, datetime] = {}
    for c in batch:
        for uuid in _messages_named(c.event):
            _keep_earliest(first_message, uuid, c.received_at)
        for uuid in _dispatches_named(c.event):
            _keep_earliest(first_dispatch, uuid, c.received_at)
    # The workflows the messages already belong to change too: read (without
    # locks) which they are, so that every workflow is locked before any message.
    for uuid, dispatch_uuid in storage.message_dispatches(conn, first_message).items():
        _keep_earliest(first_dispatch, dispatch_uuid, first_message[uuid])
    dispatches = storage.lock_dispatches(conn, first_dispatch)
    messages = storage.lock_messages(conn, first_message)
    was_in = {uuid: m.dispatch_uuid for uuid, m in messages.items()}
    before = dict(messages)
    # Linked elsewhere between that read and the locks (another applier):
    # that workflow changes too. Locked out of order, so a deadlock is
    # possible; PostgreSQL detects it and the batch runs again.
    late = {d: first_message[m] for m, d in was_in.items() if d and d not in dispatches}
    dispatches |= storage.lock_dispatches(conn, late)

    states = {uuid: locked.state for uuid, locked in dispatches.items()}
    message_at: dict[str, datetime] = {}  # changed messages: latest receive time
    dispatch_at: dict[str, datetime] = {}  # changed workflows: latest receive time
    first_report: dict[str, datetime] = {}
    restated: set[str] = set()  # workflows whose own state changed
    found: list[tuple[Discrepancy, int, datetime]] = []

    def merged(c: Captured, discrepancies: Iterable[Discrepancy]) -> None:
        found.extend((d, c.callback_id, c.received_at) for d in discrepancies)

    for c in sorted(batch, key=lambda c: c.callback_id):
        event = c.event
        if isinstance(event, StatusEvent):
            moved = apply_status(messages[event.message_uuid], event)
            messages[event.message_uuid] = moved.state
            _keep_latest(message_at, event.message_uuid, c.received_at)
            merged(c, moved.discrepancies)
            if event.dispatch_uuid is not None:
                # The workflow learns which API runs it.
                link = apply_link(states[event.dispatch_uuid], event.dispatch_uuid, event.api)
                if link.state != states[event.dispatch_uuid]:
                    states[event.dispatch_uuid] = link.state
                    restated.add(event.dispatch_uuid)
                    # Changed even if the message stays in another workflow (a conflict).
                    _keep_latest(dispatch_at, event.dispatch_uuid, c.received_at)
                merged(c, link.discrepancies)
            continue
        for reported in event.messages:
            moved = apply_reported_message(
                messages[reported.message_uuid], event.dispatch_uuid, reported
            )
            messages[reported.message_uuid] = moved.state
            _keep_latest(message_at, reported.message_uuid, c.received_at)
            merged(c, moved.discrepancies)
        transition = apply_final_report(states[event.dispatch_uuid], event)
        states[event.dispatch_uuid] = transition.state
        _keep_earliest(first_report, event.dispatch_uuid, c.received_at)
        restated.add(event.dispatch_uuid)
        _keep_latest(dispatch_at, event.dispatch_uuid, c.received_at)
        merged(c, transition.discrepancies)

    # A changed message changes the workflow it was in and the one it is in now.
    for uuid, at in message_at.items():
        for linked in (was_in[uuid], messages[uuid].dispatch_uuid):
            if linked is not None:
                _keep_latest(dispatch_at, linked, at)
    assert dispatch_at.keys() <= dispatches.keys()  # every link a callback names was locked

    # Queued: the writes travel together with the next read.
    storage.save_messages(conn, [(messages[u], at) for u, at in sorted(message_at.items())])
    recorded = storage.record_discrepancies(conn, found)
    decided = decide.workflows_changed(
        conn,
        [
            decide.Changed(dispatches[u], states[u], at, u in restated, first_report.get(u))
            for u, at in sorted(dispatch_at.items())
        ],
    )
    tally = decided.tally
    for uuid in message_at:
        tally.message_changed(before[uuid], messages[uuid])
    if events_at is not None:
        made = decide.discrepancy_events(recorded(), messages) + decided.events
        events.emit(conn, made, events_at)
    return tally


def _messages_named(event: StatusEvent | FinalReport) -> list[str]:
    if isinstance(event, StatusEvent):
        return [event.message_uuid]
    return [m.message_uuid for m in event.messages]


def _dispatches_named(event: StatusEvent | FinalReport) -> list[str]:
    return [event.dispatch_uuid] if event.dispatch_uuid is not None else []


def _keep_earliest(seen: dict[str, datetime], key: str, at: datetime) -> None:
    if key not in seen or at < seen[key]:
        seen[key] = at


def _keep_latest(seen: dict[str, datetime], key: str, at: datetime) -> None:
    if key not in seen or at > seen[key]:
        seen[key] = at


@dataclass
class ApplySummary:
    applied: int = 0
    failed: int = 0
    changed: Tally = field(default_factory=Tally)
    # When the callbacks of a unit of work were received (for the apply delay); not summed.
    received: list[datetime] = field(default_factory=list)

    def add(self, other: ApplySummary) -> None:
        """Count a committed unit of work (metrics too)."""
        from app import metrics  # late: see app/__init__.py

        self.applied += other.applied
        self.failed += other.failed
        self.changed.add(other.changed)
        metrics.APPLIED.inc(other.applied)
        metrics.APPLY_FAILURES.inc(other.failed)
        metrics.count_changes(other.changed)
        metrics.observe_apply_delays(other.received)


Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Handoff:
    """Events this process captured, by raw callback id, until its applier takes them.

    The applier then needs neither to read their bodies nor to check them
    again (the schema check is most of what applying costs in Python), and
    each web process's applier applies what its own requests captured.
    Bounded: past `limit` the oldest are forgotten, and applied from the
    stored body like any other.
    """

    def __init__(self, limit: int = 20_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[int, StatusEvent | FinalReport] = {}
        # (when, how many) of the last second's puts: the rate captures come in at.
        self._arrivals: deque[tuple[float, int]] = deque()

    def put(self, captured: Iterable[tuple[int, StatusEvent | FinalReport]]) -> None:
        now = self._clock()
        with self._lock:
            held = len(self._events)
            self._events.update(captured)
            self._arrivals.append((now, len(self._events) - held))
            while self._arrivals[0][0] <= now - 1.0:
                self._arrivals.popleft()
            while len(self._events) > self._limit:
                del self._events[next(iter(self._events))]

    def size(self) -> int:
        return len(self._events)

    def per_second(self) -> int:
        """How many new captures were put in the last second."""
        since = self._clock() - 1.0
        with self._lock:
            return sum(n for at, n in self._arrivals if at > since)

    def oldest(self, count: int) -> list[int]:
        with self._lock:
            return sorted(self._events)[:count]

    def get(self, ids: Iterable[int]) -> dict[int, StatusEvent | FinalReport]:
        with self._lock:
            return {i: self._events[i] for i in ids if i in self._events}

    def forget(self, ids: Iterable[int]) -> None:
        with self._lock:
            for i in ids:
                self._events.pop(i, None)


@dataclass(frozen=True)
class Claim:
    """Which waiting callbacks an applier takes."""

    batch: int = BATCH
    # This process's captures, taken first (web processes' appliers).
    handoff: Handoff | None = None
    # Other captures only once they are this old: their own process's applier
    # is expected to take them first. 0 for an applier of its own.
    others_after_seconds: float = 0.0


def apply_waiting(
    db: Database,
    max_depth: int,
    *,
    batch: int = BATCH,
    clock: Clock = _utc_now,
    retry_failed: bool = False,
    claim: Claim | None = None,
) -> ApplySummary:
    """Apply waiting callbacks, batch by batch, until none is due; returns what was done.

    `retry_failed` makes the callbacks that failed before due at once (after a fix).
    """
    claim = claim or Claim(batch=batch)
    summary = ApplySummary()
    if retry_failed:
        db.run(lambda conn: conn.execute(sql("retry_failed_now")))
    while True:
        mine = claim.handoff.oldest(claim.batch) if claim.handoff is not None else []
        try:
            # A unit of work may run more than once (a deadlock): each run
            # counts afresh, and only the committed one is added.
            claimed, done = db.run(
                partial(_apply_batch, max_depth=max_depth, claim=claim, mine=mine, clock=clock)
            )
            summary.add(done)
        except DatabaseUnavailable:
            raise  # the hand-off keeps them for the next turn
        except Exception:
            # One of the batch's callbacks broke it: apply them one by one, so
            # that only the guilty one is set aside.
            log.warning("a batch failed to apply; applying its callbacks one by one", exc_info=True)
            ids = db.run(lambda conn: _due_ids(conn, claim.batch, clock()))
            for callback_id in ids:
                summary.add(_apply_alone(db, callback_id, max_depth, clock))
            claimed = len(ids)
        if claim.handoff is not None:
            # Applied now, or by another applier that held them, or (after a
            # failure) from their stored bodies: either way not from here.
            claim.handoff.forget(mine)
        if claimed < claim.batch:
            # Fewer were due than a batch holds: none is left but what arrived
            # since, which the next turn takes (an empty claim costs a
            # transaction, and under load every turn would end with one).
            return summary


def _apply_batch(
    conn: Connection, *, max_depth: int, claim: Claim, mine: list[int], clock: Clock
) -> tuple[int, ApplySummary]:
    now = clock()
    rows: list[Any] = []  # claimed rows (dicts)
    known: dict[int, StatusEvent | FinalReport] = {}
    if claim.handoff is not None and mine:
        # This process's own captures first, with the events it checked.
        rows = conn.execute(sql("claim_own_callbacks"), {"ids": mine, "now": now}).fetchall()
        known = claim.handoff.get(mine)
    if len(rows) < claim.batch:
        before = None
        if claim.others_after_seconds:
            before = now - timedelta(seconds=claim.others_after_seconds)
        params = {"now": now, "limit": claim.batch - len(rows), "before": before}
        rows += conn.execute(sql("claim_callbacks"), params).fetchall()
    return len(rows), _apply_claimed(conn, rows, max_depth, now, known)


def _apply_claimed(
    conn: Connection,
    rows: Sequence[Mapping[str, Any]],
    max_depth: int,
    now: datetime,
    known: Mapping[int, StatusEvent | FinalReport] | None = None,
) -> ApplySummary:
    """Fold claimed rows; the claim took them out of the queue, so committing marks them applied."""
    done = ApplySummary()
    good = []
    for row in rows:
        event = (known or {}).get(row["id"])
        if event is None:
            try:
                event = read(CallbackKind(row["kind"]), bytes(row["body"]), max_depth).event
            except Rejection as rejection:
                # Stored under older checks than today's: set aside until they accept it.
                again = {k: row[k] for k in ("id", "received_at", "event_at", "attempts")}
                conn.execute(sql("queue_again"), again)
                done.failed += _mark_failed(conn, row["id"], rejection.message, now)
                continue
        good.append(Captured(row["id"], event, row["received_at"]))
    done.changed = fold(conn, good, events_at=now)
    done.applied = len(good)
    done.received = [c.received_at for c in good]
    return done


def _due_ids(conn: Connection, limit: int, now: datetime) -> list[int]:
    # Only read: a claim would take them out of the queue when this commits.
    rows = conn.execute(sql("due_callbacks"), {"now": now, "limit": limit}).fetchall()
    return [row["id"] for row in rows]


def _apply_alone(db: Database, callback_id: int, max_depth: int, clock: Clock) -> ApplySummary:
    def work(conn: Connection) -> ApplySummary:
        now = clock()
        rows = conn.execute(sql("claim_callback"), {"id": callback_id}).fetchall()
        return _apply_claimed(conn, rows, max_depth, now)

    try:
        return db.run(work)
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        log.exception("raw callback %d failed to apply; it is set aside and retried", callback_id)
        error = f"{type(exc).__name__}: {exc}"
        marked = db.run(lambda conn: _mark_failed(conn, callback_id, error, clock()))
        return ApplySummary(failed=marked)


def _mark_failed(conn: Connection, callback_id: int, error: str, now: datetime) -> int:
    """Set a queued callback aside with its error until its next attempt; 0 if applied meanwhile."""
    params = {
        "id": callback_id,
        "error": error[:ERROR_CHARS],
        "now": now,
        "first": FIRST_RETRY_SECONDS,
        "last": LAST_RETRY_SECONDS,
    }
    return 0 if conn.execute(sql("mark_failed"), params).fetchone() is None else 1


def worth_lingering(per_second: float, linger: float) -> bool:
    """Whether to wait `linger` s for more captures before applying, at this rate.

    At a trickle a transaction per capture costs a few percent of a core, and
    a linger would only delay the one already there.
    """
    return linger > 0 and per_second >= LINGER_FROM_PER_SECOND


class BackgroundApplier:
    """The applier inside a web process: woken by the process's captures, else every `poll` s.

    So `web:` alone is a complete deployment. Every process runs one; they
    share the work through the claims, as separate `dispatch-ledger apply`
    processes do.
    """

    def __init__(
        self,
        db: Database,
        max_depth: int,
        batch: int,
        poll: float,
        linger: float = 0.0,
        max_delay: float = 0.5,
        only_older_than: float | None = None,
        refresh_seconds: float | None = None,
    ) -> None:
        self._db = db
        # The analytics figures kept on a thread of their own (app/pipeline/figures_keeper.py),
        # every refresh_seconds; None: not by this process.
        self._keeper = (
            None
            if refresh_seconds is None
            else ProcessThread(
                "figures-keeper",
                lambda: figures_keeper.keep_until(db, refresh_seconds, threading.Event()),
            )
        )
        self._linger = linger
        self._max_delay = max_delay
        self._max_depth = max_depth
        self._poll = poll
        self._wake = threading.Event()
        self._thread = ProcessThread("applier", self._run, on_start=self._restarting)
        if only_older_than is None:
            # Other processes' captures are left to their own appliers for a second.
            self._claim = Claim(batch, Handoff(), others_after_seconds=1.0)
        else:
            # A stand-in for the applier beside gunicorn's workers: it takes
            # only what that one left waiting this long (app/pipeline/applier_process.py), and is
            # not told of captures: no hand-off.
            self._claim = Claim(batch, None, others_after_seconds=only_older_than)
        self.last_error: str | None = None

    def start(self) -> None:
        """Start this process's applier if it is not running (run before every request)."""
        self._thread.ensure()
        if self._keeper is not None:
            self._keeper.ensure()

    def _restarting(self, forked: bool) -> None:
        self._wake = threading.Event()
        if forked and self._claim.handoff is not None:
            # A parent's captures are not this process's.
            self._claim = replace(self._claim, handoff=Handoff())

    def wake(self) -> None:
        """Something was captured: apply it now."""
        self.start()
        self._wake.set()

    def captured(self, accepted: Iterable[tuple[int, StatusEvent | FinalReport]]) -> None:
        """This process captured these (raw callback id, event): apply them now."""
        if self._claim.handoff is not None:
            self._claim.handoff.put(accepted)
        self.wake()

    @property
    def running(self) -> bool:
        return self._thread.running

    def _gather(self) -> None:
        """Woken by a capture: if captures are pouring in, let them gather (up to a batch
        or `max_delay`), so that a burst is applied in few large transactions and
        leaves the CPU to the requests; if they come often (see worth_lingering),
        apply after one `linger`; if they trickle in, apply at once.
        """
        handoff = self._claim.handoff
        if handoff is None or not worth_lingering(handoff.per_second(), self._linger):
            return
        started = time.monotonic()
        seen = handoff.size()
        pouring = max(round(POURING_PER_SECOND * self._linger), 1)  # arrivals in one linger
        while self._linger:
            time.sleep(self._linger)
            now = handoff.size()
            if now - seen < pouring or now >= self._claim.batch:
                return  # a trickle, or a full batch
            if time.monotonic() - started >= self._max_delay:
                return
            seen = now

    def _run(self) -> None:
        wait = 0.0  # a fresh process first applies what is waiting
        while True:
            if self._wake.wait(wait):
                self._gather()
            self._wake.clear()
            try:
                apply_waiting(self._db, self._max_depth, claim=self._claim)
            except DatabaseUnavailable as exc:
                if self._db.closed:
                    return  # the application is done
                # Captures answer 503 meanwhile; back off up to 30 s.
                if self.last_error is None:
                    log.warning("the applier cannot reach the database: %s", exc)
                self.last_error = str(exc)
                wait = min(max(wait * 2, self._poll), 30.0)
                continue
            except Exception as exc:  # a bug outside any one callback: keep the process serving
                log.exception("the applier failed; trying again")
                self.last_error = f"{type(exc).__name__}: {exc}"
                wait = min(max(wait * 2, self._poll), 30.0)
                continue
            if self.last_error is not None:
                log.info("the applier is applying again")
            self.last_error = None
            wait = self._poll
