"""Realistic data for scale tests, through the same code paths as real callbacks.

Each workflow gets a definition (recorded, as for workflows another system
sent), is played out by the stand-in's planner (Dispatch's, or the Messages
API's for a share of them) under a scenario
drawn at random, and every callback it would send goes through the same
intake checks and the same store-and-apply transaction as a delivery over
HTTP. Only HTTP itself is skipped; workflows are stored in batches, one
transaction per batch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.emulator.plan import Behavior, Faults, Scenario, plan, plan_messages
from app.pipeline import decide
from app.pipeline.apply import apply_waiting
from app.pipeline.capture import Delivery, capture_in
from app.spec.definitions import load_definition
from app.spec.intake import CallbackKind, read
from app.spec.messages_request import is_messages_request, load_failover_request
from app.store.db import Connection, Database

KINDS = {"message-status": CallbackKind.MESSAGE_STATUS, "final-report": CallbackKind.FINAL_REPORT}
_PARTIES = {
    "messenger": (
        {"type": "messenger", "id": "1000000000000001"},
        {"type": "messenger", "id": "2000000000000002"},
    ),
    "viber_service_msg": (
        {"type": "viber_service_msg", "number": "447700900000"},
        {"type": "viber_service_msg", "id": "12345"},
    ),
    "whatsapp": (
        {"type": "whatsapp", "number": "447700900000"},
        {"type": "whatsapp", "number": "447700900001"},
    ),
    "sms": ({"type": "sms", "number": "447700900000"}, {"type": "sms", "number": "447700900001"}),
}
# Workflow shapes seen in practice: a rich channel first, SMS last.
_SHAPES = [
    [("messenger", "read", 600), ("sms", None, None)],
    [("whatsapp", "read", 900), ("sms", None, None)],
    [("messenger", "read", 600), ("viber_service_msg", "delivered", 300), ("sms", None, None)],
    [("viber_service_msg", "delivered", 300), ("sms", None, None)],
    [("whatsapp", "delivered", 120), ("viber_service_msg", "read", 600), ("sms", None, None)],
]
# How channels behave, roughly: most deliver, some are read, some fail.
_BEHAVIOURS = [
    (Behavior.READ, 35),
    (Behavior.DELIVERED, 30),
    (Behavior.FAILS, 12),
    (Behavior.UNDELIVERABLE, 8),
    (Behavior.SILENT, 5),
    (Behavior.READ_LATE, 6),
    (Behavior.DELIVERED_LATE, 4),
]
# A campaign whose audience seldom reads rich messages in time: every step
# waits for `read`, so about four in five fail over, and a workflow sends about
# three messages. This is the mix of the scale figures in BENCHMARKS.md
# (1 million workflows, 3 million messages).
_LONG_SHAPES = [
    [
        ("messenger", "read", 600),
        ("whatsapp", "read", 900),
        ("viber_service_msg", "read", 600),
        ("sms", None, None),
    ],
    [
        ("whatsapp", "read", 900),
        ("messenger", "read", 600),
        ("viber_service_msg", "read", 600),
        ("sms", None, None),
    ],
]
_LONG_BEHAVIOURS = [
    (Behavior.READ, 18),
    (Behavior.DELIVERED, 47),
    (Behavior.FAILS, 10),
    (Behavior.UNDELIVERABLE, 8),
    (Behavior.SILENT, 5),
    (Behavior.READ_LATE, 8),
    (Behavior.DELIVERED_LATE, 4),
]


@dataclass(frozen=True)
class Mix:
    shapes: list[list[tuple[str, str | None, int | None]]]
    behaviours: list[tuple[Behavior, int]]


MIXES = {"typical": Mix(_SHAPES, _BEHAVIOURS), "long": Mix(_LONG_SHAPES, _LONG_BEHAVIOURS)}


def _request(shape: list[tuple[str, str | None, int | None]]) -> dict[str, Any]:
    workflow = []
    for channel, condition, expiry in shape:
        to, from_ = _PARTIES[channel]
        step: dict[str, Any] = {
            "to": to,
            "from": from_,
            "message": {"content": {"type": "text", "text": "Your order has shipped."}},
        }
        if condition is not None:
            step["failover"] = {"expiry_time": expiry, "condition_status": condition}
        workflow.append(step)
    return {"template": "failover", "workflow": workflow}


# The Messages API's names for Dispatch's channels, and its own RCS, tried first.
_MESSAGES_CHANNELS = {"viber_service_msg": "viber_service"}
_MESSAGES_SENDERS = {"messenger": "2000000000000002", "viber_service": "12345"}


def _messages_request(shape: list[tuple[str, str | None, int | None]], rcs: bool) -> dict[str, Any]:
    """The same campaign as a Messages API failover request (no conditions, no expiry)."""
    channels = (["rcs"] if rcs else []) + [_MESSAGES_CHANNELS.get(c, c) for c, _, _ in shape]
    items = [
        {
            "channel": channel,
            "message_type": "text",
            "to": "1000000000000001" if channel == "messenger" else "447700900000",
            "from": _MESSAGES_SENDERS.get(channel, "447700900001"),
            "text": "Your order has shipped.",
        }
        for channel in channels
    ]
    return {**items[0], "failover": items[1:]}


def workflows(
    count: int,
    seed: int,
    days: int,
    now: datetime,
    mix: str = "typical",
    messages_share: float = 0.0,
) -> Iterator[tuple[str, Any, list[Any]]]:
    """`count` workflows spread over `days`: (id, request, [(kind, payload)]).

    About `messages_share` of them are Messages API failover workflows (the
    same campaigns, RCS first for half of them), the rest Dispatch ones.
    """
    rng = random.Random(seed)
    behaviours, weights = zip(*MIXES[mix].behaviours, strict=True)
    for _ in range(count):
        shape = rng.choice(MIXES[mix].shapes)
        # Drawn only when asked for, so that a seed keeps making the same Dispatch data.
        messages_api = bool(messages_share) and rng.random() < messages_share
        request = _messages_request(shape, rng.random() < 0.5) if messages_api else _request(shape)
        # Sorted: a set's order follows the per-process hash seed, and the
        # same --seed must give the same data in every process.
        if messages_api:
            channels = sorted({item["channel"] for item in [request, *request["failover"]]})
        else:
            channels = sorted({step["to"]["type"] for step in request["workflow"]})
        scenario = Scenario(
            channels={c: rng.choices(behaviours, weights)[0] for c in channels},
            faults=Faults(duplicates=0.02),
        )
        started = now - timedelta(seconds=rng.uniform(0, days * 86400))
        if messages_api:
            played = plan_messages(request, scenario, rng.getrandbits(64), started)
        else:
            played = plan(request, scenario, rng.getrandbits(64), started)
        yield played.dispatch_uuid, request, [(d.kind, d.payload) for d in played.deliveries]


def generate(
    db: Database,
    count: int,
    seed: int = 1,
    days: int = 30,
    batch: int = 50,
    now: datetime | None = None,
    mix: str = "typical",
    progress: Callable[[int], None] = lambda _: None,
    messages_share: float = 0.0,
) -> int:
    """Store `count` workflows through capture and apply; returns how many callbacks."""
    now = now or datetime.now(UTC)
    callbacks = 0
    pending: list[tuple[str, Any, list[Any]]] = []

    def flush() -> None:
        nonlocal callbacks
        work = list(pending)
        db.run(lambda conn: _store(conn, work, now))
        apply_waiting(db, max_depth=32)
        callbacks += sum(len(items) for _, _, items in work)
        progress(len(work))
        pending.clear()

    for item in workflows(count, seed, days, now, mix, messages_share):
        pending.append(item)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return callbacks


def _store(conn: Connection, work: list[tuple[str, Any, list[Any]]], now: datetime) -> None:
    for dispatch_uuid, request, deliveries in work:
        definition = (
            load_failover_request(request)
            if is_messages_request(request)
            else load_definition(request)
        )
        decide.record_definition(conn, dispatch_uuid, request, definition, "recorded", now)
        for kind, payload in deliveries:
            callback = read(KINDS[kind], json.dumps(payload).encode(), max_depth=32)
            capture_in(conn, [Delivery(callback, "application/json", now)])
