"""Where a workflow is decided: from its definition, its messages and its final report.

The decision itself is pure (`failover.evaluate`); this module runs it for a
workflow whose row the caller has locked, after whatever changed it, and
writes what was decided and what the final report disagrees with.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from app import storage
from app.db import Connection
from app.failover import Definition, evaluate
from app.state import DispatchState


def decide(
    conn: Connection,
    locked: storage.LockedDispatch,
    now: datetime,
    state: DispatchState | None = None,
) -> None:
    """Decide a locked workflow again from everything known, and reconcile its final report.

    `state` is the workflow's state after this transaction's own transition,
    if it made one (a final report).
    """
    state = state or locked.state
    if locked.definition is None and state.report is None:
        return  # nothing to decide from: still pending, decided by nobody
    # Stable while the workflow's row is locked: every writer of its messages locks it first.
    messages = storage.workflow_messages(conn, state.dispatch_uuid)
    decision, findings = evaluate(locked.definition, messages, state.report)
    winner = decision.winning_step
    decided = (
        decision.status.value,
        decision.decided_by,
        decision.current_step,
        decision.due_at,
        decision.decided_at,
        winner,
        locked.definition.steps[winner - 1].channel.value
        if locked.definition is not None and winner is not None
        else None,
    )
    # Queued (units of work run in pipeline mode): they go with the commit.
    if decided != locked.decided:
        storage.save_decision(conn, state.dispatch_uuid, decided)
    if state.report is not None:  # findings exist only once there is a report
        kinds = [(finding.kind, finding.detail) for finding in findings]
        storage.save_reconciliation(conn, state.dispatch_uuid, kinds, now)


def messages_changed(
    conn: Connection,
    locked: storage.LockedDispatch,
    now: datetime,
    state: DispatchState | None = None,
) -> None:
    """A locked workflow's messages changed in this transaction: recount it, decide it again.

    Both, always together: a message that joins or leaves a workflow changes
    its rollups (steps, channels, cost, which the analytics views read instead
    of aggregating every message) and can change its decision.
    """
    storage.refresh_rollups(conn, locked.state.dispatch_uuid)
    decide(conn, locked, now, state)


def record_definition(
    conn: Connection,
    dispatch_uuid: str,
    request: Any,
    definition: Definition,
    source: str,
    now: datetime,
) -> bool:
    """Store a workflow's definition and decide the workflow by it; True if it is new."""
    locked = storage.lock_dispatch(conn, dispatch_uuid, now)
    created = locked.definition is None
    storage.store_definition(conn, dispatch_uuid, request, definition, source, now)
    decide(conn, replace(locked, definition=definition), now)
    return created
