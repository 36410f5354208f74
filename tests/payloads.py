"""Callback payloads for tests, shaped like the API reference's samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"

Delivery = tuple[str, dict[str, Any]]  # (kind: "message-status" | "final-report", payload)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def status(
    message_uuid: str,
    status: str,
    timestamp: str,
    *,
    channel: str = "sms",
    dispatch_uuid: str | None = None,
    price: str | None = None,
    error: tuple[int, str] | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "message_uuid": message_uuid,
        "to": {"type": channel, "number": "447700900000"},
        "from": {"type": channel, "number": "447700900001"},
        "timestamp": timestamp,
        "status": status,
    }
    if dispatch_uuid is not None:
        payload["_links"] = {
            "workflow": {"dispatch_uuid": dispatch_uuid, "href": f"/workflows/{dispatch_uuid}"}
        }
    if price is not None:
        payload["usage"] = {"currency": "EUR", "price": price}
    if error is not None:
        payload["error"] = {"code": error[0], "reason": error[1]}
    return payload


def final_report(
    dispatch_uuid: str,
    status: str,
    timestamp: str,
    messages: list[dict[str, Any]],
    *,
    price: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "dispatch_uuid": dispatch_uuid,
        "template": "failover",
        "status": status,
        "timestamp": timestamp,
        "_links": {"messages": messages},
    }
    if price is not None:
        payload["usage"] = {"price": price, "currency": "EUR"}
    return payload


def three_message_workflow(dispatch_uuid: str, prefix: str = "m") -> list[Delivery]:
    """Messenger delivered but never read, Viber rejected, SMS delivered; completed.

    The final report's total (0.02) misses the late-delivered messenger price,
    as the API reference warns it can.
    """
    m1, m2, m3 = f"{prefix}-1-messenger", f"{prefix}-2-viber", f"{prefix}-3-sms"
    d = dispatch_uuid
    return [
        (
            "message-status",
            status(
                m1,
                "submitted",
                "2020-01-01T14:00:00.000Z",
                channel="messenger",
                dispatch_uuid=d,
                price="0.0100",
            ),
        ),
        (
            "message-status",
            status(
                m1,
                "delivered",
                "2020-01-01T14:00:05.000Z",
                channel="messenger",
                dispatch_uuid=d,
                price="0.0100",
            ),
        ),
        (
            "message-status",
            status(
                m2,
                "submitted",
                "2020-01-01T14:10:00.000Z",
                channel="viber_service_msg",
                dispatch_uuid=d,
            ),
        ),
        (
            "message-status",
            status(
                m2,
                "rejected",
                "2020-01-01T14:10:01.000Z",
                channel="viber_service_msg",
                dispatch_uuid=d,
                error=(1300, "Not part of the provider network"),
            ),
        ),
        (
            "message-status",
            status(m3, "submitted", "2020-01-01T14:10:02.000Z", dispatch_uuid=d, price="0.0333"),
        ),
        (
            "message-status",
            status(m3, "delivered", "2020-01-01T14:10:09.000Z", dispatch_uuid=d, price="0.0333"),
        ),
        (
            "final-report",
            final_report(
                d,
                "completed",
                "2020-01-01T14:10:10.000Z",
                [
                    {
                        "message_uuid": m1,
                        "href": m1,
                        "channel": "messenger",
                        "status": "delivered",
                        "usage": {"currency": "EUR", "price": "0.0100"},
                    },
                    {
                        "message_uuid": m2,
                        "href": m2,
                        "channel": "viber_sevice_msg",
                        "status": "rejected",
                    },
                    {
                        "message_uuid": m3,
                        "href": m3,
                        "channel": "sms",
                        "status": "delivered",
                        "usage": {"currency": "EUR", "price": "0.0333"},
                    },
                ],
                price="0.02",
            ),
        ),
    ]


# Vonage's SDKs spell the workflow object of a Messages failover status two ways.
NET_SPELLING = ("workflow_id", "items_number", "items_total")  # .NET SDK
JAVA_SPELLING = ("id", "item_number", "total_items")  # Java SDK


def messages_status(
    message_uuid: str,
    status: str,
    timestamp: str,
    *,
    channel: str = "sms",
    workflow: tuple[str, int, int] | None = None,
    spelling: tuple[str, str, str] = NET_SPELLING,
    price: str | None = None,
    error: tuple[int | str, str] | None = None,
    client_ref: str | None = None,
) -> dict[str, Any]:
    """A Messages API (v1) status webhook; `workflow` is (workflow_id, item, of items)."""
    payload: dict[str, Any] = {
        "message_uuid": message_uuid,
        "to": "447700900000",
        "from": "447700900001",
        "timestamp": timestamp,
        "status": status,
        "channel": channel,
    }
    if workflow is not None:
        name_id, name_number, name_total = spelling
        # The counts arrive as strings.
        payload["workflow"] = {
            name_id: workflow[0],
            name_number: str(workflow[1]),
            name_total: str(workflow[2]),
        }
    if price is not None:
        payload["usage"] = {"currency": "EUR", "price": price}
    if error is not None:
        payload["error"] = {
            "type": "https://developer.vonage.com/api-errors/messages#1000",
            "title": error[0],
            "detail": error[1],
            "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
        }
    if client_ref is not None:
        payload["client_ref"] = client_ref
    return payload


def messages_failover_request(*channels: str, text: str = "Your code is 1234") -> dict[str, Any]:
    """A Messages API send with failover: one message per channel, in order."""
    senders = {"messenger": "1234567890", "viber_service": "16273"}

    def one(channel: str) -> dict[str, Any]:
        to = "0987654321" if channel == "messenger" else "447700900000"
        return {
            "channel": channel,
            "message_type": "text",
            "to": to,
            "from": senders.get(channel, "447700900001"),
            "text": text,
        }

    first, *rest = channels
    return {**one(first), "client_ref": "campaign-7", "failover": [one(c) for c in rest]}
