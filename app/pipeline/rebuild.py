"""Rebuild every derived table from the raw log and the definitions (`dispatch-ledger rebuild`).

The raw callbacks and the recorded definitions are the source of truth;
workflows, messages, decisions, discrepancies, reconciliation and rollups are
derived from them. A rebuild empties the derived tables and applies every
definition and every raw callback again with today's code, so that a fixed
rule reaches old data. The joins make the order irrelevant: the result is
the state incremental application gave, or would have given under today's
rules.

It runs in one transaction: readers see the old state until it commits.
It tells consumers nothing they were told before: events already recorded
stay, none is made while the log is applied again, and at the end one
`workflow.decided` is recorded for each workflow whose decided status the
rebuild changed (a fixed rule that decides it otherwise).
Callbacks keep being captured and answered meanwhile; appliers wait for the
rebuild and then apply them on top. A callback captured but not yet applied
when the rebuild began may be applied by both: the joins are idempotent, so
that changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from marshmallow import ValidationError
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from app.model.state import Api
from app.pipeline import decide
from app.pipeline.apply import Captured, fold
from app.spec.definitions import load_definition
from app.spec.intake import CallbackKind, Rejection, read
from app.spec.messages_request import load_failover_request
from app.store import events, operations
from app.store.db import Connection, adapt_times
from app.store.events import NewEvent
from app.store.queries import sql

# Raw callbacks folded together. A workflow's callbacks come minutes to hours
# apart, so in id order they are far apart; folded in one page, its rows get
# one new version a page, not one per callback. Inside one transaction no old
# version can be cleaned up until the end, so this is the rebuild's WAL and
# bloat: on the load's log (ten callbacks a workflow, 1,000 workflows
# interleaved), pages of 20,000 against 1,000 wrote 300,000 rows against
# 840,000, 4-8 times less WAL, and ran 1.6 times as fast.
PAGE = 20_000
# How often a long rebuild tells how far it is (`progress`), in seconds.
PROGRESS_EVERY = 30.0


class RebuildRefused(RuntimeError):
    """A rebuild would lose or misstate something; nothing was changed. The message says what."""


@dataclass
class RebuildSummary:
    definitions: int = 0
    callbacks: int = 0
    # Raw callbacks today's checks refuse, left out (with --skip-invalid): id, reason.
    skipped: list[tuple[int, str]] = field(default_factory=list)
    # Workflows whose decided status came out otherwise than before (told as events).
    outcomes_changed: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class RebuildProgress:
    """How far a rebuild is: raw callbacks applied again so far, and the share of the log.

    The share is by id, of the ids the log held when the rebuild began: an
    estimate (a duplicate capture leaves a gap), and past 1 while it applies
    callbacks captured since.
    """

    callbacks: int  # gone through: applied again, or left out (--skip-invalid)
    share: float
    seconds: float
    finished: bool = False  # the whole log is applied; deciding and committing follow

    @property
    def seconds_left(self) -> float | None:
        """At the rate so far; None before there is one."""
        if self.share <= 0:
            return None
        return max(self.seconds * (1 - self.share) / self.share, 0.0)


Progress = Callable[[RebuildProgress], None]


def rebuild(
    conninfo: str,
    max_depth: int,
    *,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    every: float = PROGRESS_EVERY,
) -> RebuildSummary:
    """Empty the derived tables and apply every definition and raw callback again, atomically.

    A rebuild of a large log takes long (BENCHMARKS.md, "Rebuilding at size"):
    `progress`, if given, is told how far it is every `every` seconds, and
    once at the end of the log.
    """
    started = time.monotonic()
    summary = RebuildSummary()
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        adapt_times(conn)
        conn.commit()
        try:
            with conn.transaction():
                _prepare(conn)
                # Pipeline mode, as every unit of work here: statements whose
                # results are not read go with the next round trip. _prepare's
                # blocks of several statements cannot run in it. Callbacks are
                # folded a page at a time, as the applier folds its batches
                # (larger ones: PAGE).
                with conn.pipeline():
                    _apply_definitions(conn, summary)
                    told = _Teller(progress, every, started)
                    _apply_callbacks(conn, max_depth, skip_invalid, summary, told)
                    _tell_changed_outcomes(conn, summary)
        except pg_errors.LockNotAvailable:
            # lock_for_rebuild waits 30 s for in-flight transactions to finish.
            raise RebuildRefused(
                "the state stayed locked for 30 s (a long transaction?); try again"
            ) from None
    summary.seconds = time.monotonic() - started
    return summary


def _prepare(conn: Connection) -> None:
    # First, so that no prune starts or goes on between the check and the end.
    try:
        operations.hold_raw_log(conn, "hold_raw_log_for_transaction")
    except operations.RawLogBusy as busy:
        raise RebuildRefused(str(busy)) from None
    pruned = conn.execute(sql("raw_log_pruned")).fetchone()
    if pruned is not None and pruned["cutoff"] is not None:
        raise RebuildRefused(
            f"raw callbacks received before {pruned['cutoff'].isoformat()} were pruned"
            " (prune-raw): a rebuild would forget what they said"
        )
    conn.execute(sql("lock_for_rebuild"))
    conn.execute(sql("keep_statuses_for_rebuild"))
    conn.execute(sql("clear_state_for_rebuild"))


def _apply_definitions(conn: Connection, summary: RebuildSummary) -> None:
    for row in conn.execute(sql("definitions_to_rebuild")).fetchall():
        try:
            request = row["request"]
            definition = (
                load_failover_request(request)
                if row["api"] == Api.MESSAGES
                else load_definition(request)
            )
        except ValidationError as exc:
            # A definition is the only copy of what was sent: never dropped.
            raise RebuildRefused(
                f"the definition of workflow {row['dispatch_uuid']!r} fails today's rules"
                f" ({exc.messages}); nothing was changed"
            ) from None
        decide.record_definition(
            conn,
            row["dispatch_uuid"],
            row["request"],
            definition,
            row["source"],
            row["recorded_at"],
            emit=False,
        )
        summary.definitions += 1


class _Teller:
    """Tells `progress` how far the rebuild is, at most every `every` seconds."""

    def __init__(self, progress: Progress | None, every: float, started: float) -> None:
        self._progress = progress
        self._every = every
        self._started = started
        self._last = started
        self._ids: tuple[int, int] | None = None

    def begin(self, conn: Connection) -> None:
        if self._progress is None:
            return
        row = conn.execute(sql("raw_callback_ids")).fetchone()
        if row is not None and row["first"] is not None:
            self._ids = (row["first"], row["last"])

    def tell(self, callbacks: int, after_id: int, *, last: bool = False) -> None:
        now = time.monotonic()
        if self._progress is None or (not last and now - self._last < self._every):
            return
        self._last = now
        share = 1.0
        if self._ids is not None and not last:
            first, final = self._ids
            share = (after_id - first + 1) / (final - first + 1)
        self._progress(RebuildProgress(callbacks, share, now - self._started, last))


def _apply_callbacks(
    conn: Connection,
    max_depth: int,
    skip_invalid: bool,
    summary: RebuildSummary,
    told: _Teller,
) -> None:
    told.begin(conn)
    after_id = 0
    while page := conn.execute(
        sql("raw_callbacks_page"), {"after_id": after_id, "limit": PAGE}
    ).fetchall():
        captured = []
        for row in page:
            after_id = row["id"]
            try:
                callback = read(CallbackKind(row["kind"]), bytes(row["body"]), max_depth)
            except Rejection as rejection:
                if not skip_invalid:
                    raise RebuildRefused(
                        f"raw callback {row['id']} fails today's checks ({rejection.message});"
                        " nothing was changed (--skip-invalid leaves such callbacks out)"
                    ) from None
                summary.skipped.append((row["id"], rejection.message))
                continue
            captured.append(Captured(row["id"], callback.event, row["received_at"]))
        fold(conn, captured, events_at=None)  # old events are not told again
        summary.callbacks += len(captured)
        told.tell(summary.callbacks + len(summary.skipped), after_id)
    told.tell(summary.callbacks + len(summary.skipped), after_id, last=True)


def _tell_changed_outcomes(conn: Connection, summary: RebuildSummary) -> None:
    """One `workflow.decided` per workflow the rebuild decided otherwise; the commit follows.

    A page at a time: a rebuild from a log alone tells every workflow, and
    held at once they grew its memory with the state (a peak of 193 MB for
    100,000 workflows, 557 MB for 500,000: BENCHMARKS.md).
    """
    now = datetime.now(UTC)
    after = ""
    while changed := conn.execute(
        sql("statuses_rebuilt_differently"), {"after": after, "limit": PAGE}
    ).fetchall():
        told = [
            NewEvent(
                row["dispatch_uuid"], events.DECIDED, {"previous_status": row["previous_status"]}
            )
            for row in changed
        ]
        events.emit(conn, told, now)
        summary.outcomes_changed += len(changed)
        after = changed[-1]["dispatch_uuid"]
