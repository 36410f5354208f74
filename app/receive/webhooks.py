"""POST /webhooks/status (and /message-status, /final-report): Dispatch's callbacks.

Dispatch sends both kinds of callback to the application's status URL, so
every one of these URLs takes both, told apart by their shape; the URL is
only a hint for a body of neither shape.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import NoReturn

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import InternalServerError, RequestEntityTooLarge

from app import metrics
from app.errors import ApiError, handle_http_exception
from app.extensions import capture_delivery, get_credentials, get_db, get_settings
from app.pipeline.capture import Delivery, Receipt
from app.receive import rejects
from app.receive.auth import AuthFailure, Credentials, Method, Unsigned, authenticate, bearer_token
from app.spec import intake
from app.spec.intake import Callback, CallbackKind, Reason, Rejection
from app.store.db import DatabaseUnavailable

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

# Where app.receive.webhooks_fast leaves the error of a capture it tried, for the view to answer.
CAPTURE_FAILED = "dispatch_ledger.capture_failed"

# Each URL's hint: the kind a body of neither shape is checked against.
HINTS = {
    "webhooks.status": CallbackKind.MESSAGE_STATUS,
    "webhooks.message_status": CallbackKind.MESSAGE_STATUS,
    "webhooks.final_report": CallbackKind.FINAL_REPORT,
}


@bp.post("/status")
def status() -> Response:
    """Receive any Dispatch callback: a message status or a final report."""
    return _receive()


@bp.post("/message-status")
def message_status() -> Response:
    """Receive a Dispatch callback (registered as the message-status URL)."""
    return _receive()


@bp.post("/final-report")
def final_report() -> Response:
    """Receive a Dispatch callback (registered as the final-report URL)."""
    return _receive()


def _receive() -> Response:
    callback = _load(HINTS[request.endpoint or ""])
    failed = request.environ.pop(CAPTURE_FAILED, None)
    if failed is not None:
        # The fast way checked it too, and storing it failed there: answered
        # here like any failure (503 for the database, 500 and kept for a bug).
        raise failed
    receipt = capture_delivery(Delivery(callback, _ctype(), now()))
    return Response(answer(callback, receipt), mimetype="application/json")


def check(
    hint: CallbackKind,
    body: bytes,
    authorization: str | None,
    content_type: str | None,
    credentials: Credentials,
    max_depth: int,
) -> tuple[Method, Callback]:
    """Authenticity, media type, JSON and schema, in that order, for a body read whole and
    within the size limit: how it proved its origin, and the callback.

    Raises AuthFailure or Unsigned for authenticity, else a Rejection (its
    `proven` set when the delivery had proved it comes from Vonage).
    """
    method = authenticate(authorization, body, time.time(), credentials)
    try:
        intake.check_media_type(content_type)
        return method, intake.read(hint, body, max_depth)
    except Rejection as rejection:
        rejection.proven = method != "none"
        raise


def answer(callback: Callback, receipt: Receipt) -> bytes:
    """The body of the answer to a stored callback (counted here: every stored one is answered)."""
    kind = callback.kind.value
    metrics.CALLBACKS.labels(metrics.api_of(kind), kind, receipt.outcome).inc()
    # As Flask's jsonify writes it, for either way in.
    return b'{"status":"%s","callback_id":%d}\n' % (receipt.outcome.encode(), receipt.callback_id)


def now() -> datetime:
    return datetime.now(UTC)


def _ctype() -> str | None:
    return request.headers.get("Content-Type")


def _load(hint: CallbackKind) -> Callback:
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
        method, callback = _check(hint, body, settings.max_json_depth)
        # Kept on g: the 500 handler needs it too, for a failure after this point.
        g.callback_proven = method != "none"
        return callback
    except Rejection as rejection:
        _refuse(hint, body, size, rejection)


def _refuse(
    hint: CallbackKind, body: bytes | None, size: int | None, rejection: Rejection
) -> NoReturn:
    """Keep a refused delivery, then answer it; one that cannot be kept is retried instead.

    Vonage drops a callback answered 4xx for good, so a refusal is only final
    once its body is kept for `reprocess-rejects`. While the database cannot
    take it (down, or taking no writes), a refused body is answered 503 like
    an accepted one: Vonage retries it, and the retry is refused and kept.
    """
    try:
        _keep(hint, body, size, rejection)
    except DatabaseUnavailable as exc:
        if body is not None and rejection.http_status < 500:
            current_app.logger.warning(
                "could not keep a refused callback (%s): %s; answered 503 so that it is retried",
                rejection.reason.value,
                exc,
            )
            message = (
                f"The callback is refused ({rejection.http_status}: {rejection.message}), and"
                " the database is unavailable to keep it; retry later."
            )
            retry = {"Retry-After": str(get_settings().retry_after_seconds)}
            raise ApiError(503, message, rejection.errors, retry) from None
        # Nothing a retry would add (no body to keep, or already retried).
        current_app.logger.warning("could not keep a refused callback: %s", exc)
    _count_refused(hint, rejection)  # only once it is the answer: a retried one is not yet
    raise ApiError.from_rejection(rejection, _headers(rejection)) from None


def _count_refused(hint: CallbackKind, rejection: Rejection) -> None:
    # Which API a refused body came from is not known (it may not even parse).
    metrics.CALLBACKS.labels("unknown", hint.value, "rejected").inc()
    metrics.REJECTS.labels(rejection.reason.value).inc()


def _headers(rejection: Rejection) -> dict[str, str] | None:
    if rejection.reason is Reason.UNAUTHORIZED:
        return {"WWW-Authenticate": 'Bearer realm="dispatch-ledger"'}
    if rejection.http_status == 503:
        return {"Retry-After": str(get_settings().retry_after_seconds)}
    return None


def _check(hint: CallbackKind, body: bytes, max_depth: int) -> tuple[Method, Callback]:
    header = request.headers.get("Authorization")
    try:
        return check(hint, body, header, _ctype(), get_credentials(), max_depth)
    except Unsigned as failure:
        # Vonage's own fallback on an internal error: a 5xx makes it retry.
        current_app.logger.warning("an unsigned callback: answered 503 so that it is retried")
        raise Rejection(503, Reason.UNSIGNED, f"{failure} Retry it signed.") from None
    except AuthFailure as failure:
        # The reason is safe to send back; the token is never logged, only
        # kept with the body so that a fixed secret can verify it later.
        current_app.logger.warning("refused a callback: %s", failure)
        token = bearer_token(header)
        raise Rejection(401, Reason.UNAUTHORIZED, str(failure), token=token) from None


def _keep(hint: CallbackKind, body: bytes | None, size: int | None, rejection: Rejection) -> None:
    """Keep a refused delivery, best effort: only a database that cannot take it raises."""
    # The reason only: bodies and credentials stay out of the logs.
    current_app.logger.info(
        "refused a callback: %s (%d)", rejection.reason.value, rejection.http_status
    )
    settings = get_settings()
    try:
        kept = rejects.keep(
            get_db(),
            hint,
            body,
            size,
            _ctype(),
            rejection,
            now(),
            budget_bytes=settings.rejects_kept_bytes_per_hour,
            # A delivery that proved it is Vonage's is kept whatever the budget.
            always_keep=rejection.proven or bool(g.get("callback_proven")),
        )
    except DatabaseUnavailable:
        raise  # the caller decides: a retry may keep it
    except Exception:
        # A bug in keeping: the refusal still stands (and a 5xx is retried,
        # then kept); keeping must not turn a 4xx into a 500.
        current_app.logger.warning("could not keep a refused callback", exc_info=True)
        return
    if kept.reject_id is None:
        metrics.REJECTS_DROPPED.labels(rejection.reason.value).inc()
        if kept.first_dropped:
            current_app.logger.warning(
                "refused callbacks (%s) passed REJECTS_KEPT_BYTES_PER_HOUR=%d this hour: "
                "until the hour ends they are counted in reject_window but not kept",
                rejection.reason.value,
                settings.rejects_kept_bytes_per_hour,
            )


@bp.errorhandler(InternalServerError)
def keep_failed_delivery(error: InternalServerError) -> Response:
    """Keep the body of a delivery the service failed on, so that a fix can replay it."""
    hint = HINTS.get(request.endpoint or "")
    if hint is not None:
        body = request.get_data(cache=True)
        failure = rejects.internal_error()
        _count_refused(hint, failure)
        try:
            _keep(hint, body, len(body), failure)
        except DatabaseUnavailable as exc:
            # Answered 500 all the same: Vonage retries it.
            current_app.logger.warning("could not keep a failed delivery: %s", exc)
    return handle_http_exception(error)
