"""From the bytes of a delivery to a validated event, or a reasoned refusal.

Pure (no Flask, no database) so that the HTTP path and the reprocessing of
kept rejects go through exactly the same checks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from marshmallow import ValidationError

from app.model.state import FinalReport, StatusEvent
from app.spec.schemas import load_final_report, load_message_status, load_messages_status


class CallbackKind(StrEnum):
    MESSAGE_STATUS = "message_status"  # Dispatch's message status
    FINAL_REPORT = "final_report"  # Dispatch's final report
    MESSAGES_STATUS = "messages_status"  # the Messages API's (v1) message status


class Reason(StrEnum):
    """Why a delivery was refused; stored with every reject."""

    MALFORMED_JSON = "malformed_json"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    SCHEMA_VIOLATION = "schema_violation"
    UNAUTHORIZED = "unauthorized"
    # No Authorization at all: Vonage's own fallback on an internal error (503, retried).
    UNSIGNED = "unsigned"
    INTERNAL_ERROR = "internal_error"


@dataclass
class Rejection(Exception):
    """A delivery refused, with the HTTP status and what to tell the sender."""

    http_status: int
    reason: Reason
    message: str
    errors: dict[str, Any] = field(default_factory=dict)
    # The bearer token a refused delivery came with, kept so that
    # `reprocess-rejects` can verify it again after a secret is fixed.
    token: str | None = None
    # Refused after it proved it comes from Vonage (a valid signature): kept whatever the budget.
    proven: bool = False

    def __str__(self) -> str:
        return f"{self.http_status} {self.reason}: {self.message}"


@dataclass(frozen=True)
class Callback:
    """A delivery that passed every check, ready to be stored and applied."""

    kind: CallbackKind
    body: bytes
    payload: dict[str, Any]
    event: StatusEvent | FinalReport

    @functools.cached_property
    def canonical(self) -> str:
        """The payload as canonical JSON (keys sorted, no spaces): hashed for the
        dedup key, and stored as the jsonb copy (one serialization for both)."""
        return json.dumps(self.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def dedup_key(self) -> bytes:
        """SHA-256 of canonical JSON: a re-serialized redelivery is still a duplicate."""
        return hashlib.sha256(self.canonical.encode("utf-8")).digest()


def is_json_media_type(content_type: str | None) -> bool:
    """application/json or any application/*+json, parameters such as charset allowed."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_media_type(content_type: str | None) -> None:
    if not is_json_media_type(content_type):
        raise Rejection(
            415,
            Reason.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type must be application/json, not {content_type or 'missing'!r}.",
        )


def too_large(limit: int) -> Rejection:
    return Rejection(413, Reason.TOO_LARGE, f"The body is larger than {limit} bytes.")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent, as long as it is finite (1e999 is not)."""
    value = float(text)
    if not math.isfinite(value):
        raise Rejection(400, Reason.MALFORMED_JSON, "JSON numbers must be finite.")
    return value


def parse_json(body: bytes, max_depth: int) -> Any:
    """Parse a body as strict JSON that PostgreSQL can store as jsonb."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejection(400, Reason.MALFORMED_JSON, "The body is not UTF-8 text.") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise Rejection(
            400, Reason.MALFORMED_JSON, f"JSON nested deeper than {max_depth} levels."
        ) from None
    except ValueError as exc:
        raise Rejection(400, Reason.MALFORMED_JSON, f"The body is not valid JSON: {exc}") from None
    # Walking the document costs about as much as parsing it, so only a body
    # that could hold a problem is walked: NUL and lone surrogates reach a
    # string only through \u escapes (raw ones fail the decoding or the
    # parser), and nesting is at most the number of brackets.
    if "\\u" in text or text.count("{") + text.count("[") > max_depth:
        problem = _unstorable(value, max_depth)
        if problem:
            raise Rejection(400, Reason.MALFORMED_JSON, problem)
    return value


def _unstorable(value: Any, max_depth: int) -> str | None:
    """What keeps a parsed document out of jsonb, if anything (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return f"JSON nested deeper than {max_depth} levels."
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str):
                    stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, str):
            if "\x00" in item:
                return "JSON strings must not contain NUL (\\u0000) characters."
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "JSON strings must not contain unpaired surrogate escapes."
    return None


def kind_of(payload: Any, hint: CallbackKind) -> CallbackKind:
    """Tell a callback's kind by its shape, whichever URL it came to.

    Dispatch sends both kinds to the application's status URL, and the
    Messages API sends its statuses there too, so the URL is only a hint:

    - a final report has `dispatch_uuid` (and `template`);
    - a status has `message_uuid`: a Messages API one has `to`/`from` as
      strings, or (when neither is an object) a top-level `channel` or
      `workflow`; a Dispatch one has them as objects, under `_links`.

    A body of no known shape is checked against the hinted kind's schema,
    so that its field errors say what is missing.
    """
    if not isinstance(payload, dict):
        return hint
    status = "message_uuid" in payload
    report = "dispatch_uuid" in payload and ("template" in payload or not status)
    if status and report:
        raise Rejection(
            422,
            Reason.SCHEMA_VIOLATION,
            "The callback has the shape of both a message status and a final report.",
            {"_schema": ["Both message_uuid and dispatch_uuid with template at the top."]},
        )
    if status:
        if _messages_api_shape(payload):
            return CallbackKind.MESSAGES_STATUS
        return CallbackKind.MESSAGE_STATUS
    if report:
        return CallbackKind.FINAL_REPORT
    return hint


def _messages_api_shape(payload: dict[str, Any]) -> bool:
    """A status of the Messages API, not of Dispatch (see kind_of)."""
    parties = [payload.get(side) for side in ("to", "from")]
    if any(isinstance(p, str) for p in parties):
        return True
    if any(isinstance(p, dict) for p in parties):
        return False
    return "channel" in payload or "workflow" in payload


def validate(kind: CallbackKind, payload: Any, body: bytes) -> Callback:
    """Check a parsed payload against the callback's schema."""
    try:
        event: StatusEvent | FinalReport
        if kind is CallbackKind.MESSAGE_STATUS:
            event = load_message_status(payload)
        elif kind is CallbackKind.MESSAGES_STATUS:
            event = load_messages_status(payload)
        else:
            event = load_final_report(payload)
    except ValidationError as exc:
        message = (
            "The callback does not match the Messages API's status webhook."
            if kind is CallbackKind.MESSAGES_STATUS
            else "The callback does not match the Dispatch API reference."
        )
        raise schema_rejection(exc, message) from None
    return Callback(kind=kind, body=body, payload=payload, event=event)


def schema_rejection(exc: ValidationError, message: str) -> Rejection:
    """A 422 refusal carrying marshmallow's field errors, ready to send as JSON."""
    errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return Rejection(422, Reason.SCHEMA_VIOLATION, message, json_keys(errors))


def json_keys(errors: Any) -> Any:
    """marshmallow indexes list items by int; JSON object keys are strings."""
    if isinstance(errors, dict):
        return {str(key): json_keys(value) for key, value in errors.items()}
    if isinstance(errors, list):
        return [json_keys(item) for item in errors]
    return errors


def read(hint: CallbackKind, body: bytes, max_depth: int) -> Callback:
    """Parse, tell the kind and validate a body (the media type is the HTTP layer's business)."""
    payload = parse_json(body, max_depth)
    return validate(kind_of(payload, hint), payload, body)
