"""The schemas against the API reference: what it allows is accepted, the rest refused."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from marshmallow import ValidationError

from app.model.state import Channel, ErrorInfo, MessageStatus, Money, Party, ReportedStatus
from app.spec.schemas import load_final_report, load_message_status
from tests import payloads

SAMPLE_STATUS = payloads.fixture("message_status_sample.json")
SAMPLE_REPORT = payloads.fixture("final_report_sample.json")


def with_change(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of base with the dotted path set to value (or removed for ...)."""
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_reference_sample_message_status_loads_completely() -> None:
    event = load_message_status(SAMPLE_STATUS)
    assert event.message_uuid == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
    assert event.status is MessageStatus.DELIVERED
    assert event.occurred_at == datetime(2020, 1, 1, 14, 0, tzinfo=UTC)
    assert event.dispatch_uuid == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
    assert event.channel is Channel.SMS
    assert event.to == Party("sms", "0123456789012345", "447700900000")
    assert event.error == ErrorInfo(1300, "Not part of the provider network")
    assert event.usage == Money(Decimal("0.0333"), "EUR")


def test_reference_sample_final_report_loads_completely() -> None:
    report = load_final_report(SAMPLE_REPORT)
    assert report.dispatch_uuid == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
    assert report.status is ReportedStatus.COMPLETED
    assert report.template == "failover"
    assert report.usage == Money(Decimal("0.02"), "EUR")
    [message] = report.messages
    assert message.channel is Channel.VIBER_SERVICE_MSG
    assert message.status is MessageStatus.SUBMITTED
    assert message.usage == Money(Decimal("0.0333"), "EUR")


@pytest.mark.parametrize("channel", ["sms", "mms", "messenger", "viber_service_msg", "whatsapp"])
def test_every_channel_is_accepted_in_status_callbacks(channel: str) -> None:
    data = with_change(SAMPLE_STATUS, "to.type", channel)
    data = with_change(data, "from.type", channel)
    assert load_message_status(data).channel is Channel(channel)


@pytest.mark.parametrize(
    "channel", ["sms", "mms", "messenger", "viber_service_msg", "viber_sevice_msg", "whatsapp"]
)
def test_every_reference_channel_is_accepted_in_final_reports(channel: str) -> None:
    data = with_change(SAMPLE_REPORT, "_links.messages.0.channel", channel)
    loaded = load_final_report(data).messages[0].channel
    assert loaded is (
        Channel.VIBER_SERVICE_MSG if channel == "viber_sevice_msg" else Channel(channel)
    )


def test_reference_typo_is_normalized_in_to_type_too() -> None:
    data = with_change(SAMPLE_STATUS, "to.type", "viber_sevice_msg")
    assert load_message_status(data).channel is Channel.VIBER_SERVICE_MSG


@pytest.mark.parametrize("status", [s.value for s in MessageStatus])
def test_every_message_status_is_accepted(status: str) -> None:
    assert load_message_status(with_change(SAMPLE_STATUS, "status", status)).status.value == status


@pytest.mark.parametrize("status", ["completed", "error"])
def test_every_final_report_status_is_accepted(status: str) -> None:
    assert load_final_report(with_change(SAMPLE_REPORT, "status", status)).status.value == status


@pytest.mark.parametrize("field", ["error", "usage", "_links", "to", "from"])
def test_optional_objects_may_be_absent_or_null(field: str) -> None:
    for value in (..., None):
        event = load_message_status(with_change(SAMPLE_STATUS, field, value))
        assert event.message_uuid == SAMPLE_STATUS["message_uuid"]


def test_minimal_callbacks_load() -> None:
    status = load_message_status(
        {"message_uuid": "m", "timestamp": "2020-01-01T14:00:00Z", "status": "submitted"}
    )
    assert status.channel is None and status.dispatch_uuid is None and status.usage is None
    report = load_final_report(
        {"dispatch_uuid": "d", "timestamp": "2020-01-01T14:00:00Z", "status": "error"}
    )
    assert report.messages == () and report.usage is None and report.template is None


def test_unknown_fields_are_tolerated_at_every_level() -> None:
    data = copy.deepcopy(SAMPLE_STATUS)
    data["new_top_level"] = {"x": 1}
    data["to"]["new_field"] = "y"
    data["usage"]["tax"] = "0.01"
    data["_links"]["workflow"]["method"] = "GET"
    data["_links"]["self"] = {"href": "/x"}
    assert load_message_status(data).usage == Money(Decimal("0.0333"), "EUR")


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2020-01-01T14:00:00.000Z", datetime(2020, 1, 1, 14, 0, tzinfo=UTC)),
        ("2020-01-01T14:00:00Z", datetime(2020, 1, 1, 14, 0, tzinfo=UTC)),
        ("2020-01-01T15:00:00+01:00", datetime(2020, 1, 1, 14, 0, tzinfo=UTC)),
        ("2020-01-01T14:00:00.123456Z", datetime(2020, 1, 1, 14, 0, 0, 123456, tzinfo=UTC)),
        ("2020-01-01T14:00:00", datetime(2020, 1, 1, 14, 0, tzinfo=UTC)),  # no offset: UTC
        ("2020-01-01 14:00:00z", datetime(2020, 1, 1, 14, 0, tzinfo=UTC)),
        # Kept to the microsecond, as PostgreSQL keeps times.
        ("2020-01-01T14:00:00.123456789Z", datetime(2020, 1, 1, 14, 0, 0, 123456, tzinfo=UTC)),
        # Years 0001 to 9999 in any offset, even where UTC is outside them.
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        (
            "9999-12-31T23:00:00-05:00",
            datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5))),
        ),
        (
            "0001-01-01T00:00:00+23:59",
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))),
        ),
    ],
)
def test_rfc3339_timestamps_are_read_as_the_instant_they_name(
    timestamp: str, expected: datetime
) -> None:
    assert (
        load_message_status(with_change(SAMPLE_STATUS, "timestamp", timestamp)).occurred_at
        == expected
    )


# (path, bad value, expected error location) for message-status
STATUS_VIOLATIONS = [
    ("message_uuid", ..., ("message_uuid",)),
    ("message_uuid", "", ("message_uuid",)),
    ("message_uuid", "x" * 51, ("message_uuid",)),
    ("message_uuid", 123, ("message_uuid",)),
    ("status", ..., ("status",)),
    ("status", "opened", ("status",)),
    ("timestamp", ..., ("timestamp",)),
    ("timestamp", "yesterday", ("timestamp",)),
    ("timestamp", "2020-01-01", ("timestamp",)),
    ("timestamp", "2020-13-01T00:00:00Z", ("timestamp",)),
    ("timestamp", 1577887200, ("timestamp",)),
    ("timestamp", "2020-01-01T14", ("timestamp",)),
    ("timestamp", "2020-01-01T14:00Z", ("timestamp",)),
    ("timestamp", "2020-02-30T14:00:00Z", ("timestamp",)),
    ("timestamp", "2020-01-01T14:00:60Z", ("timestamp",)),
    ("timestamp", "0000-01-01T14:00:00Z", ("timestamp",)),
    ("timestamp", "2020-01-01T14:00:00+24:00", ("timestamp",)),
    ("timestamp", "2020-01-01T14:00:00Z\n", ("timestamp",)),
    ("timestamp", "20200101T140000Z", ("timestamp",)),
    ("message_uuid", "   ", ("message_uuid",)),
    ("message_uuid", "\u3000\ufeff", ("message_uuid",)),
    ("message_uuid", "m\x00", ("message_uuid",)),
    ("message_uuid", "m\n", ("message_uuid",)),
    ("message_uuid", "m\x85", ("message_uuid",)),
    ("to.number", "\t", ("to", "number")),
    ("to.type", ..., ("to", "type")),
    ("to.type", "fax", ("to", "type")),
    ("to.id", "", ("to", "id")),
    ("to.number", "4" * 51, ("to", "number")),
    ("from.type", "pigeon", ("from", "type")),
    ("from.id", "x" * 51, ("from", "id")),
    ("usage.price", "0,0333", ("usage", "price")),
    ("usage.price", 0.0333, ("usage", "price")),
    ("usage.price", "-0.01", ("usage", "price")),
    ("usage.price", "1e-3", ("usage", "price")),
    ("usage.price", "1" * 51, ("usage", "price")),
    ("usage.price", ..., ("usage", "price")),
    ("usage.currency", "eur", ("usage", "currency")),
    ("usage.currency", "EURO", ("usage", "currency")),
    ("usage.currency", "EUR\n", ("usage", "currency")),
    ("usage.price", "0.03\n", ("usage", "price")),
    ("usage.currency", ..., ("usage", "currency")),
    ("error.code", "abc", ("error", "code")),
    ("error.code", 2**31, ("error", "code")),
    ("error.code", True, ("error", "code")),
    ("error.code", 1.5, ("error", "code")),
    ("error.code", 1e300, ("error", "code")),
    ("error.code", "1300", ("error", "code")),
    ("error.reason", 5, ("error", "reason")),
    ("_links.workflow.dispatch_uuid", "", ("_links", "workflow", "dispatch_uuid")),
    ("_links.workflow.dispatch_uuid", "d" * 51, ("_links", "workflow", "dispatch_uuid")),
    ("to", "sms", ("to",)),
]


@pytest.mark.parametrize(("path", "value", "where"), STATUS_VIOLATIONS)
def test_message_status_violations_are_reported_by_field(
    path: str, value: Any, where: tuple[str, ...]
) -> None:
    assert_error_at(load_message_status, with_change(SAMPLE_STATUS, path, value), where)


def assert_error_at(load: Callable[[Any], object], data: Any, where: tuple[Any, ...]) -> None:
    """Loading fails, with a message at exactly the field `where` names."""
    with pytest.raises(ValidationError) as caught:
        load(data)
    node: Any = caught.value.messages
    for key in where:
        assert key in node, (where, caught.value.messages)
        node = node[key]
    assert node  # a non-empty list of messages, or a nested {"_schema": [...]}


REPORT_VIOLATIONS = [
    ("dispatch_uuid", ..., ("dispatch_uuid",)),
    ("dispatch_uuid", "d" * 51, ("dispatch_uuid",)),
    ("status", "submitted", ("status",)),
    ("status", ..., ("status",)),
    ("template", "cascade", ("template",)),
    ("timestamp", "2020-01-01 noon", ("timestamp",)),
    ("usage.price", "two cents", ("usage", "price")),
    ("_links.messages.0.message_uuid", ..., ("_links", "messages", 0, "message_uuid")),
    ("_links.messages.0.channel", "telegram", ("_links", "messages", 0, "channel")),
    ("_links.messages.0.status", "completed", ("_links", "messages", 0, "status")),
    ("_links.messages.0.usage.currency", "E", ("_links", "messages", 0, "usage", "currency")),
    ("_links.messages", "m-1", ("_links", "messages")),
]


@pytest.mark.parametrize(("path", "value", "where"), REPORT_VIOLATIONS)
def test_final_report_violations_are_reported_by_field(
    path: str, value: Any, where: tuple[Any, ...]
) -> None:
    assert_error_at(load_final_report, with_change(SAMPLE_REPORT, path, value), where)


def test_final_report_with_absurdly_many_messages_is_refused() -> None:
    data = copy.deepcopy(SAMPLE_REPORT)
    data["_links"]["messages"] = [{"message_uuid": f"m-{i}"} for i in range(101)]
    with pytest.raises(ValidationError) as caught:
        load_final_report(data)
    assert "messages" in caught.value.messages["_links"]  # type: ignore[index]


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_refused(body: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        load_message_status(body)
    assert "_schema" in caught.value.messages
