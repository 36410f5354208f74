"""Realistic data for scale tests, through the same code paths as real callbacks.

Each workflow gets a definition (recorded, as for workflows another system
sent), is played out by the Dispatch stand-in's planner under a scenario
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

from app import decide
from app.apply import apply_waiting
from app.capture import Delivery, capture_in
from app.db import Connection, Database
from app.definitions import load_definition
from app.emulator.plan import Behavior, Faults, Scenario, plan
from app.intake import CallbackKind, read

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


def workflows(
    count: int, seed: int, days: int, now: datetime, mix: str = "typical"
) -> Iterator[tuple[str, Any, list[Any]]]:
    """`count` workflows spread over `days`: (dispatch_uuid, request, [(kind, payload)])."""
    rng = random.Random(seed)
    behaviours, weights = zip(*MIXES[mix].behaviours, strict=True)
    for _ in range(count):
        request = _request(rng.choice(MIXES[mix].shapes))
        # Sorted: a set's order follows the per-process hash seed, and the
        # same --seed must give the same data in every process.
        channels = sorted({step["to"]["type"] for step in request["workflow"]})
        scenario = Scenario(
            channels={c: rng.choices(behaviours, weights)[0] for c in channels},
            faults=Faults(duplicates=0.02),
        )
        started = now - timedelta(seconds=rng.uniform(0, days * 86400))
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

    for item in workflows(count, seed, days, now, mix):
        pending.append(item)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return callbacks


def _store(conn: Connection, work: list[tuple[str, Any, list[Any]]], now: datetime) -> None:
    for dispatch_uuid, request, deliveries in work:
        decide.record_definition(
            conn, dispatch_uuid, request, load_definition(request), "recorded", now
        )
        for kind, payload in deliveries:
            callback = read(KINDS[kind], json.dumps(payload).encode(), max_depth=32)
            capture_in(conn, [Delivery(callback, "application/json", now)])
