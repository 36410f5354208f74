"""Play a workflow out by Dispatch's failover rules, in emulated time: pure, seeded.

Each callback has two times: `event_at`, the event's time (in its payload's
`timestamp`), and `deliver_at`, when it is sent. Faults change only the
second: a duplicate, a reordering, a final report sent before the last
statuses, late statuses after it. Times are seconds after the workflow was
accepted; the server scales them to wall-clock delays.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from app.model.times import iso


class Behavior(StrEnum):
    """What a channel does with the message it is given."""

    DELIVERED = "delivered"  # delivered quickly, never read
    READ = "read"  # delivered, then read
    FAILS = "fails"  # rejected at once
    UNDELIVERABLE = "undeliverable"  # undeliverable after a while
    SILENT = "silent"  # submitted, then nothing
    READ_LATE = "read_late"  # delivered, read only after the expiry time
    DELIVERED_LATE = "delivered_late"  # delivered only after the expiry time


NO_READ_RECEIPTS = frozenset({"sms", "mms"})
READ_AS_DELIVERED = {
    Behavior.READ: Behavior.DELIVERED,
    Behavior.READ_LATE: Behavior.DELIVERED_LATE,
}
PRICES = {
    "sms": Decimal("0.0333"),
    "messenger": Decimal("0.0100"),
    "viber_service_msg": Decimal("0.0200"),
    "whatsapp": Decimal("0.0146"),
}
LATE = 30.0  # how far past its expiry a late event comes (emulated seconds)
LAST_STEP_WAIT = 600.0  # expiry assumed for "late" behaviours on the last step


@dataclass(frozen=True)
class Faults:
    duplicates: float = 0.0  # chance that a callback is also sent a second time
    reorder: float = 0.0  # deliveries shifted by up to this many seconds, either way
    report_first: bool = False  # the final report goes before the last statuses
    late_statuses: bool = False  # the last message's statuses go after the report


@dataclass(frozen=True)
class Scenario:
    channels: dict[str, Behavior] = field(default_factory=dict)
    default: Behavior = Behavior.DELIVERED
    faults: Faults = Faults()

    def behavior(self, channel: str) -> Behavior:
        behavior = self.channels.get(channel, self.default)
        if channel in NO_READ_RECEIPTS:
            # SMS and MMS have delivery receipts, never read receipts.
            return READ_AS_DELIVERED.get(behavior, behavior)
        return behavior

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Scenario:
        """{"channels": {"sms": "fails"}, "default": "read", "faults": {"duplicates": 0.3}}."""
        if not isinstance(document, dict):
            raise ValueError("a scenario is a JSON object")
        unknown = set(document) - {"channels", "default", "faults"}
        if unknown:
            raise ValueError(f"unknown scenario keys: {sorted(unknown)}")
        channels = {str(k): Behavior(v) for k, v in dict(document.get("channels") or {}).items()}
        faults = Faults(**dict(document.get("faults") or {}))
        default = Behavior(document.get("default", Behavior.DELIVERED.value))
        return cls(channels=channels, default=default, faults=faults)


@dataclass(frozen=True)
class Delivery:
    deliver_at: float
    event_at: float
    kind: str  # "message-status" | "final-report"
    payload: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    dispatch_uuid: str
    outcome: str | None  # "completed" | "error" | None (no final report)
    winning_step: int | None
    deliveries: tuple[Delivery, ...]


@dataclass
class _Message:
    uuid: str
    channel: str
    to: dict[str, Any]
    from_: dict[str, Any]
    events: list[tuple[float, str]] = field(default_factory=list)

    def time_of(self, *statuses: str) -> float | None:
        times = [t for t, s in self.events if s in statuses]
        return min(times) if times else None


def _behave(
    behavior: Behavior, start: float, expiry: float, rng: random.Random
) -> list[tuple[float, str]]:
    jitter = rng.uniform(0.0, 1.0)
    events = [(start, "submitted")]
    if behavior is Behavior.DELIVERED:
        events.append((start + 2 + jitter, "delivered"))
    elif behavior is Behavior.READ:
        events += [(start + 2 + jitter, "delivered"), (start + 5 + jitter, "read")]
    elif behavior is Behavior.FAILS:
        events.append((start + 0.5 + jitter / 10, "rejected"))
    elif behavior is Behavior.UNDELIVERABLE:
        events.append((start + 3 + jitter, "undeliverable"))
    elif behavior is Behavior.READ_LATE:
        events += [(start + 2 + jitter, "delivered"), (start + expiry + LATE + jitter, "read")]
    elif behavior is Behavior.DELIVERED_LATE:
        events.append((start + expiry + LATE + jitter, "delivered"))
    return events


def plan(request: dict[str, Any], scenario: Scenario, seed: int, started: datetime) -> Plan:
    """Every callback Dispatch would send for this (validated) request."""
    rng = random.Random(seed)

    def new_uuid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    dispatch_uuid = new_uuid()
    steps = request["workflow"]
    messages: list[_Message] = []
    outcome: str | None = None
    winning: int | None = None
    report_at: float | None = None
    t = 0.0
    for index, step in enumerate(steps):
        channel = step["to"]["type"]
        last = index == len(steps) - 1
        failover = step.get("failover") or {}
        expiry = float(failover.get("expiry_time", LAST_STEP_WAIT))
        message = _Message(new_uuid(), channel, step["to"], step["from"])
        message.events = _behave(scenario.behavior(channel), t, expiry, rng)
        messages.append(message)
        delivered = message.time_of("delivered", "read")
        failed = message.time_of("rejected", "undeliverable")
        if last:
            if delivered is not None:
                outcome, winning, report_at = "completed", index + 1, delivered + 1
            elif failed is not None:
                outcome, report_at = "error", failed + 1
            break
        condition = failover["condition_status"]
        reached = message.time_of("read") if condition == "read" else delivered
        if reached is not None and reached <= t + expiry:
            outcome, winning, report_at = "completed", index + 1, reached + 1
            break
        # Immediate failure moves on at once; otherwise at the expiry time.
        t = (failed if failed is not None and failed <= t + expiry else t + expiry) + 1.0

    deliveries: list[Delivery] = []
    for message in messages:
        for at, status in message.events:
            deliveries.append(
                Delivery(
                    at, at, "message-status", _status(message, status, at, dispatch_uuid, started)
                )
            )
    if outcome is not None and report_at is not None:
        deliveries.append(
            Delivery(
                report_at,
                report_at,
                "final-report",
                _report(dispatch_uuid, outcome, report_at, messages, started),
            )
        )
    deliveries = _with_faults(deliveries, scenario.faults, report_at, messages[-1], rng)
    deliveries.sort(key=lambda d: (d.deliver_at, d.event_at, d.kind))
    return Plan(dispatch_uuid, outcome, winning, tuple(deliveries))


def _charged(message: _Message, by: float) -> bool:
    # Charged on delivery: a message delivered after the final report is
    # missing from its total, as the API reference warns.
    delivered = message.time_of("delivered", "read")
    return delivered is not None and delivered <= by


def _timestamp(started: datetime, at: float) -> str:
    moment = started + timedelta(seconds=at)
    return iso(moment.replace(microsecond=moment.microsecond // 1000 * 1000))


def _status(
    message: _Message, status: str, at: float, dispatch_uuid: str, started: datetime
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "message_uuid": message.uuid,
        "to": message.to,
        "from": message.from_,
        "timestamp": _timestamp(started, at),
        "status": status,
        "_links": {
            "workflow": {"dispatch_uuid": dispatch_uuid, "href": f"/workflows/{dispatch_uuid}"}
        },
    }
    if status in ("rejected", "undeliverable"):
        payload["error"] = {"code": 1300, "reason": "Not part of the provider network"}
    if _charged(message, at):
        payload["usage"] = {"currency": "EUR", "price": format(PRICES[message.channel], "f")}
    return payload


def _report(
    dispatch_uuid: str, outcome: str, at: float, messages: list[_Message], started: datetime
) -> dict[str, Any]:
    listed = []
    total = Decimal(0)
    for message in messages:
        known = [(t, s) for t, s in message.events if t <= at]
        entry: dict[str, Any] = {
            "message_uuid": message.uuid,
            "href": message.uuid,
            "channel": message.channel,
            "status": max(known)[1] if known else "submitted",
        }
        if _charged(message, at):
            entry["usage"] = {"currency": "EUR", "price": format(PRICES[message.channel], "f")}
            total += PRICES[message.channel]
        listed.append(entry)
    return {
        "dispatch_uuid": dispatch_uuid,
        "template": "failover",
        "status": outcome,
        "timestamp": _timestamp(started, at),
        "usage": {"price": format(total, "f"), "currency": "EUR"},
        "_links": {"messages": listed},
    }


def _with_faults(
    deliveries: list[Delivery],
    faults: Faults,
    report_at: float | None,
    last: _Message,
    rng: random.Random,
) -> list[Delivery]:
    result = list(deliveries)
    if faults.report_first and report_at is not None:
        first_of_last = min(t for t, _ in last.events)
        result = [
            replace(d, deliver_at=first_of_last - 0.5) if d.kind == "final-report" else d
            for d in result
        ]
    if faults.late_statuses and report_at is not None:
        # The last message's statuses keep their spacing but start after the report.
        shift = report_at + 1 - min(t for t, _ in last.events)
        result = [
            replace(d, deliver_at=d.deliver_at + shift)
            if d.kind == "message-status" and d.payload["message_uuid"] == last.uuid
            else d
            for d in result
        ]
    if faults.reorder:
        result = [
            replace(
                d, deliver_at=max(0.0, d.deliver_at + rng.uniform(-faults.reorder, faults.reorder))
            )
            for d in result
        ]
    if faults.duplicates:
        result += [
            replace(d, deliver_at=d.deliver_at + rng.uniform(0.0, 1.0))
            for d in list(result)
            if rng.random() < faults.duplicates
        ]
    return result


# --- the Messages API's failover -------------------------------------------------

MESSAGES_PRICES = {
    "sms": Decimal("0.0333"),
    "mms": Decimal("0.0500"),
    "rcs": Decimal("0.0150"),
    "messenger": Decimal("0.0100"),
    "viber_service": Decimal("0.0200"),
    "whatsapp": Decimal("0.0146"),
}
# Vonage's SDKs read the workflow object under two spellings; the stand-in sends either.
WORKFLOW_SPELLINGS = {
    "net": ("workflow_id", "items_number", "items_total"),
    "java": ("id", "item_number", "total_items"),
}
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def plan_messages(
    request: dict[str, Any], scenario: Scenario, seed: int, started: datetime, spelling: str = "net"
) -> Plan:
    """Every status webhook the Messages API would send for this (validated) failover request.

    The next item goes out when one is rejected or fails (the failover guide:
    "rejected or fails"); there is no expiry and no final report. Late
    behaviours are just slower: nothing waits for a condition. The faults
    that move a final report have nothing to move here.
    """
    rng = random.Random(seed)

    def new_uuid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    # Not a UUID: 55 characters, as in one of Vonage's SDK fixtures.
    workflow_id = "".join(rng.choice(_BASE58) for _ in range(55))
    items = [request, *request["failover"]]
    outcome: str | None = None
    winning: int | None = None
    deliveries: list[Delivery] = []
    t = 0.0
    for number, item in enumerate(items, start=1):
        channel = item["channel"]
        events = _behave(scenario.behavior(channel), t, LAST_STEP_WAIT, rng)
        message = _Message(new_uuid(), channel, {}, {}, events)
        for at, status in events:
            payload = _messages_status(
                message, item, status, at, (workflow_id, number, len(items)), spelling, started
            )
            deliveries.append(Delivery(at, at, "message-status", payload))
        delivered = message.time_of("delivered", "read")
        failed = message.time_of("rejected", "undeliverable")
        if delivered is not None:
            outcome, winning = "completed", number
            break
        if failed is None:
            break  # submitted, and nothing more: the workflow waits for ever
        if number == len(items):
            outcome = "error"
            break
        t = failed + 1.0
    faults = replace(scenario.faults, report_first=False, late_statuses=False)
    deliveries = _with_faults(deliveries, faults, None, message, rng)
    deliveries.sort(key=lambda d: (d.deliver_at, d.event_at, d.kind))
    return Plan(workflow_id, outcome, winning, tuple(deliveries))


def _messages_status(
    message: _Message,
    item: dict[str, Any],
    status: str,
    at: float,
    place: tuple[str, int, int],
    spelling: str,
    started: datetime,
) -> dict[str, Any]:
    name_id, name_number, name_total = WORKFLOW_SPELLINGS[spelling]
    payload: dict[str, Any] = {
        "message_uuid": message.uuid,
        "to": item["to"],
        "from": item["from"],
        "timestamp": _timestamp(started, at),
        "status": status,
        "channel": message.channel,
        # The counts arrive as strings.
        "workflow": {name_id: place[0], name_number: str(place[1]), name_total: str(place[2])},
    }
    if "client_ref" in item:
        payload["client_ref"] = item["client_ref"]
    if status in ("rejected", "undeliverable"):
        payload["error"] = {
            "type": "https://developer.vonage.com/api-errors/messages#1300",
            "title": "1300",
            "detail": "Not part of the provider network",
            "instance": message.uuid,
        }
    if _charged(message, at):
        price = MESSAGES_PRICES[message.channel]
        payload["usage"] = {"currency": "EUR", "price": format(price, "f")}
    return payload


def started_for(played: Plan, now: datetime, time_scale: float) -> datetime:
    """When to say a workflow started, so that no event's time is after the moment it is sent.

    Events keep their emulated spacing (deadlines depend on it) but are sent
    `time_scale` times faster, and faults send some earlier than they
    happened: a workflow that started `now` would report events from the
    future. Starting it as far back as the furthest such event puts every
    event at or before its sending.
    """
    ahead = max((d.event_at - d.deliver_at / time_scale for d in played.deliveries), default=0.0)
    return now - timedelta(seconds=max(ahead, 0.0))
