"""Rows to states and back, and the statements that read and write them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg.rows import DictRow

from app.model.failover import MOST_STEPS, Definition, Totals
from app.model.state import (
    Api,
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
from app.spec.definitions import definition_from_steps, steps_document
from app.store.db import Connection, jsonb
from app.store.queries import sql


def _party(row: Mapping[str, Any], side: str) -> Party | None:
    kind = row[f"{side}_type"]
    if kind is None:
        return None
    return Party(type=kind, id=row[f"{side}_id"], number=row[f"{side}_number"])


# Each status with its column. Made once: reading an enum member's `.value` is
# slow, and these loops run for every message an applier loads and saves
# (profiled: the two functions below took 9 us each, most of it there).
_STATUS_COLUMNS = tuple((status, f"{status.value}_at") for status in MessageStatus)
_CHANNELS = {channel.value: channel for channel in Channel}
_STATUSES = {status.value: status for status in MessageStatus}
_APIS = {api.value: api for api in Api}


def message_from_row(row: Mapping[str, Any]) -> MessageState:
    times = {status: row[column] for status, column in _STATUS_COLUMNS if row[column] is not None}
    error = None
    if row["error_at"] is not None:
        error = ErrorInfo(code=row["error_code"], reason=row["error_reason"])
    return MessageState(
        message_uuid=row["message_uuid"],
        dispatch_uuid=row["dispatch_uuid"],
        channel=_CHANNELS[row["channel"]] if row["channel"] else None,
        to=_party(row, "to"),
        from_=_party(row, "from"),
        status_times=times,
        reported_statuses=frozenset(_STATUSES[s] for s in row["reported_statuses"] or ()),
        usage=Money(row["price"], row["currency"]) if row["price"] is not None else None,
        error=error,
        error_at=row["error_at"],
        api=_APIS[row["api"]] if row["api"] else None,
        item_number=row["item_number"],
        items_total=row["items_total"],
        client_ref=row["client_ref"],
    )


def message_params(state: MessageState) -> dict[str, Any]:
    status = state.status  # a property that works it out: once
    usage, error, to, from_ = state.usage, state.error, state.to, state.from_
    params: dict[str, Any] = {
        "message_uuid": state.message_uuid,
        "dispatch_uuid": state.dispatch_uuid,
        # StrEnum members are their values; str() keeps psycopg from dumping an enum.
        "channel": str(state.channel) if state.channel else None,
        "status": str(status) if status else None,
        "first_event_at": state.first_event_at,
        "delivery_reached_at": state.delivery_reached_at,
        "reported_status": str(state.reported_status) if state.reported_status else None,
        # An array's text form: the statement casts each element to text[].
        "reported_statuses": (
            "{" + ",".join(sorted(state.reported_statuses)) + "}"
            if state.reported_statuses
            else None
        ),
        "price": usage.amount if usage else None,
        "currency": usage.currency if usage else None,
        "error_code": error.code if error else None,
        "error_reason": error.reason if error else None,
        "error_at": state.error_at,
        "api": str(state.api) if state.api else None,
        "item_number": state.item_number,
        "items_total": state.items_total,
        "client_ref": state.client_ref,
        "to_type": to.type if to else None,
        "to_id": to.id if to else None,
        "to_number": to.number if to else None,
        "from_type": from_.type if from_ else None,
        "from_id": from_.id if from_ else None,
        "from_number": from_.number if from_ else None,
    }
    times = state.status_times
    for status_, column in _STATUS_COLUMNS:
        params[column] = times.get(status_)
    return params


def dispatch_from_row(row: Mapping[str, Any]) -> DispatchState:
    report = None
    if row["reported_status"] is not None:
        usage = None
        if row["reported_price"] is not None:
            usage = Money(row["reported_price"], row["reported_currency"])
        report = Report(row["reported_at"], ReportedStatus(row["reported_status"]), usage)
    return DispatchState(
        dispatch_uuid=row["dispatch_uuid"],
        template=row["template"],
        report=report,
        api=Api(row["api"]) if row["api"] else None,
    )


def dispatch_params(state: DispatchState) -> dict[str, Any]:
    report = state.report
    return {
        "dispatch_uuid": state.dispatch_uuid,
        "template": state.template,
        "api": state.api.value if state.api else None,
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


def lock_dispatches(
    conn: Connection, first_seen: Mapping[str, datetime]
) -> dict[str, LockedDispatch]:
    """Create the workflows' rows if new, then lock them in id order for this transaction.

    `first_seen` maps each workflow to the receive time its row starts with if new.
    """
    rows = _ensure_and_lock(conn, "dispatches", first_seen)
    return {row["dispatch_uuid"]: _locked_dispatch(row) for row in rows}


def lock_dispatch(conn: Connection, dispatch_uuid: str, received_at: datetime) -> LockedDispatch:
    """Create one workflow's row if new, then lock it for this transaction."""
    return lock_dispatches(conn, {dispatch_uuid: received_at})[dispatch_uuid]


def _locked_dispatch(row: Mapping[str, Any]) -> LockedDispatch:
    steps = row["definition_steps"]
    return LockedDispatch(
        state=dispatch_from_row(row),
        definition=(
            definition_from_steps(steps, row["definition_api"]) if steps is not None else None
        ),
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
    "awaiting_since",
)


@dataclass(frozen=True)
class SavedWorkflow:
    """A locked workflow's row as it is to be written (`save_workflows`)."""

    state: DispatchState
    decided: tuple[Any, ...]  # in DECISION_COLUMNS order
    # The latest receive time of what changed its own state (None: nothing did).
    received_at: datetime | None
    final_report_received_at: datetime | None


def save_workflows(conn: Connection, saved: Iterable[SavedWorkflow]) -> None:
    """Write locked workflows' rows once: state, decision, and rollups recounted from their
    messages (so after `save_messages`). A row nothing changed is not rewritten."""
    rows = []
    for workflow in saved:
        params = dispatch_params(workflow.state)
        params["received_at"] = workflow.received_at
        params["final_report_received_at"] = workflow.final_report_received_at
        params |= dict(zip(DECISION_COLUMNS, workflow.decided, strict=True))
        rows.append(params)
    rows.sort(key=lambda row: row["dispatch_uuid"])
    _columns(conn, "save_workflows", rows)


def message_dispatches(conn: Connection, message_uuids: Iterable[str]) -> dict[str, str]:
    """The workflows these messages are known to belong to (read without locks)."""
    rows = conn.execute(sql("message_dispatches"), {"ids": sorted(set(message_uuids))})
    return {row["message_uuid"]: row["dispatch_uuid"] for row in rows.fetchall()}


def lock_messages(conn: Connection, first_seen: Mapping[str, datetime]) -> dict[str, MessageState]:
    """Create the messages' rows if new, then lock them in id order for this transaction."""
    rows = _ensure_and_lock(conn, "messages", first_seen)
    return {row["message_uuid"]: message_from_row(row) for row in rows}


def _ensure_and_lock(
    conn: Connection, table: str, first_seen: Mapping[str, datetime]
) -> list[DictRow]:
    """Create the rows not there yet (`ensure_<table>`), then lock them all in id order."""
    if not first_seen:
        return []
    ids = sorted(first_seen)
    conn.execute(sql(f"ensure_{table}"), {"ids": ids, "at": [first_seen[i] for i in ids]})
    rows = conn.execute(sql(f"lock_{table}"), {"ids": ids}).fetchall()
    assert len(rows) == len(ids)  # ensured just before, and rows are never deleted
    return rows


def save_messages(conn: Connection, changed: Iterable[tuple[MessageState, datetime]]) -> None:
    """Write messages' new states, each with the latest receive time of what changed it."""
    rows = []
    for state, received_at in changed:
        params = message_params(state)
        params["received_at"] = received_at
        rows.append(params)
    _columns(conn, "save_messages", rows)


def record_discrepancies(
    conn: Connection, found: Iterable[tuple[Discrepancy, int, datetime]]
) -> Callable[[], list[tuple[str, str, str, str]]]:
    """Record contradictions with the raw callback that showed each (its id and receive time).

    A contradiction already recorded stays as it was. Returns what reads the
    ones recorded for the first time, (subject, subject_id, kind, detail):
    called, it waits for the statement (in pipeline mode, a round trip).
    """
    first: dict[Discrepancy, tuple[int, datetime]] = {}
    for discrepancy, raw_callback_id, received_at in found:
        first.setdefault(discrepancy, (raw_callback_id, received_at))
    rows = [
        {
            "subject": d.subject,
            "subject_id": d.subject_id,
            "kind": d.kind,
            "detail": d.detail,
            "raw_callback_id": first[d][0],
            "recorded_at": first[d][1],
        }
        for d in sorted(first)
    ]
    if not rows:
        return list
    cursor = conn.execute(
        sql("insert_discrepancies"), {column: [row[column] for row in rows] for column in rows[0]}
    )
    return lambda: [
        (r["subject"], r["subject_id"], r["kind"], r["detail"]) for r in cursor.fetchall()
    ]


def recorded_findings(
    conn: Connection, dispatch_uuids: Iterable[str]
) -> Callable[[], dict[str, set[tuple[str, str]]]]:
    """Start reading locked workflows' recorded disagreements with their final reports.

    Returns what waits for them: (kind, detail) by workflow. Sent now, so
    that in pipeline mode they come back with the next statement read.
    """
    ids = sorted(set(dispatch_uuids))
    if not ids:
        return dict
    cursor = conn.execute(sql("recorded_findings"), {"ids": ids})

    def read() -> dict[str, set[tuple[str, str]]]:
        known: dict[str, set[tuple[str, str]]] = {}
        for row in cursor.fetchall():
            known.setdefault(row["dispatch_uuid"], set()).add((row["kind"], row["detail"]))
        return known

    return read


def _columns(conn: Connection, name: str, rows: list[dict[str, Any]]) -> None:
    """Run a statement that takes one array per column (`unnest`) once for all the rows.

    One statement whatever the number of rows: one message to send and one
    result to read, where a statement per row cost a wait on the socket each
    (profiled: those waits were most of applying's CPU). The arrays travel in
    binary, which also carries every event time PostgreSQL's text input for
    arrays refuses (offsets beyond 15:59, see app.model.times).
    """
    if rows:
        conn.execute(sql(name), {column: [row[column] for row in rows] for column in rows[0]})


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
            "api": definition.api.value,
            "source": source,
            "request": jsonb(request),
            "steps": jsonb(steps_document(definition)),
            "recorded_at": recorded_at,
        },
    )


def save_reconciliations(
    conn: Connection, findings: Mapping[str, tuple[datetime, Iterable[tuple[str, str]]]]
) -> None:
    """Replace workflows' disagreements with their final reports.

    `findings` maps each workflow to (recorded at, [(kind, detail), ...]).
    """
    if not findings:
        return
    conn.execute(sql("clear_reconciliation"), {"ids": sorted(findings)})
    rows = [
        {"dispatch_uuid": uuid, "kind": kind, "detail": detail, "recorded_at": at}
        for uuid, (at, found) in sorted(findings.items())
        for kind, detail in dict.fromkeys(found)  # unique, in order
    ]
    _columns(conn, "insert_reconciliations", rows)


def workflows_messages(
    conn: Connection, dispatch_uuids: Iterable[str]
) -> dict[str, tuple[list[MessageState], Totals]]:
    """Each locked workflow's messages that can hold a step, in the order they were sent, and
    what all of its messages add up to: what deciding it reads, however many it holds."""
    ids = sorted(set(dispatch_uuids))
    params = {"ids": ids, "steps": MOST_STEPS}
    # Both go in one round trip (pipeline mode, in a unit of work).
    candidates = conn.execute(sql("workflows_messages"), params)
    totals = conn.execute(sql("workflows_totals"), params)
    found: dict[str, list[MessageState]] = {uuid: [] for uuid in ids}
    for row in candidates.fetchall():
        found[row["dispatch_uuid"]].append(message_from_row(row))
    summed = {
        row["dispatch_uuid"]: Totals(
            row["messages"],
            dict(zip(row["currencies"] or (), row["totals"] or (), strict=True)),
            row["items"],
        )
        for row in totals.fetchall()
    }
    none = Totals(0, {}, 0)
    return {uuid: (messages, summed.get(uuid, none)) for uuid, messages in found.items()}


def format_decimal(value: Decimal) -> str:
    """A decimal as plain digits: numeric zero comes back from PostgreSQL as 0E-7."""
    return format(value, "f")
