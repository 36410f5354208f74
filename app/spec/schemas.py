"""marshmallow schemas for Dispatch's two callbacks, as the API reference specifies them.

Strict on every field the service uses (types, enums, lengths, formats);
unknown fields are ignored here because Dispatch may add fields, and they are
kept anyway in the raw copy of each callback.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    missing,
    post_load,
    types,
    validate,
)
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES, VALIDATES_SCHEMA

from app.model import times
from app.model.state import (
    DISPATCH_CHANNELS,
    MESSAGES_CHANNELS,
    Api,
    Channel,
    ErrorInfo,
    FinalReport,
    MessageStatus,
    Money,
    Party,
    ReportedMessage,
    ReportedStatus,
    StatusEvent,
)

# The API reference lists `viber_sevice_msg` (sic) among final-report channels;
# it is the same channel as `viber_service_msg` everywhere else.
CHANNEL_ALIASES = {"viber_sevice_msg": Channel.VIBER_SERVICE_MSG.value}
MAX_REPORTED_MESSAGES = 100
_INT32 = validate.Range(min=-(2**31), max=2**31 - 1)
E = TypeVar("E")


class Pattern(validate.Regexp):
    """A regular expression that must match the whole value, published as OpenAPI's `pattern`.

    Written in the subset that Python and ECMA-262 (OpenAPI's dialect) read
    alike, anchored with ^ and $; matched with fullmatch, since Python's $
    also matches before a final newline.
    """

    def __init__(self, regex: str, error: str) -> None:
        super().__init__(regex, error=error)
        self.whole = re.compile(regex)

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str) or self.whole.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


# Spaces as ECMA-262's \\s knows them; an id made of nothing else is blank.
_BLANK = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_CONTROL = r"\u0000-\u001f\u007f-\u009f"
# Ids and numbers: printable text (no control characters), not blank.
ID = Pattern(rf"^[^{_CONTROL}]*[^{_CONTROL}{_BLANK}][^{_CONTROL}]*$", error="Not a printable id.")
PRICE = Pattern(r"^[0-9]+(\.[0-9]+)?$", error='Not a decimal string such as "0.0333".')
CURRENCY = Pattern(r"^[A-Z]{3}$", error="Not a 3-letter ISO 4217 currency code.")
# RFC 3339 date-time, exact to the calendar (leap days too), so that every
# string it admits is a time this service can store: years 0001 to 9999, any
# offset. A missing offset is taken as UTC (refusing one would lose a
# callback for good). Fractions past microseconds are cut, as PostgreSQL
# keeps times to the microsecond.
_YEAR = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    r"|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
)
TIMESTAMP = Pattern(
    rf"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)[Tt ]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$",
    error="Not an RFC 3339 date-time such as 2020-01-01T14:00:00.000Z.",
)


class CallbackSchema(Schema):
    """A callback schema: unknown fields ignored, and a short way through marshmallow.

    Every callback is checked twice, when it is captured and when it is
    applied, and marshmallow's load spends about half its time on machinery
    these schemas do not use (an error store, hooks looked up on every call,
    a closure per field). For a body it accepts, `load` asks each field to
    deserialize its value, as marshmallow does, and runs the post_load; the
    first field error sends the body through marshmallow's own load, so that
    a refusal lists every field's errors exactly as before. The fields, their
    validators and the post_loads stay the only rules (tests/spec/test_fuzz.py
    checks both ways give the same result for any JSON).
    """

    class Meta:
        unknown = EXCLUDE

    # Off only in the test that compares the short way with marshmallow's.
    short_way: ClassVar[bool] = True

    def load(
        self,
        data: Any,
        *,
        many: bool | None = None,
        partial: bool | types.StrSequenceOrSet | None = None,
        unknown: types.UnknownOption | None = None,
    ) -> Any:
        plan = self._plan
        if (
            plan is None
            or not self.short_way
            or many
            or partial
            or unknown not in (None, EXCLUDE)
            or type(data) is not dict
        ):
            return super().load(data, many=many, partial=partial, unknown=unknown)
        values: dict[str, Any] = {}
        try:
            for key, attribute, field in plan.steps:
                value = field.deserialize(data.get(key, missing), key, data)
                if value is not missing:
                    values[attribute] = value
            result: Any = values
            for post_load_hook in plan.post_loads:
                result = post_load_hook(result, many=False, partial=None, unknown=None)
        except ValidationError:
            return super().load(data, many=many, partial=partial, unknown=unknown)
        return result

    @functools.cached_property
    def _plan(self) -> _Plan | None:
        """What `load` does, resolved once; None when the schema needs
        marshmallow's whole load (hooks other than plain post_loads, many or
        partial set on the schema, unknown fields kept or refused)."""
        hooks = (PRE_LOAD, VALIDATES, VALIDATES_SCHEMA)
        if any(self._hooks[hook] for hook in hooks) or self.many or self.partial:
            return None
        post_loads = self._hooks[POST_LOAD]
        if self.unknown != EXCLUDE or any(
            many or options.get("pass_original") for _, many, options in post_loads
        ):
            return None
        return _Plan(
            steps=[
                (
                    field.data_key if field.data_key is not None else name,
                    field.attribute or name,
                    field,
                )
                for name, field in self.load_fields.items()
            ],
            post_loads=[getattr(self, name) for name, _, _ in post_loads],
        )


@dataclass(frozen=True)
class _Plan:
    # (key in the body, key in the loaded dict, field), in the schema's order.
    steps: list[tuple[str, str, fields.Field[Any]]]
    post_loads: list[Callable[..., Any]]


ID_LENGTH = validate.Length(min=1, max=50)
# Messages API failover: a workflow_id is not a UUID (an SDK fixture has 55
# characters), so it gets more room than Dispatch's 50.
WORKFLOW_ID_LENGTH = validate.Length(min=1, max=200)


def is_id(value: str) -> bool:
    """Whether a callback could name this id (the rules the schemas apply, the longest length)."""
    try:
        WORKFLOW_ID_LENGTH(value)
        ID(value)
    except ValidationError:
        return False
    return True


def _id(*, required: bool = False) -> fields.String:
    """Ids and numbers: printable strings of 1 to 50 characters, as the reference says."""
    checks = [ID_LENGTH, ID]
    if required:
        return fields.String(required=True, validate=checks)
    return fields.String(load_default=None, allow_none=True, validate=checks)


def _optional(schema: type[Schema]) -> fields.Nested:
    # Providers often send `null` for an absent object; treat it as absent.
    return fields.Nested(schema, load_default=None, allow_none=True)


class ChannelField(fields.String):
    """A channel name among one API's, with the Dispatch reference's own typo normalized."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's convention
        "channel": "Must be one of: {choices}.",
    }

    def __init__(self, channels: tuple[Channel, ...] = DISPATCH_CHANNELS, **kwargs: Any) -> None:
        self.channels = channels
        aliases = [a for a, c in CHANNEL_ALIASES.items() if Channel(c) in channels]
        # Published in /openapi.json: every spelling accepted, the typo too.
        accepted = [*(c.value for c in channels), *aliases]
        super().__init__(metadata={"enum": accepted}, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Channel:
        text = super()._deserialize(value, attr, data, **kwargs)
        text = CHANNEL_ALIASES.get(text, text)
        if text not in self.channels:
            choices = ", ".join(c.value for c in self.channels)
            raise self.make_error("channel", choices=choices)
        return Channel(text)


_PAST_MICROSECONDS = re.compile(r"(\.[0-9]{6})[0-9]+")


class IsoTimestamp(fields.Field[datetime]):
    """An RFC 3339 date and time, years 0001 to 9999, any offset; without one, UTC."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's convention
        "invalid": "Not a valid RFC 3339 date-time (no such day or time).",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"pattern": TIMESTAMP.regex.pattern}, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        TIMESTAMP(value)
        # Python reads neither lower-case t/z nor more than 6 fraction digits.
        text = _PAST_MICROSECONDS.sub(r"\1", value.upper())
        try:
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            # One form per instant keeps every later comparison and text the same.
            return times.canonical(parsed)
        except (ValueError, OverflowError):
            raise self.make_error("invalid") from None


class PriceField(fields.Field[Decimal]):
    """A price as the reference sends it: a decimal number in a string, kept exactly."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's convention
        "invalid": "Not a decimal string of at most 50 characters.",
    }

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"pattern": PRICE.regex.pattern, "maxLength": 50}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        PRICE(value)
        if len(value) > 50:
            raise self.make_error("invalid")
        return Decimal(value)


class PartySchema(CallbackSchema):
    type = ChannelField(required=True)
    id = _id()
    number = _id()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Party:
        return Party(type=data["type"].value, id=data["id"], number=data["number"])


class WholeNumber(fields.Integer):
    """An integer as JSON has them: 1300 or 1300.0 (one number), never 1.5, "1300" or true."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid", input=value)
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid", input=value)
        return int(value)


class ErrorSchema(CallbackSchema):
    # The reference says integer: 1.5 and "1300" are not codes.
    code = WholeNumber(load_default=None, allow_none=True, validate=_INT32)
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ErrorInfo:
        return ErrorInfo(code=data["code"], reason=data["reason"])


class UsageSchema(CallbackSchema):
    currency = fields.String(required=True, validate=CURRENCY)
    price = PriceField(required=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Money:
        return Money(amount=data["price"], currency=data["currency"])


class WorkflowLinkSchema(CallbackSchema):
    dispatch_uuid = _id()
    href = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class StatusLinksSchema(CallbackSchema):
    workflow = _optional(WorkflowLinkSchema)


class MessageStatusSchema(CallbackSchema):
    """The message-status callback."""

    message_uuid = _id(required=True)
    to = _optional(PartySchema)
    from_ = fields.Nested(PartySchema, data_key="from", load_default=None, allow_none=True)
    timestamp = IsoTimestamp(required=True)
    status = fields.Enum(MessageStatus, by_value=True, required=True)
    error = _optional(ErrorSchema)
    usage = _optional(UsageSchema)
    links = fields.Nested(StatusLinksSchema, data_key="_links", load_default=None, allow_none=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> StatusEvent:
        to: Party | None = data["to"]
        from_: Party | None = data["from_"]
        workflow = (data["links"] or {}).get("workflow") or {}
        # The recipient's side names the channel the message went out on.
        party = to or from_
        return StatusEvent(
            message_uuid=data["message_uuid"],
            status=data["status"],
            occurred_at=data["timestamp"],
            dispatch_uuid=workflow.get("dispatch_uuid"),
            channel=Channel(party.type) if party else None,
            to=to,
            from_=from_,
            error=data["error"],
            usage=data["usage"],
        )


class ReportedMessageSchema(CallbackSchema):
    message_uuid = _id(required=True)
    href = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    channel = ChannelField(load_default=None, allow_none=True)
    usage = _optional(UsageSchema)
    status = fields.Enum(MessageStatus, by_value=True, load_default=None, allow_none=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ReportedMessage:
        return ReportedMessage(
            message_uuid=data["message_uuid"],
            channel=data["channel"],
            status=data["status"],
            usage=data["usage"],
        )


class FinalReportLinksSchema(CallbackSchema):
    messages = fields.List(
        fields.Nested(ReportedMessageSchema),
        load_default=list,
        validate=validate.Length(max=MAX_REPORTED_MESSAGES),
    )


class FinalReportSchema(CallbackSchema):
    """The final-report callback."""

    dispatch_uuid = _id(required=True)
    template = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(["failover"])
    )
    status = fields.Enum(ReportedStatus, by_value=True, required=True)
    timestamp = IsoTimestamp(required=True)
    usage = _optional(UsageSchema)
    links = fields.Nested(
        FinalReportLinksSchema, data_key="_links", load_default=None, allow_none=True
    )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> FinalReport:
        messages = (data["links"] or {}).get("messages") or []
        return FinalReport(
            dispatch_uuid=data["dispatch_uuid"],
            status=data["status"],
            occurred_at=data["timestamp"],
            template=data["template"],
            usage=data["usage"],
            messages=tuple(messages),
        )


# Ids on the Messages API side: phone numbers, page and channel ids.
MESSAGES_ID_LENGTH = validate.Length(min=1, max=200)
_ITEM_COUNT = validate.Range(min=1, max=10_000)
_COUNT_PATTERN = "^(?:[1-9][0-9]{0,3}|10000)$"


class CountField(fields.Integer):
    """A count as Vonage sends it in the workflow object: "2" (a string) or 2."""

    def __init__(self, **kwargs: Any) -> None:
        # Published as OpenAPI reads it: a whole number, or its digits in a string.
        metadata = {
            "type": ["integer", "string"],
            "pattern": _COUNT_PATTERN,
            "minimum": 1,
            "maximum": 10_000,
        }
        super().__init__(validate=_ITEM_COUNT, metadata=metadata, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(_COUNT_PATTERN, value):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 2.0 is JSON's 2
            return int(value)
        raise self.make_error("invalid", input=value)


class MessagesWorkflowSchema(CallbackSchema):
    """The `workflow` object of a failover send; Vonage's SDKs spell its fields two ways.

    Where both spellings come, the .NET SDK's (`workflow_id`, `items_number`,
    `items_total`) stands. Nothing here refuses a callback that can be kept:
    an item past the total is stored as it came (its workflow then has as
    many steps as its highest item), and an object without an id links the
    message to no workflow.
    """

    workflow_id = fields.String(load_default=None, validate=[WORKFLOW_ID_LENGTH, ID])
    id = fields.String(load_default=None, validate=[WORKFLOW_ID_LENGTH, ID])
    items_number = CountField(load_default=None)
    item_number = CountField(load_default=None)
    items_total = CountField(load_default=None)
    total_items = CountField(load_default=None)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {
            "workflow_id": _either(data, "workflow_id", "id"),
            "item_number": _either(data, "items_number", "item_number"),
            "items_total": _either(data, "items_total", "total_items"),
        }


def _either(data: dict[str, Any], a: str, b: str) -> Any:
    return data[a] if data.get(a) is not None else data.get(b)


class CodeOrText(fields.Field[int | str]):
    """An error `title`: the SDKs read a string, the guides show a number such as 1300."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's convention
        "invalid": "Not a string or a whole number.",
    }

    def __init__(self, **kwargs: Any) -> None:
        metadata = {
            "type": ["string", "integer"],
            "maxLength": 2000,
            "minimum": -(2**31),
            "maximum": 2**31 - 1,
        }
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | str:
        if isinstance(value, str) and len(value) <= 2000:
            return value
        if isinstance(value, float) and value.is_integer():  # 1300.0 is JSON's 1300
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            _INT32(value)
            return value
        raise self.make_error("invalid")


class MessagesErrorSchema(CallbackSchema):
    type = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    title = CodeOrText(load_default=None, allow_none=True)
    detail = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    instance = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> ErrorInfo:
        title = data["title"]
        code = title if isinstance(title, int) else None
        if isinstance(title, str) and re.fullmatch(r"[0-9]{1,9}", title):
            code = int(title)  # "1300" is the same code as 1300
        text = [t for t in (None if code is not None else title, data["detail"]) if t]
        return ErrorInfo(code=code, reason=": ".join(text) or None)


class MessagesStatusSchema(CallbackSchema):
    """A Messages API (v1) message-status webhook, with a failover send's `workflow` object."""

    message_uuid = _id(required=True)
    to = fields.String(load_default=None, allow_none=True, validate=[MESSAGES_ID_LENGTH, ID])
    from_ = fields.String(
        data_key="from", load_default=None, allow_none=True, validate=[MESSAGES_ID_LENGTH, ID]
    )
    timestamp = IsoTimestamp(required=True)
    status = fields.Enum(MessageStatus, by_value=True, required=True)
    channel = ChannelField(MESSAGES_CHANNELS, load_default=None, allow_none=True)
    client_ref = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=100)
    )
    error = _optional(MessagesErrorSchema)
    usage = _optional(UsageSchema)
    workflow = _optional(MessagesWorkflowSchema)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> StatusEvent:
        channel: Channel | None = data["channel"]
        workflow = data["workflow"] or {}
        # Parties as Dispatch's are stored: a Messenger id, anyone else's number.
        kind = channel.value if channel else "unknown"
        side = "id" if channel is Channel.MESSENGER else "number"
        to, from_ = (
            Party(type=kind, **{side: value}) if value is not None else None
            for value in (data["to"], data["from_"])
        )
        return StatusEvent(
            message_uuid=data["message_uuid"],
            status=data["status"],
            occurred_at=data["timestamp"],
            dispatch_uuid=workflow.get("workflow_id"),
            channel=channel,
            to=to,
            from_=from_,
            error=data["error"],
            usage=data["usage"],
            api=Api.MESSAGES,
            # Without a workflow, a position means nothing.
            item_number=workflow.get("item_number") if workflow.get("workflow_id") else None,
            items_total=workflow.get("items_total") if workflow.get("workflow_id") else None,
            client_ref=data["client_ref"],
        )


_MESSAGE_STATUS = MessageStatusSchema()
_FINAL_REPORT = FinalReportSchema()
_MESSAGES_STATUS = MessagesStatusSchema()


def load_messages_status(payload: Any) -> StatusEvent:
    """Validate a Messages API status webhook; raises ValidationError with field errors."""
    return _load(_MESSAGES_STATUS, payload, StatusEvent)


def load_message_status(payload: Any) -> StatusEvent:
    """Validate a message-status payload; raises ValidationError with field errors."""
    return _load(_MESSAGE_STATUS, payload, StatusEvent)


def load_final_report(payload: Any) -> FinalReport:
    """Validate a final-report payload; raises ValidationError with field errors."""
    return _load(_FINAL_REPORT, payload, FinalReport)


def _load(schema: Schema, payload: Any, kind: type[E]) -> E:
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    result = schema.load(payload)
    if not isinstance(result, kind):  # pragma: no cover - post_load guarantees it
        raise TypeError(f"schema produced {type(result).__name__}, not {kind.__name__}")
    return result
