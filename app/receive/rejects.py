"""Refused deliveries: kept within a budget, and replayed through today's checks after a fix."""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from psycopg.rows import DictRow

from app.pipeline.apply import apply_waiting
from app.pipeline.capture import Delivery, Receipt, capture_in
from app.receive.auth import AuthFailure, Credentials, verify_kept_token
from app.spec.intake import Callback, CallbackKind, Reason, Rejection, read
from app.store.db import Connection, Database, jsonb
from app.store.queries import sql

log = logging.getLogger(__name__)

# Each kept row costs this much beside its body (the row, its indexes), so a
# flood of bodiless refusals (too large to read) is bounded as well.
ROW_OVERHEAD_BYTES = 512
# The first key of the advisory locks that let one session at a time keep a
# given refused body ("dl_rj"; the second key is the body's hash).
REJECTED_BODY_LOCK = 0x646C5F


@dataclass(frozen=True)
class Kept:
    """What became of a refused delivery: its row, or counted only (the budget was spent)."""

    reject_id: int | None
    first_dropped: bool = False


def keep(
    db: Database,
    kind: CallbackKind,
    body: bytes | None,
    body_size: int | None,
    content_type: str | None,
    rejection: Rejection,
    now: datetime,
    *,
    budget_bytes: int,
    always_keep: bool,
) -> Kept:
    """Keep a refused delivery, unless its reason's hourly budget is spent.

    `always_keep` is for deliveries that proved they come from Vonage (a
    valid signature): those are genuine callbacks, kept whole whatever the budget.
    """
    # What keeping it may add: the body, the token kept beside it, the row.
    charge = (
        (len(body) if body is not None else 0) + len(rejection.token or "") + ROW_OVERHEAD_BYTES
    )
    window = {
        "reason": rejection.reason.value,
        "window_start": now.replace(minute=0, second=0, microsecond=0),
        "charge": charge,
        "budget": budget_bytes,
        "always_keep": always_keep,
    }
    params = {
        "kind": kind.value,
        "body": body,
        "body_sha256": hashlib.sha256(body).digest() if body is not None else None,
        "body_size": body_size,
        "content_type": content_type,
        "http_status": rejection.http_status,
        "reason": rejection.reason.value,
        "message": rejection.message,
        "errors": jsonb(rejection.errors),
        "received_at": now,
        "token": rejection.token,
    }

    def work(conn: Connection) -> Kept:
        counted = conn.execute(sql("charge_reject_window"), window).fetchone()
        assert counted is not None  # an upsert always returns its row
        if not always_keep and counted["bytes"] > budget_bytes:
            return Kept(None, first_dropped=counted["dropped"] == 1)
        row = None
        if params["body_sha256"] is not None:  # an unread body is never the same as another
            conn.execute(sql("hold_rejected_body"), {**params, "namespace": REJECTED_BODY_LOCK})
            row = conn.execute(sql("count_reject_again"), params).fetchone()
        if row is None:
            row = conn.execute(sql("keep_rejected_callback"), params).fetchone()
        assert row is not None
        return Kept(int(row["id"]))

    return db.run(work)


class Outcome(StrEnum):
    """What one replay of a kept reject came to."""

    RECOVERED = "recovered"  # applied now
    DUPLICATE = "duplicate"  # already stored (a retry got through): resolved
    STILL_REJECTED = "still_rejected"  # today's checks refuse it too
    FAILED = "failed"  # the replay itself failed (a bug): recorded on the row


@dataclass
class ReprocessSummary:
    recovered: int = 0
    duplicates: int = 0
    still_rejected: int = 0
    failed: int = 0
    # Unresolved rejects left after the run, replayable or not.
    remaining: int = 0

    def count(self, outcome: Outcome) -> None:
        name = "duplicates" if outcome is Outcome.DUPLICATE else outcome.value
        setattr(self, name, getattr(self, name) + 1)


def reprocess(
    db: Database,
    credentials: Credentials,
    max_depth: int,
    now: datetime,
    batch_size: int = 100,
) -> ReprocessSummary:
    """Run every kept reject through today's checks; recovered ones are applied and resolved.

    Authenticity is checked again: a kept token must verify against today's
    secrets and its body's payload_hash (its age no longer matters: the body
    is what Vonage signed). A delivery that came unsigned is never applied
    while signatures are required; it is resolved once Vonage's retry of it
    has been stored. The media type is not checked again. Each reject is
    replayed on its own: a failure on one is recorded on that row, and the
    run goes on.
    """
    summary = ReprocessSummary()
    after_id = 0
    while batch := db.run(_list_rejects(after_id, batch_size)):
        for row in batch:
            after_id = row["id"]
            try:
                outcome = _replay(db, row, credentials, max_depth, now)
            except Exception as exc:
                # A bug in today's code must not stop the others' replay.
                log.error("replaying reject %d failed: %s", row["id"], traceback.format_exc())
                _note(db, row["id"], _failure(exc), now, keep_reason=True)
                outcome = Outcome.FAILED
            summary.count(outcome)
    summary.remaining = db.run(_count_unresolved)
    if summary.recovered:
        # What was recovered is captured: apply it now, not at an applier's next turn.
        apply_waiting(db, max_depth)
    return summary


def _replay(
    db: Database, row: DictRow, credentials: Credentials, max_depth: int, now: datetime
) -> Outcome:
    reject_id: int = row["id"]
    body = bytes(row["body"])
    hint = CallbackKind(row["kind"])
    try:
        # Authenticity first: a refusal noted below replaces the row's reason,
        # and only a proven delivery may lose its authenticity reason.
        if credentials.required and row["reason"] == Reason.UNSIGNED:
            stored = _stored_copy(db, hint, body, max_depth)
            db.run(_resolve(reject_id, stored, now))
            return Outcome.DUPLICATE
        if credentials.required and row["reason"] == Reason.UNAUTHORIZED:
            _verify_any(row["tokens"], body, credentials)
        callback = read(hint, body, max_depth)
    except Rejection as rejection:
        _note(db, reject_id, rejection, now)
        return Outcome.STILL_REJECTED
    receipt = db.run(_recover(reject_id, callback, row["content_type"], now))
    return Outcome.RECOVERED if receipt.outcome == "accepted" else Outcome.DUPLICATE


def _stored_copy(db: Database, hint: CallbackKind, body: bytes, max_depth: int) -> int:
    """The raw callback that Vonage's retry of an unsigned delivery became.

    The unsigned copy's content is never applied; it is settled once its
    signed retry (answered 503, so retried) has been stored.
    """
    waiting = Rejection(503, Reason.UNSIGNED, "Came unsigned; no signed copy has arrived yet.")
    try:
        callback = read(hint, body, max_depth)
    except Rejection:
        raise waiting from None
    stored = db.run(_stored_id(callback))
    if stored is None:
        raise waiting
    return stored


def _verify_any(tokens: list[str], body: bytes, credentials: Credentials) -> None:
    """Pass if any kept token verifies today; otherwise refuse with the last reason."""
    reason = "No token was kept with this delivery."
    for token in tokens:
        try:
            verify_kept_token(token, body, credentials)
            return
        except AuthFailure as failure:
            reason = str(failure)
    raise Rejection(401, Reason.UNAUTHORIZED, reason)


def _failure(exc: Exception) -> Rejection:
    # The exception's type only: its text may quote the body.
    message = f"Replaying failed inside the service ({type(exc).__name__}); see the log."
    return Rejection(500, Reason.INTERNAL_ERROR, message)


def _list_rejects(after_id: int, limit: int) -> Callable[[Connection], list[DictRow]]:
    def work(conn: Connection) -> list[DictRow]:
        params = {"after_id": after_id, "limit": limit}
        return conn.execute(sql("list_reprocessable_rejects"), params).fetchall()

    return work


def _count_unresolved(conn: Connection) -> int:
    row = conn.execute(sql("count_unresolved_rejects")).fetchone()
    assert row is not None
    return int(row["remaining"])


def _stored_id(callback: Callback) -> Callable[[Connection], int | None]:
    def work(conn: Connection) -> int | None:
        params = {
            "kind": callback.kind.value,
            "dedup_key": callback.dedup_key,
            "event_at": callback.event.occurred_at,
        }
        row = conn.execute(sql("find_raw_callback"), params).fetchone()
        return None if row is None else int(row["id"])

    return work


def _resolve(reject_id: int, raw_callback_id: int, now: datetime) -> Callable[[Connection], None]:
    def work(conn: Connection) -> None:
        params = {"id": reject_id, "raw_callback_id": raw_callback_id, "now": now}
        conn.execute(sql("resolve_reject"), params)

    return work


def _recover(
    reject_id: int, callback: Callback, content_type: str | None, now: datetime
) -> Callable[[Connection], Receipt]:
    def work(conn: Connection) -> Receipt:
        [receipt] = capture_in(conn, [Delivery(callback, content_type, now)])
        params = {"id": reject_id, "raw_callback_id": receipt.callback_id, "now": now}
        conn.execute(sql("resolve_reject"), params)
        return receipt

    return work


def _note(
    db: Database, reject_id: int, rejection: Rejection, now: datetime, keep_reason: bool = False
) -> None:
    """Record a replay that did not recover the reject (a crash keeps the row's reason)."""
    params = {
        "id": reject_id,
        "now": now,
        "http_status": rejection.http_status,
        "reason": rejection.reason.value,
        "message": rejection.message,
        "errors": jsonb(rejection.errors),
    }
    query = "note_crashed_reprocess" if keep_reason else "note_failed_reprocess"
    db.run(lambda conn: conn.execute(sql(query), params))


def internal_error() -> Rejection:
    """The rejection kept when the service itself failed on a delivery."""
    return Rejection(500, Reason.INTERNAL_ERROR, "The service failed on this callback.")
