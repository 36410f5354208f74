"""The Messages API failover request (`POST /v1/messages` with `failover`), validated.

One ordinary message, plus `failover`: complete messages tried in order
when the one before is rejected. Every problem is reported at once, field by
field, as for a Dispatch request (`app.spec.definitions`).
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from app.model.failover import Definition, Step
from app.model.state import MAX_ITEMS, MESSAGES_CHANNELS, Api, Channel
from app.spec.schemas import WholeNumber

CHANNELS = [c.value for c in MESSAGES_CHANNELS]
# What each channel can carry, and the longest text it takes.
MESSAGE_TYPES = {
    "sms": {"text"},
    "mms": {"text", "image", "vcard", "audio", "video"},
    "rcs": {"text", "image", "video", "file", "card", "carousel", "custom"},
    "whatsapp": {"text", "image", "audio", "video", "file", "template", "sticker", "custom"},
    "messenger": {"text", "image", "audio", "video", "file"},
    "viber_service": {"text", "image", "video", "file"},
}
TEXT_LIMITS = {
    "sms": 1000,
    "mms": 1000,
    "rcs": 3072,
    "whatsapp": 4096,
    "messenger": 640,
    "viber_service": 1000,
}
# How long (seconds) delivery may be attempted, where a channel takes a `ttl`.
TTL_RANGES = {
    "sms": (300, 259_200),
    "mms": (300, 259_200),
    "rcs": (20, 259_200),
    "viber_service": (30, 259_200),
    "whatsapp": (60, 2_592_000),
    "messenger": (60, 2_592_000),
}
# Message types whose content is a file Vonage fetches.
MEDIA = frozenset({"image", "audio", "video", "file", "vcard"})
# What a blank url is made of. Spelled out, because "white space" differs by
# engine: Python's str.strip() also strips \x1c-\x1f, which the regex engines
# that read /openapi.json's patterns do not count as space; the published
# schema's pattern for a url is built from this same set (app/read/openapi.py).
BLANK = (
    "\t\n\v\f\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def is_blank(value: str) -> bool:
    return all(char in BLANK for char in value)


CLIENT_REF_LENGTH = 100
WEBHOOK_VERSIONS = ["v0.1", "v1"]


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE


class MessageSchema(_Base):
    """One complete message, as the Messages API (v1) takes it."""

    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    message_type = fields.String(required=True, validate=validate.Length(min=1, max=50))
    to = fields.String(required=True, validate=validate.Length(min=1, max=50))
    from_ = fields.String(data_key="from", required=True, validate=validate.Length(min=1, max=50))
    text = fields.String(validate=validate.Length(min=1))
    image = fields.Dict()
    audio = fields.Dict()
    video = fields.Dict()
    file = fields.Dict()
    vcard = fields.Dict()
    sticker = fields.Dict()
    template = fields.Dict()
    custom = fields.Dict()
    card = fields.Dict()
    carousel = fields.Dict()
    client_ref = fields.String(validate=validate.Length(max=CLIENT_REF_LENGTH))
    webhook_url = fields.String(validate=validate.Length(min=1, max=2000))
    webhook_version = fields.String(validate=validate.OneOf(WEBHOOK_VERSIONS))
    ttl = WholeNumber()  # 600 or 600.0, as JSON has integers; never 600.5, "600" or true

    # Also when another field is wrong: every problem is reported at once.
    @validates_schema(skip_on_field_errors=False)
    def _fits_its_channel(self, data: dict[str, Any], **_: Any) -> None:
        channel, kind = data.get("channel"), data.get("message_type")
        if channel is None or kind is None:
            return  # already reported
        problems: dict[str, list[str]] = {}
        allowed = MESSAGE_TYPES[channel]
        if kind not in allowed:
            problems["message_type"] = [f"{channel} takes {', '.join(sorted(allowed))}."]
        elif data.get(kind) is None:
            problems[kind] = [f"Required for message_type {kind}."]
        elif kind in MEDIA and is_blank(str(data[kind].get("url") or "")):
            problems[kind] = [f"A {kind} needs its url."]
        text = data.get("text")
        if kind == "text" and isinstance(text, str) and len(text) > TEXT_LIMITS[channel]:
            problems["text"] = [f"{channel} text is limited to {TEXT_LIMITS[channel]} characters."]
        ttl = data.get("ttl")
        if ttl is not None:
            low, high = TTL_RANGES[channel]
            if not low <= ttl <= high:
                problems["ttl"] = [f"{channel} takes a ttl of {low} to {high} seconds."]
        if problems:
            raise ValidationError(problems)


class FailoverRequestSchema(MessageSchema):
    """The first message, and the messages to fail over to, in order."""

    failover = fields.List(
        fields.Nested(MessageSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_ITEMS - 1),
    )


_SCHEMA = FailoverRequestSchema()


def is_messages_request(body: Any) -> bool:
    """Whether a request body is for the Messages API (not Dispatch: `template`, `workflow`).

    Dispatch's `template` is a string (`failover`); the Messages API's is the
    object of a WhatsApp template message, which may well come first.
    """
    if not isinstance(body, dict) or "workflow" in body:
        return False
    if isinstance(body.get("template"), str):
        return False
    return any(key in body for key in ("channel", "message_type", "failover"))


def load_failover_request(body: Any) -> Definition:
    """Validate a Messages failover request; raises ValidationError listing every problem."""
    if not isinstance(body, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    data = _SCHEMA.load(body)
    items = [data, *data["failover"]]
    return Definition(tuple(Step(Channel(item["channel"])) for item in items), Api.MESSAGES)
