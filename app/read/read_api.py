"""GET /workflows/<dispatch_uuid> and /messages/<message_uuid>: what the callbacks' hrefs name."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request

from app.access import has_read_access, require_read_access
from app.errors import ApiError
from app.extensions import get_applier, get_db
from app.pipeline.applier_process import runs_beside
from app.read import query_args, readmodel
from app.spec.schemas import is_id
from app.store import backlog
from app.store.db import Connection

# The longest a reader may wait for the appliers (?wait=S).
MAX_WAIT_SECONDS = 10.0
# How often a waiting reader looks again: soon at first (at a trickle a
# callback is applied within about 10 ms), then less often, so that readers
# waiting out a backlog cost the database a query every 0.1 s, not every 20 ms.
FIRST_POLL_SECONDS = 0.02
LAST_POLL_SECONDS = 0.1

bp = Blueprint("read_api", __name__)


# `id`: an accepted id may contain "/" (printable, 1 to 50 characters), and must be readable.
@bp.get("/workflows/<id:dispatch_uuid>")
def get_workflow(dispatch_uuid: str) -> Response:
    """One workflow: decided and reported status, usage, messages."""
    require_read_access()
    return _answer("workflow", dispatch_uuid, readmodel.read_workflow, "dispatch_uuid")


@bp.get("/workflows/<id:dispatch_uuid>/messages")
def get_workflow_messages(dispatch_uuid: str) -> Response:
    """A page of one workflow's messages in the order they were sent (its document holds the
    first, and `messages_next` names this page): ?after=<message_uuid>&limit=N."""
    require_read_access()
    after = request.args.get("after") or None
    limit = query_args.whole("limit", readmodel.MESSAGES_PAGE, 1, readmodel.MOST_MESSAGES_PAGE)
    if after is not None and not is_id(after):
        # Nothing a callback could carry (a NUL, say): no message of any workflow.
        raise ApiError(404, "No message can have that id.", {"after": ["Not found."]})
    try:
        page = get_db().run(lambda conn: readmodel.read_messages(conn, dispatch_uuid, after, limit))
    except readmodel.NotInWorkflow:
        # Not found, as a path is: the page it names does not exist.
        raise ApiError(
            404, f"{after!r} is not a message of this workflow.", {"after": ["Not found."]}
        ) from None
    if page is None:
        raise ApiError(404, f"No workflow with dispatch_uuid {dispatch_uuid!r} has been seen.")
    return jsonify(page)


@bp.get("/messages/<id:message_uuid>")
def get_message(message_uuid: str) -> Response:
    """One message with its workflow's dispatch_uuid."""
    require_read_access()
    return _answer("message", message_uuid, readmodel.read_message, "message_uuid")


def _answer(
    subject: Literal["workflow", "message"],
    subject_id: str,
    read: Callable[[Connection, str], dict[str, Any] | None],
    id_name: str,
) -> Response:
    """The document with how many of its callbacks are not applied yet; ?wait=S waits for them."""
    deadline = time.monotonic() + query_args.seconds("wait", MAX_WAIT_SECONDS)
    db = get_db()

    def look(conn: Connection) -> tuple[int, int, dict[str, Any] | None]:
        # Counted first: each statement sees what was committed before it,
        # so a callback counted as applied is in the document read after.
        return (*backlog.pending(conn, subject, subject_id), read(conn, subject_id))

    def count(conn: Connection) -> int:
        return backlog.pending(conn, subject, subject_id)[0]

    waiting, failed, document = db.run(look)
    if waiting and time.monotonic() < deadline:
        # Only the count is read while waiting; the document again at the end.
        for pause in poll_pauses():
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline or db.run(count) == 0:
                break
        waiting, failed, document = db.run(look)
    if document is None:
        if waiting or failed:
            raise ApiError(
                404,
                f"No {subject} with {id_name} {subject_id!r} is applied yet:"
                f" {waiting + failed} callbacks naming it are captured and not applied"
                f" ({failed} failed). ?wait=S waits for them.",
            )
        raise ApiError(404, f"No {subject} with {id_name} {subject_id!r} has been seen.")
    document["pending_callbacks"] = waiting
    document["failed_callbacks"] = failed
    return jsonify(document)


def poll_pauses() -> Iterator[float]:
    """The pauses between a waiting reader's looks: growing by half from the first to the last."""
    pause = FIRST_POLL_SECONDS
    while True:
        yield pause
        pause = min(pause * 1.5, LAST_POLL_SECONDS)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers (does not touch the database)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the database answers and takes writes (503 via DatabaseUnavailable
    otherwise), and the applier.

    A backlog does not make the process unready: it still captures, which is
    what Vonage needs. The applier's state is reported for operators.

    Open, as platforms and load balancers probe it without credentials; the
    backlog's counts and the applier's last error only to those who may read
    (Settings.read_tokens): how much traffic a business has is its own.
    """
    db = get_db()
    db.check_writable()  # else nothing could be captured
    applier = get_applier()
    if runs_beside():
        in_process = "beside"
    elif applier is not None:
        in_process = "running" if applier.running else "not started"
    else:
        in_process = "off"
    document: dict[str, Any] = {
        "status": "ok",
        "database": "ok",
        "applier": {"in_process": in_process},
    }
    if not has_read_access():
        return jsonify(document)
    document["applier"].update(backlog.summary(db).document(datetime.now(UTC)))
    if applier is not None and applier.last_error:
        document["applier"]["last_error"] = applier.last_error
    return jsonify(document)
