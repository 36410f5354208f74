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
from datetime import UTC, datetime, timedelta
from typing import Any

from app import ingest, storage
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


def workflows(count: int, seed: int, days: int, now: datetime) -> Iterator[tuple[Any, list[Any]]]:
    """(request, callbacks as (kind, payload)) for `count` workflows, spread over `days`."""
    rng = random.Random(seed)
    behaviours, weights = zip(*_BEHAVIOURS, strict=True)
    for _ in range(count):
        request = _request(rng.choice(_SHAPES))
        channels = {step["to"]["type"] for step in request["workflow"]}
        scenario = Scenario(
            channels={c: rng.choices(behaviours, weights)[0] for c in channels},
            faults=Faults(duplicates=0.02),
        )
        started = now - timedelta(seconds=rng.uniform(0, days * 86400))
        played = plan(request, scenario, rng.getrandbits(64), started)
        yield request, [(d.kind, d.payload) for d in played.deliveries]


def generate(
    db: Database,
    count: int,
    seed: int = 1,
    days: int = 30,
    batch: int = 50,
    now: datetime | None = None,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Store `count` workflows; returns how many callbacks went through ingest."""
    now = now or datetime.now(UTC)
    callbacks = 0
    pending: list[tuple[Any, list[Any]]] = []

    def flush() -> None:
        nonlocal callbacks
        work = list(pending)
        db.run(lambda conn: _store(conn, work, now))
        callbacks += sum(len(items) for _, items in work)
        progress(len(work))
        pending.clear()

    for item in workflows(count, seed, days, now):
        pending.append(item)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return callbacks


def _store(conn: Connection, work: list[tuple[Any, list[Any]]], now: datetime) -> None:
    for request, deliveries in work:
        dispatch_uuid = deliveries[0][1]["_links"]["workflow"]["dispatch_uuid"]
        storage.save_definition(
            conn, dispatch_uuid, request, load_definition(request), "recorded", now
        )
        for kind, payload in deliveries:
            callback = read(KINDS[kind], json.dumps(payload).encode(), max_depth=32)
            ingest.receive_in(conn, callback, "application/json", now)
