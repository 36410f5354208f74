"""GET /workflows/<dispatch_uuid> and /messages/<message_uuid>: what the callbacks' hrefs name."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app import readmodel
from app.access import require_read_access
from app.errors import ApiError
from app.extensions import get_db

bp = Blueprint("read_api", __name__)


# `id`: an accepted id may contain "/" (printable, 1 to 50 characters), and must be readable.
@bp.get("/workflows/<id:dispatch_uuid>")
def get_workflow(dispatch_uuid: str) -> Response:
    """One workflow: decided and reported status, usage, messages."""
    require_read_access()
    document = readmodel.workflow(get_db(), dispatch_uuid)
    if document is None:
        raise ApiError(404, f"No workflow with dispatch_uuid {dispatch_uuid!r} has been seen.")
    return jsonify(document)


@bp.get("/messages/<id:message_uuid>")
def get_message(message_uuid: str) -> Response:
    """One message with its workflow's dispatch_uuid."""
    require_read_access()
    document = readmodel.message(get_db(), message_uuid)
    if document is None:
        raise ApiError(404, f"No message with message_uuid {message_uuid!r} has been seen.")
    return jsonify(document)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers (does not touch the database)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the database answers (503 via DatabaseUnavailable otherwise)."""
    get_db().ping()
    return jsonify(status="ok", database="ok")
