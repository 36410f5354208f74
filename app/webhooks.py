"""POST /webhooks/message-status and /webhooks/final-report: Dispatch's callbacks."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import InternalServerError, RequestEntityTooLarge

from app import ingest, intake, metrics
from app.auth import AuthFailure, authenticate
from app.db import DatabaseUnavailable
from app.errors import ApiError, handle_http_exception
from app.extensions import get_credentials, get_db, get_settings
from app.intake import Callback, CallbackKind, Reason, Rejection

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/message-status")
def message_status() -> Response:
    """Receive one message-status callback."""
    callback = _load(CallbackKind.MESSAGE_STATUS)
    return _answer(callback, ingest.receive(get_db(), callback, _ctype(), _now()))


@bp.post("/final-report")
def final_report() -> Response:
    """Receive one final-report callback."""
    callback = _load(CallbackKind.FINAL_REPORT)
    return _answer(callback, ingest.receive(get_db(), callback, _ctype(), _now()))


def _now() -> datetime:
    return datetime.now(UTC)


def _ctype() -> str | None:
    return request.headers.get("Content-Type")


def _load(kind: CallbackKind) -> Callback:
    """Size, authenticity, media type, JSON and schema checks; a refusal is kept, then answered."""
    settings = get_settings()
    body: bytes | None = None
    size = request.content_length
    try:
        if (request.content_length or 0) > settings.max_body_bytes:
            raise intake.too_large(settings.max_body_bytes)
        try:
            body = request.get_data(cache=True)
        except RequestEntityTooLarge:
            raise intake.too_large(settings.max_body_bytes) from None
        size = len(body)
        if size > settings.max_body_bytes:
            # A chunked body (no Content-Length) cut at MAX_CONTENT_LENGTH: at
            # least this large, and not kept.
            body = None
            raise intake.too_large(settings.max_body_bytes)
        _authenticate(body)
        intake.check_media_type(_ctype())
        return intake.read(kind, body, settings.max_json_depth)
    except Rejection as rejection:
        _keep(kind, body, size, rejection)
        headers = _CHALLENGE if rejection.reason is Reason.UNAUTHORIZED else None
        raise ApiError.from_rejection(rejection, headers) from None


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dispatch-ledger"'}


def _authenticate(body: bytes) -> None:
    try:
        authenticate(request.headers.get("Authorization"), body, time.time(), get_credentials())
    except AuthFailure as failure:
        # The reason is safe to send back; the token itself is never logged.
        current_app.logger.warning("refused a callback: %s", failure)
        raise Rejection(401, Reason.UNAUTHORIZED, str(failure)) from None


def _keep(kind: CallbackKind, body: bytes | None, size: int | None, rejection: Rejection) -> None:
    metrics.CALLBACKS.labels(kind.value, "rejected").inc()
    metrics.REJECTS.labels(rejection.reason.value).inc()
    # The reason only: bodies and credentials stay out of the logs.
    current_app.logger.info(
        "refused a %s callback: %s (%d)", kind.value, rejection.reason.value, rejection.http_status
    )
    try:
        ingest.keep_rejection(get_db(), kind, body, size, _ctype(), rejection, _now())
    except DatabaseUnavailable:
        # The refusal still stands; the sender retries and it is kept then.
        current_app.logger.warning("could not keep a rejected %s callback", kind.value)


def _answer(callback: Callback, receipt: ingest.Receipt) -> Response:
    metrics.CALLBACKS.labels(callback.kind.value, receipt.outcome).inc()
    return jsonify(status=receipt.outcome, callback_id=receipt.callback_id)


@bp.errorhandler(InternalServerError)
def keep_failed_delivery(error: InternalServerError) -> Response:
    """Keep the body of a delivery the service failed on, so that a fix can replay it."""
    kind = _KINDS.get(request.endpoint or "")
    if kind is not None:
        body = request.get_data(cache=True)
        _keep(kind, body, len(body), ingest.internal_error())
    return handle_http_exception(error)


_KINDS = {
    "webhooks.message_status": CallbackKind.MESSAGE_STATUS,
    "webhooks.final_report": CallbackKind.FINAL_REPORT,
}
