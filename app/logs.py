"""Structured JSON logs, each line carrying the id of the request it belongs to."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime

from flask import Flask, Response, g, has_request_context, request

# Heroku's router and most proxies send one; otherwise one is made here.
REQUEST_ID_HEADER = "X-Request-Id"
_VALID_ID = re.compile(r"\A[A-Za-z0-9._:-]{1,128}\Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id") if has_request_context() else None
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record is written, not when it was made."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def request_id(given: str | None) -> str:
    """The id of a request that came with `given` in its X-Request-Id header."""
    # A caller's id is kept if it is plain; anything else is replaced, so
    # that nobody can write arbitrary text into the logs through it.
    return given if given and _VALID_ID.match(given) else str(uuid.uuid4())


def _assign_request_id() -> None:
    g.request_id = request_id(request.headers.get(REQUEST_ID_HEADER))


def _echo_request_id(response: Response) -> Response:
    if "request_id" in g:
        response.headers[REQUEST_ID_HEADER] = g.request_id
    return response


def init_app(app: Flask) -> None:
    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)
    logger = logging.getLogger("app")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
