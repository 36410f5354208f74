"""Workflow definitions: recorded, or sent to Vonage (Dispatch, or the Messages API)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marshmallow import ValidationError

from app.config import Settings
from app.model.failover import Definition
from app.model.state import Api
from app.model.times import iso
from app.pipeline import decide
from app.send import dispatch_client
from app.spec.definitions import load_definition
from app.spec.intake import schema_rejection
from app.spec.messages_request import is_messages_request, load_failover_request
from app.store.db import Database
from app.store.queries import sql

log = logging.getLogger(__name__)


def validate(body: Any) -> Definition:
    """A request body as a definition; Rejection(422) lists every problem.

    A Dispatch request (`template`, `workflow`) or a Messages API failover
    request (`channel`, `message_type`, ..., `failover`), told apart by shape.
    """
    if is_messages_request(body):
        try:
            return load_failover_request(body)
        except ValidationError as exc:
            raise schema_rejection(
                exc, "The failover request does not follow the Messages API reference."
            ) from None
    try:
        return load_definition(body)
    except ValidationError as exc:
        raise schema_rejection(
            exc, "The workflow definition does not follow the Dispatch API reference."
        ) from None


def record(db: Database, dispatch_uuid: str, body: Any, now: datetime) -> bool:
    """Store the definition of a workflow another system sent; True if it is new."""
    definition = validate(body)
    recorded = db.run(
        lambda conn: decide.record_definition(
            conn, dispatch_uuid, body, definition, "recorded", now
        )
    )
    _count(recorded)
    return recorded.created


@dataclass(frozen=True)
class Sent:
    """A workflow Vonage accepted: its id (dispatch_uuid or workflow_id); whether it is recorded."""

    dispatch_uuid: str
    recorded: bool

    def not_recorded(self) -> str:
        """What to tell whoever sent it when it is not recorded (the API and the command)."""
        return (
            f"Sent to Vonage as {self.dispatch_uuid}, but its definition could not be recorded"
            f" (see the log): do not send it again. PUT the same body to"
            f" /workflows/{self.dispatch_uuid}/definition to record it; its callbacks are"
            " taken either way."
        )


def send(
    db: Database,
    body: Any,
    settings: Settings,
    now: datetime,
    extra: dict[str, str] | None = None,
) -> Sent:
    """Validate, send to Vonage, and record under the id it returns.

    Once Vonage has accepted it, nothing may answer "try again": a retry would
    send the messages twice. So the database is checked first (down or taking
    no writes: DatabaseUnavailable, and nothing is sent), and a failure to
    record after the send is logged and reported in the result, not raised.
    """
    definition = validate(body)
    db.check_writable()
    if definition.api is Api.MESSAGES:
        dispatch_uuid = dispatch_client.submit_messages(body, settings, extra)
    else:
        dispatch_uuid = dispatch_client.submit(body, settings, extra)
    try:
        recorded = db.run(
            lambda conn: decide.record_definition(
                conn, dispatch_uuid, body, definition, "sent", now
            )
        )
    except Exception:
        log.exception(
            "workflow %s was sent to Vonage but its definition could not be recorded;"
            " PUT it to /workflows/%s/definition",
            dispatch_uuid,
            dispatch_uuid,
        )
        return Sent(dispatch_uuid, recorded=False)
    _count(recorded)
    return Sent(dispatch_uuid, recorded=True)


def _count(recorded: decide.Recorded) -> None:
    """Count what deciding by a committed definition changed (a workflow it decides, say)."""
    from app import metrics  # late: see app/__init__.py

    metrics.count_changes(recorded.changed)


def definition(db: Database, dispatch_uuid: str) -> dict[str, Any] | None:
    row = db.run(
        lambda conn: conn.execute(
            sql("get_definition"), {"dispatch_uuid": dispatch_uuid}
        ).fetchone()
    )
    if row is None:
        return None
    return {
        "dispatch_uuid": dispatch_uuid,
        "api": row["api"],
        "source": row["source"],
        "steps": row["steps"],
        "request": row["request"],
        "recorded_at": iso(row["recorded_at"]),
    }
