"""One JSON error envelope, {code, status, message, errors}, for every API error response
(the dashboard, read by people, answers its errors with pages: answer_with_pages)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError

from app.spec.intake import Rejection
from app.store.db import DatabaseUnavailable


class ApiError(HTTPException):
    """An HTTP error with a message and field-level errors for the envelope."""

    def __init__(
        self,
        code: int,
        message: str,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description=message)
        self.code = code
        self.errors = errors or {}
        self.extra_headers = headers or {}

    @classmethod
    def from_rejection(
        cls, rejection: Rejection, headers: dict[str, str] | None = None
    ) -> ApiError:
        """The answer to a refused body: its status, message and field errors."""
        return cls(rejection.http_status, rejection.message, rejection.errors, headers)

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [*super().get_headers(*args, **kwargs), *self.extra_headers.items()]


def envelope(code: int, message: str, errors: dict[str, Any] | None = None) -> Response:
    from werkzeug.http import HTTP_STATUS_CODES

    response = jsonify(
        code=code,
        status=HTTP_STATUS_CODES.get(code, "Unknown Error"),
        message=message,
        errors=errors or {},
    )
    response.status_code = code
    return response


def handle_http_exception(error: HTTPException) -> Response:
    code = error.code or 500
    if isinstance(error, InternalServerError):
        # Never echo what went wrong inside: it is in the log, not the answer.
        message = "The server failed to handle the request."
    else:
        message = error.description or ""
    pages: dict[str, Callable[[HTTPException], Response]] = current_app.extensions.get(_PAGES, {})
    for prefix, page in pages.items():
        if request.path == prefix or request.path.startswith(prefix + "/"):
            # People read these: their errors are pages (routing's 404s too).
            return page(error)
    response = envelope(code, message, getattr(error, "errors", None))
    # Keep headers such as Allow (405) that Werkzeug's exception carries.
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


_PAGES = "dispatch_ledger.error_pages"


def answer_with_pages(app: Flask, prefix: str, page: Callable[[HTTPException], Response]) -> None:
    """Errors under `prefix` (the dashboard's) are answered by `page`, not the JSON envelope."""
    app.extensions.setdefault(_PAGES, {})[prefix] = page


def handle_database_unavailable(error: DatabaseUnavailable) -> Response:
    current_app.logger.warning("database unavailable: %s", error)
    response = envelope(503, "The database is unavailable; retry later.")
    response.headers["Retry-After"] = str(current_app.config["RETRY_AFTER_SECONDS"])
    return response


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(DatabaseUnavailable, handle_database_unavailable)
