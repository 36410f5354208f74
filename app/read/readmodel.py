"""The read API's documents, built from the state tables (shapes fixed by DESIGN.md)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from app.model.failover import StepResult, evaluate
from app.model.state import MessageState, Money
from app.model.times import iso
from app.spec.definitions import definition_from_steps
from app.store import storage
from app.store.db import Connection, Database
from app.store.queries import sql

# Messages in a workflow's document, and on a page of GET /workflows/<id>/messages by default.
MESSAGES_PAGE = 100
# The most a page may ask for.
MOST_MESSAGES_PAGE = 1000
# Discrepancies listed in a workflow's document.
DISCREPANCIES_LISTED = 100


def usage_document(totals: Mapping[str, Decimal]) -> dict[str, str]:
    return {currency: storage.format_decimal(amount) for currency, amount in sorted(totals.items())}


def _money(value: Money | None) -> dict[str, str] | None:
    return None if value is None else usage_document({value.currency: value.amount})


def _discrepancies(rows: list[Any]) -> list[dict[str, str]]:
    return [
        {
            "kind": r["kind"],
            "detail": r["detail"],
            "subject": r["subject"],
            "subject_id": r["subject_id"],
        }
        for r in rows
    ]


def message_document(state: MessageState) -> dict[str, Any]:
    return {
        "message_uuid": state.message_uuid,
        "api": state.api.value if state.api else None,
        "channel": state.channel.value if state.channel else None,
        "status": state.status.value if state.status else None,
        "usage": _money(state.usage),
        "statuses": {
            status.value: iso(at)
            for status, at in sorted(state.status_times.items(), key=lambda kv: kv[1])
        },
        "reported_status": state.reported_status.value if state.reported_status else None,
        "error": (
            {"code": state.error.code, "reason": state.error.reason} if state.error else None
        ),
        # Messages API failover: the message's place in its workflow.
        "item_number": state.item_number,
        "items_total": state.items_total,
        "client_ref": state.client_ref,
    }


def workflow(db: Database, dispatch_uuid: str) -> dict[str, Any] | None:
    """The document of one workflow, or None if no callback has named it."""
    return db.run(lambda conn: read_workflow(conn, dispatch_uuid))


def read_workflow(conn: Connection, dispatch_uuid: str) -> dict[str, Any] | None:
    params = {"dispatch_uuid": dispatch_uuid}
    row = conn.execute(sql("get_dispatch"), params).fetchone()
    if row is None:
        return None
    dispatch = storage.dispatch_from_row(row)
    candidates, totals = storage.workflows_messages(conn, [dispatch_uuid])[dispatch_uuid]
    report = dispatch.report
    decided = conn.execute(sql("get_decision"), params).fetchone()
    assert decided is not None  # same row as above
    definition = (
        definition_from_steps(decided["definition_steps"], decided["definition_api"])
        if decided["definition_steps"] is not None
        else None
    )
    # The steps are worked out again rather than stored: the same pure walk
    # that made the stored decision, over the same rows.
    decision, _ = evaluate(definition, candidates, report, dispatch.api, totals)
    page = messages_page(conn, dispatch_uuid, None, MESSAGES_PAGE)
    discrepancies = conn.execute(
        sql("get_dispatch_discrepancies"), {**params, "limit": DISCREPANCIES_LISTED}
    ).fetchall()
    pending = row["status"] == "pending"
    current = (
        decision.steps[decision.current_step - 1]
        if pending and decision.current_step is not None
        else None
    )
    reconciliation = [
        {
            "kind": r["kind"],
            "detail": r["detail"],
            "subject": "dispatch",
            "subject_id": dispatch_uuid,
        }
        for r in conn.execute(sql("get_reconciliation"), params).fetchall()
    ]
    return {
        "dispatch_uuid": dispatch.dispatch_uuid,
        "api": dispatch.api.value if dispatch.api else None,
        "template": dispatch.template,
        "status": row["status"],
        "decided_by": decided["decided_by"],
        "current_step": _step_document(current) if current else None,
        "deadline": iso(current.deadline) if current and current.deadline else None,
        "due_at": iso(decided["due_at"]) if pending and decided["due_at"] else None,
        "awaiting_since": (
            iso(decided["awaiting_since"]) if pending and decided["awaiting_since"] else None
        ),
        "winning_step": decided["winning_step"],
        "reported_status": report.status.value if report else None,
        "reported_at": iso(report.occurred_at) if report else None,
        "usage": usage_document(totals.usage),
        "reported_usage": _money(report.usage) if report else None,
        "definition": decided["definition_source"],
        "steps": [_step_document(s) for s in decision.steps] if decision.steps else None,
        # A page of them, in the order sent: a workflow's document stays bounded
        # however many messages claim to be in it. `messages_next` reads on.
        "messages": page["messages"],
        "messages_total": totals.messages,
        "messages_next": page["next"],
        "discrepancies": reconciliation + _discrepancies(discrepancies),
        # The first DISCREPANCIES_LISTED are listed (each message's are at /messages/<id>).
        "discrepancies_total": len(reconciliation)
        + (discrepancies[0]["total"] if discrepancies else 0),
    }


def messages_page(
    conn: Connection, dispatch_uuid: str, after: str | None, limit: int
) -> dict[str, Any]:
    """Up to `limit` of a workflow's messages in the order sent, after message `after`, and the
    path of the next page (None at the end)."""
    rows = conn.execute(
        sql("workflow_messages_page"),
        {"dispatch_uuid": dispatch_uuid, "after": after, "limit": limit + 1},
    ).fetchall()
    messages = [message_document(storage.message_from_row(row)) for row in rows[:limit]]
    following = None
    if len(rows) > limit:
        following = (
            f"/workflows/{quote(dispatch_uuid, safe='')}/messages"
            f"?after={quote(messages[-1]['message_uuid'], safe='')}&limit={limit}"
        )
    return {"messages": messages, "next": following}


class NotInWorkflow(ValueError):
    """A page was asked for after a message that is not the workflow's."""


def read_messages(
    conn: Connection, dispatch_uuid: str, after: str | None, limit: int
) -> dict[str, Any] | None:
    """GET /workflows/<id>/messages: a page of a workflow's messages; None for no such workflow."""
    params = {"dispatch_uuid": dispatch_uuid, "message_uuid": after}
    if conn.execute(sql("get_dispatch"), params).fetchone() is None:
        return None
    if after is not None and conn.execute(sql("is_workflow_message"), params).fetchone() is None:
        raise NotInWorkflow(after)
    total = conn.execute(sql("count_workflow_messages"), params).fetchone()
    assert total is not None  # an aggregate
    return {
        "dispatch_uuid": dispatch_uuid,
        "messages_total": total["messages"],
        **messages_page(conn, dispatch_uuid, after, limit),
    }


def _step_document(result: StepResult) -> dict[str, Any]:
    return {
        "step": result.number,
        "channel": result.step.channel.value if result.step.channel else None,
        "condition_status": (
            result.step.condition_status.value if result.step.condition_status else None
        ),
        "expiry_time": result.step.expiry_time,
        "outcome": result.outcome.value,
        "message_uuid": result.message_uuid,
        "submitted_at": iso(result.submitted_at) if result.submitted_at else None,
        "deadline": iso(result.deadline) if result.deadline else None,
        # When its outcome became known (an event time), once it has one.
        "settled_at": iso(result.settled_at) if result.settled_at else None,
        # Which of the API's rules (app/model/failover.py) gave the outcome.
        "why": result.why,
    }


def read_message(conn: Connection, message_uuid: str) -> dict[str, Any] | None:
    params = {"message_uuid": message_uuid}
    row = conn.execute(sql("get_message"), params).fetchone()
    if row is None:
        return None
    state = storage.message_from_row(row)
    document = {"dispatch_uuid": state.dispatch_uuid, **message_document(state)}
    document["discrepancies"] = _discrepancies(
        conn.execute(sql("get_message_discrepancies"), params).fetchall()
    )
    return document
