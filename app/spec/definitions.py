"""The Dispatch request body (`template` + `workflow`), validated by every rule of the reference.

Every problem is reported at once, field by field, so a user fixes a
definition in one go.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from app.model.failover import Definition, Step
from app.model.state import Api, Channel, MessageStatus
from app.spec.schemas import WholeNumber

# The request's channels (the reference lists no mms for sending).
REQUEST_CHANNELS = ["sms", "viber_service_msg", "messenger", "whatsapp"]
CONTENT_TYPES = ["text", "image", "audio", "video", "file", "template", "custom"]
# What each channel can carry ("custom" is passed through as the Messages API allows).
CHANNEL_CONTENT = {
    "messenger": {"text", "image", "audio", "video", "file", "custom"},
    "viber_service_msg": {"text", "image", "custom"},
    "whatsapp": {"template", "text", "image", "audio", "video", "file", "custom"},
    "sms": {"text"},
}
TEXT_LIMITS = {"messenger": 640, "sms": 1000, "viber_service_msg": 1000, "whatsapp": 4096}
# Who must be identified how, per the reference's notes on to/from id and number.
REQUIRED_PARTY_FIELDS = {
    "messenger": {"to": "id", "from": "id"},
    "sms": {"to": "number", "from": "number"},
    "viber_service_msg": {"to": "number", "from": "id"},
    "whatsapp": {"to": "number", "from": "number"},
}
# "Don't use a leading + or 00": the country code first, digits only.
E164 = re.compile(r"^[1-9][0-9]{6,14}$")  # published in /openapi.json too
MAX_STEPS = 10


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE


def _string(low: int, high: int, **kw: Any) -> fields.String:
    return fields.String(validate=validate.Length(min=low, max=high), **kw)


class PartySchema(_Base):
    type = fields.String(required=True, validate=validate.OneOf(REQUEST_CHANNELS))
    id = _string(1, 50)
    number = _string(1, 50)


class MediaSchema(_Base):
    url = _string(1, 2000, required=True)
    caption = _string(1, 3000)


class TemplateParameterSchema(_Base):
    default = fields.String(required=True)


class TemplateSchema(_Base):
    name = _string(1, 512, required=True)
    parameters = fields.List(fields.Nested(TemplateParameterSchema))


class ContentSchema(_Base):
    type = fields.String(required=True, validate=validate.OneOf(CONTENT_TYPES))
    text = _string(1, 4096)
    image = fields.Nested(MediaSchema)
    audio = fields.Nested(MediaSchema(only=("url",)))
    video = fields.Nested(MediaSchema(only=("url",)))
    file = fields.Nested(MediaSchema)
    template = fields.Nested(TemplateSchema)


class ViberOptionsSchema(_Base):
    category = fields.String(validate=validate.OneOf(["transaction", "promotion"]))
    ttl = WholeNumber(validate=validate.Range(min=30, max=86400))


class MessengerOptionsSchema(_Base):
    category = fields.String(validate=validate.OneOf(["response", "update", "message_tag"]))
    tag = fields.String(validate=validate.Length(min=1))


class WhatsappOptionsSchema(_Base):
    policy = fields.String(validate=validate.OneOf(["fallback", "deterministic"]))
    locale = _string(2, 35)


class MessageBodySchema(_Base):
    content = fields.Nested(ContentSchema, required=True)
    viber_service_msg = fields.Nested(ViberOptionsSchema)
    messenger = fields.Nested(MessengerOptionsSchema)
    whatsapp = fields.Nested(WhatsappOptionsSchema)


class FailoverSchema(_Base):
    expiry_time = WholeNumber(required=True, validate=validate.Range(min=15, max=86400))
    condition_status = fields.String(required=True, validate=validate.OneOf(["delivered", "read"]))


class WorkflowMessageSchema(_Base):
    to = fields.Nested(PartySchema, required=True)
    from_ = fields.Nested(PartySchema, data_key="from", required=True)
    message = fields.Nested(MessageBodySchema, required=True)
    failover = fields.Nested(FailoverSchema)


class DispatchRequestSchema(_Base):
    template = fields.String(required=True, validate=validate.OneOf(["failover"]))
    workflow = fields.List(
        fields.Nested(WorkflowMessageSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_STEPS),
    )

    # Runs even when fields failed, so that every problem is listed at once;
    # it reads the raw input and skips what the field checks already refuse.
    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def check_rules(self, _data: Any, original: Any, **_: Any) -> None:
        workflow = original.get("workflow") if isinstance(original, dict) else None
        if not isinstance(workflow, list):
            return
        errors: dict[int, Any] = {}
        for index, item in enumerate(workflow):
            if not isinstance(item, dict):
                continue
            problems = _message_rules(item, last=index == len(workflow) - 1)
            if problems:
                errors[index] = problems  # int, as marshmallow indexes list items
        if errors:
            raise ValidationError({"workflow": errors})


def _add(problems: dict[str, Any], path: str, message: str) -> None:
    """Add a message at a dotted path; an object's own messages go under `_schema`."""
    node = problems
    *parents, leaf = path.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if isinstance(child, list):
            child = node[key] = {"_schema": child}
        node = child
    existing = node.setdefault(leaf, [])
    if isinstance(existing, dict):
        existing = existing.setdefault("_schema", [])
    existing.append(message)


def _get(data: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _message_rules(item: dict[str, Any], last: bool) -> dict[str, Any]:
    problems: dict[str, Any] = {}
    channel = _get(item, "to.type")
    if "failover" in item and last:
        _add(problems, "failover", "The last message must not have a failover.")
    if "failover" not in item and not last:
        _add(problems, "failover", "Every message but the last must have a failover.")
    if channel not in REQUEST_CHANNELS:
        return problems  # the field check reports the channel itself
    from_type = _get(item, "from.type")
    if from_type in REQUEST_CHANNELS and from_type != channel:
        _add(problems, "from.type", f"Must be the same channel as to.type ({channel}).")
    for side, key in REQUIRED_PARTY_FIELDS[channel].items():
        if _get(item, f"{side}.{key}") is None:
            _add(problems, f"{side}.{key}", f"Required for {channel}.")
    number = _get(item, "to.number")
    if isinstance(number, str) and channel != "messenger" and not E164.fullmatch(number):
        _add(
            problems,
            "to.number",
            "An E.164 number without a leading + or 00 (country code first, 7 to 15 digits).",
        )
    if channel == "sms" and _get(item, "failover.condition_status") == "read":
        _add(problems, "failover.condition_status", "SMS can only fail over on delivered.")
    _content_rules(item, channel, problems)
    return problems


def _content_rules(item: dict[str, Any], channel: str, problems: dict[str, Any]) -> None:
    content_type = _get(item, "message.content.type")
    if content_type not in CONTENT_TYPES:
        return
    if content_type not in CHANNEL_CONTENT[channel]:
        allowed = ", ".join(sorted(CHANNEL_CONTENT[channel]))
        _add(problems, "message.content.type", f"{channel} supports {allowed}.")
        return
    if content_type != "custom" and _get(item, f"message.content.{content_type}") is None:
        _add(problems, f"message.content.{content_type}", f"Required for type {content_type}.")
    text = _get(item, "message.content.text")
    if content_type == "text" and isinstance(text, str) and len(text) > TEXT_LIMITS[channel]:
        _add(
            problems,
            "message.content.text",
            f"{channel} text is limited to {TEXT_LIMITS[channel]} characters.",
        )
    if content_type in ("image", "file") and channel != "whatsapp":
        if _get(item, f"message.content.{content_type}.caption") is not None:
            _add(
                problems,
                f"message.content.{content_type}.caption",
                "Captions are for WhatsApp only.",
            )
    if _get(item, "message.messenger.category") == "message_tag" and not _get(
        item, "message.messenger.tag"
    ):
        _add(problems, "message.messenger.tag", "Required when category is message_tag.")


_SCHEMA = DispatchRequestSchema()


def load_definition(body: Any) -> Definition:
    """Validate a Dispatch request body; raises ValidationError listing every problem."""
    if not isinstance(body, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    data = _SCHEMA.load(body)
    steps = []
    for item in data["workflow"]:
        failover = item.get("failover")
        steps.append(
            Step(
                channel=Channel(item["to"]["type"]),
                condition_status=MessageStatus(failover["condition_status"]) if failover else None,
                expiry_time=failover["expiry_time"] if failover else None,
            )
        )
    return Definition(tuple(steps))


def steps_document(definition: Definition) -> list[dict[str, Any]]:
    """The steps as stored (and shown): channel, condition and expiry of each."""
    return [
        {
            "channel": step.channel.value if step.channel else None,
            "condition_status": step.condition_status.value if step.condition_status else None,
            "expiry_time": step.expiry_time,
        }
        for step in definition.steps
    ]


def definition_from_steps(steps: list[dict[str, Any]], api: str = "dispatch") -> Definition:
    return Definition(
        api=Api(api),
        steps=tuple(
            Step(
                channel=Channel(s["channel"]) if s["channel"] else None,
                condition_status=MessageStatus(s["condition_status"])
                if s["condition_status"]
                else None,
                expiry_time=s["expiry_time"],
            )
            for s in steps
        ),
    )
