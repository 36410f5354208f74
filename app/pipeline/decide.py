"""Where workflows are decided: from their definitions, messages and final reports.

The decision itself is pure (`failover.evaluate`); this module runs it for
workflows whose rows the caller has locked, after whatever changed them, and
writes what was decided and what each final report disagrees with: each
workflow's row once (`workflows_changed`), with its state and its rollups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from app.model.failover import Decision, Definition, evaluate
from app.model.state import Api, DispatchState, MessageState, apply_link
from app.pipeline.tally import Tally
from app.spec.intake import Reason, Rejection
from app.store import events, storage
from app.store.db import Connection
from app.store.events import NewEvent


@dataclass(frozen=True)
class Changed:
    """A locked workflow to decide again, as it stands in this transaction."""

    locked: storage.LockedDispatch
    # Its state after this transaction's own transitions (a final report).
    state: DispatchState
    # The latest receive time of what changed it: when its findings were recorded.
    at: datetime
    # Its own state changed (not only its messages): updated_at moves to `at`.
    restated: bool = False
    # The receive time of the first final report applied in this transaction.
    first_report_at: datetime | None = None


@dataclass
class Decided:
    """What deciding changed: counts for the metrics (once the caller commits), and the
    events to record for consumers (`events.emit`, the transaction's last statement)."""

    tally: Tally = field(default_factory=Tally)
    events: list[NewEvent] = field(default_factory=list)
    # The decisions that changed, by workflow (storage.DECISION_COLUMNS), to write.
    decisions: dict[str, tuple[Any, ...]] = field(default_factory=dict)


def decide(conn: Connection, changed: Sequence[Changed]) -> Decided:
    """Decide locked workflows again from everything known, and reconcile their final reports.

    Writes the disagreements; the decisions are returned, for the caller to
    write with the rest of each row (`workflows_changed`).

    A decided status that changes (pending to completed or error, or one
    outcome to another later) makes a `workflow.decided` event; a
    disagreement with the final report not recorded before, a
    `workflow.discrepancy` one.
    """
    done = Decided()
    # Without a definition or a report there is nothing to decide from: still
    # pending, decided by nobody.
    # A Messages API workflow's items say where each stands.
    deciding = [
        c
        for c in changed
        if c.locked.definition is not None or c.state.report or c.state.api is Api.MESSAGES
    ]
    if not deciding:
        return done
    # Stable while the workflows' rows are locked: every writer of their
    # messages locks them first. Read with the messages, in one round trip.
    recorded = storage.recorded_findings(
        conn, [c.state.dispatch_uuid for c in deciding if c.state.report is not None]
    )
    messages = storage.workflows_messages(conn, [c.state.dispatch_uuid for c in deciding])
    known = recorded()
    decisions = done.decisions
    findings: dict[str, tuple[datetime, list[tuple[str, str]]]] = {}
    for c in deciding:
        uuid = c.state.dispatch_uuid
        candidates, totals = messages[uuid]
        decision, found = evaluate(
            c.locked.definition, candidates, c.state.report, c.state.api, totals
        )
        decided = _columns(decision)
        if decided != c.locked.decided:  # an unchanged decision is not written again
            decisions[uuid] = decided
            old = dict(zip(storage.DECISION_COLUMNS, c.locked.decided, strict=True))
            api = (c.state.api or Api.DISPATCH).value
            done.tally.decision_changed(
                api, old["status"], old["current_step"], old["decided_by"], decision
            )
            if old["status"] != decision.status.value:
                done.events.append(
                    NewEvent(uuid, events.DECIDED, {"previous_status": old["status"]})
                )
        if c.state.report is not None:  # findings exist only once there is a report
            now_found = list(dict.fromkeys((finding.kind, finding.detail) for finding in found))
            findings[uuid] = (c.at, now_found)
            before = known.get(uuid, set())
            done.events.extend(
                NewEvent(uuid, events.DISCREPANCY, _discrepancy(kind, detail, "dispatch", uuid))
                for kind, detail in now_found
                if (kind, detail) not in before
            )
    # Queued (units of work run in pipeline mode): they go with the commit.
    storage.save_reconciliations(conn, findings)
    return done


def _discrepancy(kind: str, detail: str, subject: str, subject_id: str) -> dict[str, Any]:
    return {
        "discrepancy": {
            "kind": kind,
            "detail": detail,
            "subject": subject,
            "subject_id": subject_id,
        }
    }


def discrepancy_events(
    recorded: Sequence[tuple[str, str, str, str]], messages: Mapping[str, MessageState]
) -> list[NewEvent]:
    """Events for contradictions between callbacks recorded for the first time.

    `recorded` holds (subject, subject_id, kind, detail); a message's tells
    the workflow it is in now (of `messages`, the batch's), if it is in one.
    """
    found = []
    for subject, subject_id, kind, detail in recorded:
        if subject == "dispatch":
            uuid: str | None = subject_id
        else:
            message = messages.get(subject_id)
            uuid = message.dispatch_uuid if message is not None else None
        if uuid is not None:
            found.append(
                NewEvent(uuid, events.DISCREPANCY, _discrepancy(kind, detail, subject, subject_id))
            )
    return found


def _columns(decision: Decision) -> tuple[Any, ...]:
    """A decision as the columns it is stored in (storage.DECISION_COLUMNS)."""
    winner = decision.winning_step
    channel = decision.steps[winner - 1].step.channel if winner is not None else None
    return (
        decision.status.value,
        decision.decided_by,
        decision.current_step,
        decision.due_at,
        decision.decided_at,
        winner,
        channel.value if channel else None,
        decision.awaiting_since,
    )


def workflows_changed(conn: Connection, changed: Sequence[Changed]) -> Decided:
    """Locked workflows changed in this transaction (their own state, their messages, or
    both): decide them again and write each one's row once, rollups recounted.

    Always together: a message that joins or leaves a workflow changes its
    rollups (steps, channels, cost, which the analytics views read instead of
    aggregating every message) and can change its decision; one new row
    version for all of it, where state, rollups and decision each wrote one
    (every index of `dispatch` for each: none of its updates is HOT).
    """
    done = decide(conn, changed)
    storage.save_workflows(
        conn,
        [
            storage.SavedWorkflow(
                c.state,
                done.decisions.get(c.state.dispatch_uuid, c.locked.decided),
                c.at if c.restated else None,
                c.first_report_at,
            )
            for c in changed
        ],
    )
    return done


@dataclass(frozen=True)
class Recorded:
    """A definition stored: whether it is the workflow's first, and what deciding by it changed."""

    created: bool
    changed: Tally  # for the metrics, counted once the caller commits


def record_definition(
    conn: Connection,
    dispatch_uuid: str,
    request: Any,
    definition: Definition,
    source: str,
    now: datetime,
    *,
    emit: bool = True,
) -> Recorded:
    """Store a workflow's definition and decide the workflow by it.

    Its events are recorded last (`emit` False: not at all, for a rebuild):
    the caller commits right after.
    """
    locked = storage.lock_dispatch(conn, dispatch_uuid, now)
    link = apply_link(locked.state, dispatch_uuid, definition.api)
    if link.discrepancies:  # a definition is refused rather than recorded as a conflict
        raise Rejection(
            409,
            Reason.SCHEMA_VIOLATION,
            f"{dispatch_uuid!r} is a workflow of the {locked.state.api} API; this definition "
            f"is for the {definition.api} API.",
        )
    created = locked.definition is None
    state = link.state
    storage.store_definition(conn, dispatch_uuid, request, definition, source, now)
    relocked = replace(locked, definition=definition)
    decided = workflows_changed(
        conn, [Changed(relocked, state, now, restated=state != locked.state)]
    )
    if emit:
        events.emit(conn, decided.events, now)
    return Recorded(created, decided.tally)
