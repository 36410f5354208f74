"""Rows to states and back, and the statements that read and write them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import Cursor
from psycopg.rows import DictRow

from app.db import Connection, jsonb
from app.definitions import definition_from_steps, steps_document
from app.failover import Definition
from app.queries import sql
from app.state import (
    Channel,
    Discrepancy,
    DispatchState,
    ErrorInfo,
    MessageState,
    MessageStatus,
    Money,
    Party,
    Report,
    ReportedStatus,
)


def _party(row: Mapping[str, Any], side: str) -> Party | None:
    kind = row[f"{side}_type"]
    if kind is None:
        return None
    return Party(type=kind, id=row[f"{side}_id"], number=row[f"{side}_number"])


def message_from_row(row: Mapping[str, Any]) -> MessageState:
    times = {
        status: row[f"{status.value}_at"]
        for status in MessageStatus
        if row[f"{status.value}_at"] is not None
    }
    error = None
    if row["error_at"] is not None:
        error = ErrorInfo(code=row["error_code"], reason=row["error_reason"])
    return MessageState(
        message_uuid=row["message_uuid"],
        dispatch_uuid=row["dispatch_uuid"],
        channel=Channel(row["channel"]) if row["channel"] else None,
        to=_party(row, "to"),
        from_=_party(row, "from"),
        status_times=times,
        reported_status=MessageStatus(row["reported_status"]) if row["reported_status"] else None,
        usage=Money(row["price"], row["currency"]) if row["price"] is not None else None,
        error=error,
        error_at=row["error_at"],
    )


def message_params(state: MessageState) -> dict[str, Any]:
    params: dict[str, Any] = {
        "message_uuid": state.message_uuid,
        "dispatch_uuid": state.dispatch_uuid,
        "channel": state.channel.value if state.channel else None,
        "status": state.status.value if state.status else None,
        "first_event_at": state.first_event_at,
        "delivery_reached_at": state.delivery_reached_at,
        "reported_status": state.reported_status.value if state.reported_status else None,
        "price": state.usage.amount if state.usage else None,
        "currency": state.usage.currency if state.usage else None,
        "error_code": state.error.code if state.error else None,
        "error_reason": state.error.reason if state.error else None,
        "error_at": state.error_at,
    }
    for side, party in (("to", state.to), ("from", state.from_)):
        params[f"{side}_type"] = party.type if party else None
        params[f"{side}_id"] = party.id if party else None
        params[f"{side}_number"] = party.number if party else None
    for status in MessageStatus:
        params[f"{status.value}_at"] = state.status_times.get(status)
    return params


def dispatch_from_row(row: Mapping[str, Any]) -> DispatchState:
    report = None
    if row["reported_status"] is not None:
        usage = None
        if row["reported_price"] is not None:
            usage = Money(row["reported_price"], row["reported_currency"])
        report = Report(row["reported_at"], ReportedStatus(row["reported_status"]), usage)
    return DispatchState(
        dispatch_uuid=row["dispatch_uuid"], template=row["template"], report=report
    )


def dispatch_params(state: DispatchState) -> dict[str, Any]:
    report = state.report
    return {
        "dispatch_uuid": state.dispatch_uuid,
        "template": state.template,
        "reported_status": report.status.value if report else None,
        "reported_at": report.occurred_at if report else None,
        "reported_price": report.usage.amount if report and report.usage else None,
        "reported_currency": report.usage.currency if report and report.usage else None,
    }


@dataclass(frozen=True)
class LockedDispatch:
    """A workflow's row, locked for this transaction, with its definition and decision."""

    state: DispatchState
    definition: Definition | None
    decided: tuple[Any, ...]  # the stored decision, to skip writing an unchanged one


def lock_dispatch(conn: Connection, dispatch_uuid: str, received_at: datetime) -> LockedDispatch:
    """Create the workflow's row if new, then lock it for this transaction."""
    return locked_dispatch(queue_lock_dispatch(conn, dispatch_uuid, received_at))


def queue_lock_dispatch(
    conn: Connection, dispatch_uuid: str, received_at: datetime
) -> Cursor[DictRow]:
    """Queue the statements that create and lock a workflow's row; read with locked_dispatch.

    Units of work run in pipeline mode, so queued statements share one round trip.
    """
    params = {"dispatch_uuid": dispatch_uuid, "received_at": received_at}
    conn.execute(sql("ensure_dispatch"), params)
    return conn.execute(sql("lock_dispatch"), params)


def locked_dispatch(cursor: Cursor[DictRow]) -> LockedDispatch:
    row = cursor.fetchone()
    assert row is not None  # ensured just before, and rows are never deleted
    steps = row["definition_steps"]
    return LockedDispatch(
        state=dispatch_from_row(row),
        definition=definition_from_steps(steps) if steps is not None else None,
        decided=tuple(row[k] for k in DECISION_COLUMNS),
    )


DECISION_COLUMNS = (
    "status",
    "decided_by",
    "current_step",
    "due_at",
    "decided_at",
    "winning_step",
    "winning_channel",
)


def save_dispatch(
    conn: Connection, state: DispatchState, received_at: datetime, final_report: bool
) -> None:
    params = dispatch_params(state)
    params["received_at"] = received_at
    params["final_report_received_at"] = received_at if final_report else None
    conn.execute(sql("save_dispatch"), params)


def lock_message(conn: Connection, message_uuid: str, received_at: datetime) -> MessageState:
    """Create the message's row if new, then lock it for this transaction."""
    return locked_message(queue_lock_message(conn, message_uuid, received_at))


def queue_lock_message(
    conn: Connection, message_uuid: str, received_at: datetime
) -> Cursor[DictRow]:
    """Queue the statements that create and lock a message's row; read with locked_message."""
    params = {"message_uuid": message_uuid, "received_at": received_at}
    conn.execute(sql("ensure_message"), params)
    return conn.execute(sql("lock_message"), params)


def locked_message(cursor: Cursor[DictRow]) -> MessageState:
    row = cursor.fetchone()
    assert row is not None  # ensured just before, and rows are never deleted
    return message_from_row(row)


def save_message(conn: Connection, state: MessageState, received_at: datetime) -> None:
    params = message_params(state)
    params["received_at"] = received_at
    conn.execute(sql("save_message"), params)


def record_discrepancies(
    conn: Connection,
    found: Iterable[Discrepancy],
    raw_callback_id: int,
    recorded_at: datetime,
) -> None:
    rows = [
        {
            "subject": d.subject,
            "subject_id": d.subject_id,
            "kind": d.kind,
            "detail": d.detail,
            "raw_callback_id": raw_callback_id,
            "recorded_at": recorded_at,
        }
        for d in sorted(set(found))
    ]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(sql("insert_discrepancy"), rows)


def find_message_dispatch(conn: Connection, message_uuid: str) -> str | None:
    row = conn.execute(sql("find_message_dispatch"), {"message_uuid": message_uuid}).fetchone()
    return None if row is None else str(row["dispatch_uuid"]) if row["dispatch_uuid"] else None


def store_definition(
    conn: Connection,
    dispatch_uuid: str,
    request: Any,
    definition: Definition,
    source: str,
    recorded_at: datetime,
) -> None:
    """Write a workflow's definition (its row must be locked: see decide.record_definition)."""
    conn.execute(
        sql("upsert_definition"),
        {
            "dispatch_uuid": dispatch_uuid,
            "source": source,
            "request": jsonb(request),
            "steps": jsonb(steps_document(definition)),
            "recorded_at": recorded_at,
        },
    )


def save_decision(conn: Connection, dispatch_uuid: str, decided: tuple[Any, ...]) -> None:
    """Write what was decided for a workflow (in DECISION_COLUMNS order)."""
    params = {"dispatch_uuid": dispatch_uuid, **dict(zip(DECISION_COLUMNS, decided, strict=True))}
    conn.execute(sql("save_decision"), params)


def save_reconciliation(
    conn: Connection, dispatch_uuid: str, findings: Iterable[tuple[str, str]], now: datetime
) -> None:
    """Replace a workflow's disagreements with its final report by these (kind, detail)."""
    params = {"dispatch_uuid": dispatch_uuid}
    conn.execute(sql("clear_reconciliation"), params)
    rows = [
        {**params, "kind": kind, "detail": detail, "recorded_at": now}
        for kind, detail in dict.fromkeys(findings)  # unique, in order
    ]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(sql("insert_reconciliation"), rows)


def refresh_rollups(conn: Connection, dispatch_uuid: str) -> None:
    """Recount a locked workflow's rollups (steps, channels, cost) from its messages."""
    conn.execute(sql("refresh_rollups"), {"dispatch_uuid": dispatch_uuid})


def workflow_messages(conn: Connection, dispatch_uuid: str) -> list[MessageState]:
    """A workflow's messages in the order they were sent."""
    rows = conn.execute(sql("get_dispatch_messages"), {"dispatch_uuid": dispatch_uuid})
    return [message_from_row(row) for row in rows.fetchall()]


def format_decimal(value: Decimal) -> str:
    """A decimal as plain digits: numeric zero comes back from PostgreSQL as 0E-7."""
    return format(value, "f")
