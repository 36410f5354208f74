"""Workflow events: recorded with the state that made them, and read in commit order."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from psycopg.rows import dict_row

from app.extensions import get_db
from app.pipeline import decide, overdue_events, rebuild
from app.pipeline.apply import apply_waiting
from app.pipeline.capture import Delivery, capture
from app.spec.definitions import load_definition
from app.spec.intake import CallbackKind, read
from app.store import backlog, events
from app.store.db import Database
from app.store.events import NewEvent
from tests import payloads
from tests.conftest import post, post_all, query
from tests.pipeline.test_rebuild import workload
from tests.pipeline.test_state_in_db import KINDS

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def all_events(db: Database) -> list[dict[str, Any]]:
    return db.run(lambda conn: events.feed(conn, 0, 10_000))


def test_a_workflow_decided_by_its_final_report_tells_it_once(client: FlaskClient) -> None:
    db = get_db(client.application)
    post_all(client, payloads.three_message_workflow("d-1"))
    told = all_events(db)
    assert [e["type"] for e in told] == ["workflow.decided", "workflow.discrepancy"]
    decided, disagreement = told
    assert decided["id"].startswith("evt_") and decided["id"] != disagreement["id"]
    data = decided["data"]
    assert data["dispatch_uuid"] == "d-1"
    assert (data["status"], data["decided_by"], data["previous_status"]) == (
        "completed",
        "final_report",
        "pending",
    )
    assert (data["sequence"], disagreement["data"]["sequence"]) == (1, 2)
    # The exact sum of the callbacks' prices, and what Vonage said.
    assert data["usage"] == {"EUR": "0.0433"}
    assert data["reported_usage"] == {"EUR": "0.02"}
    assert data["messages"] == 3
    assert disagreement["data"]["discrepancy"]["kind"] == "usage_mismatch"
    # No numbers: the callbacks named 447700900000 and 447700900001.
    assert "4477009" not in json.dumps(told)

    # Vonage sends them all again: nothing new is told.
    post_all(client, payloads.three_message_workflow("d-1"))
    assert all_events(db) == told


def test_a_definition_recorded_after_the_callbacks_decides_and_tells(
    client: FlaskClient,
) -> None:
    db = get_db(client.application)
    m = "d-2-sms"
    said = (("submitted", "2020-01-01T14:00:00Z"), ("delivered", "2020-01-01T14:00:05Z"))
    for status, at in said:
        body = payloads.status(m, status, at, dispatch_uuid="d-2")
        assert post(client, "message-status", body).status_code == 200
    assert all_events(db) == []  # nothing to decide from yet

    request = _sms_only_request()
    db.run(
        lambda conn: decide.record_definition(
            conn, "d-2", request, load_definition(request), "recorded", NOW
        )
    )
    [told] = all_events(db)
    assert told["type"] == "workflow.decided"
    assert (told["data"]["status"], told["data"]["decided_by"]) == ("completed", "definition")
    assert told["data"]["winning_step"] == 1 and told["data"]["winning_channel"] == "sms"


def _sms_only_request() -> dict[str, Any]:
    return {
        "template": "failover",
        "workflow": [
            {
                "from": {"type": "sms", "number": "447700900001"},
                "to": {"type": "sms", "number": "447700900000"},
                "message": {"content": {"type": "text", "text": "hello"}},
            }
        ],
    }


def test_a_conflict_between_callbacks_is_told_for_the_workflow(client: FlaskClient) -> None:
    db = get_db(client.application)
    first = payloads.status("m-c", "submitted", "2020-01-01T14:00:00Z", dispatch_uuid="d-a")
    other = payloads.status("m-c", "delivered", "2020-01-01T14:00:05Z", dispatch_uuid="d-b")
    post_all(client, [("message-status", first), ("message-status", other)])
    told = [e for e in all_events(db) if e["type"] == "workflow.discrepancy"]
    assert told, all_events(db)
    assert {e["data"]["discrepancy"]["subject"] for e in told} == {"message"}
    assert all(e["data"]["dispatch_uuid"] in {"d-a", "d-b"} for e in told)
    # Told once: the same conflict again is already recorded.
    post_all(client, [("message-status", other)])
    assert [e for e in all_events(db) if e["type"] == "workflow.discrepancy"] == told


def test_an_apply_rolled_back_tells_nothing(db: Database) -> None:
    payload = payloads.final_report(
        "d-3", "completed", "2020-01-01T14:00:00Z", [{"message_uuid": "m-3", "status": "read"}]
    )
    callback = read(CallbackKind.FINAL_REPORT, json.dumps(payload).encode(), 32)
    capture(db, Delivery(callback, "application/json", NOW))

    class Stop(Exception):
        pass

    from app.pipeline import apply

    def fold_then_fail(conn: Any) -> None:
        rows = conn.execute(
            "SELECT r.id, r.kind, r.body, r.received_at, 0 AS attempts FROM raw_callback r"
        ).fetchall()
        apply._apply_claimed(conn, rows, 32, NOW)
        assert events.head(conn) > 0  # made, in this transaction
        raise Stop

    with pytest.raises(Stop):
        db.run(fold_then_fail)
    assert all_events(db) == []
    apply_waiting(db, 32)
    assert [e["type"] for e in all_events(db)] == ["workflow.decided"]


def test_overdue_is_told_once_per_kind(client: FlaskClient) -> None:
    db = get_db(client.application)
    _failover_due(client, "d-4", "2026-01-01T00:00:00Z")
    before = all_events(db)
    # Its failover was due 600 s after submission; within the grace, nothing.
    assert overdue_events.sweep(db, NOW + timedelta(seconds=700), 300, 86_400) == 0
    assert overdue_events.sweep(db, NOW + timedelta(seconds=901), 300, 86_400) == 1
    assert overdue_events.sweep(db, NOW + timedelta(seconds=2000), 300, 86_400) == 0
    [told] = all_events(db)[len(before) :]
    assert told["type"] == "workflow.overdue"
    assert told["data"]["overdue"]["kind"] == "failover_overdue"
    assert told["data"]["overdue"]["reason"].startswith("step 1: its failover was due at")
    assert told["data"]["status"] == "pending" and told["data"]["current_step"] == 1


def _failover_due(client: FlaskClient, dispatch_uuid: str, submitted: str) -> None:
    """A two-step workflow whose first step was submitted then: its failover is due 600 s
    later, overdue after the grace (300 s in these tests)."""
    db = get_db(client.application)
    request = _two_step_request()
    db.run(
        lambda conn: decide.record_definition(
            conn, dispatch_uuid, request, load_definition(request), "recorded", NOW
        )
    )
    message = f"m-{dispatch_uuid}"
    body = payloads.status(
        message, "submitted", submitted, channel="messenger", dispatch_uuid=dispatch_uuid
    )
    post_all(client, [("message-status", body)])


def _overdue_told(db: Database) -> list[str]:
    return [e["data"]["dispatch_uuid"] for e in all_events(db) if e["type"] == "workflow.overdue"]


def _sweeping(db: Database) -> Callable[[int], int]:
    """A deliverer's sweeps at NOW + the seconds given (grace 300 s; every deadline
    looked at again each hour)."""
    sweeper = overdue_events.Sweeper(full_every=timedelta(hours=1))
    return lambda seconds: sweeper.sweep(db, NOW + timedelta(seconds=seconds), 300, 86_400)


def test_a_sweep_looks_at_deadlines_passed_since_the_last_and_every_one_now_and_then(
    client: FlaskClient,
) -> None:
    db = get_db(client.application)
    sweep = _sweeping(db)

    _failover_due(client, "d-on-time", "2026-01-01T00:00:00Z")
    assert sweep(700) == 0  # the first sweep looks at every deadline: none passed yet
    assert sweep(901) == 1  # passed since the last sweep
    assert _overdue_told(db) == ["d-on-time"]
    # A step submitted a day ago, heard of only now: its failover was due long
    # before the last sweep, so the next sweeps, looking since then, miss it...
    _failover_due(client, "d-heard-late", "2025-12-31T00:00:00Z")
    assert sweep(1000) == 0
    assert sweep(1500) == 0
    # ... until one looks at every deadline again (an hour after the first, here).
    assert sweep(700 + 3600) == 1
    assert _overdue_told(db) == ["d-on-time", "d-heard-late"]
    assert sweep(700 + 7200) == 0  # each told once


def test_a_sweep_that_left_a_workflow_behind_looks_again_from_where_it_was(
    client: FlaskClient, clean_db: str
) -> None:
    db = get_db(client.application)
    sweep = _sweeping(db)

    _failover_due(client, "d-held", "2026-01-01T00:00:00Z")
    assert sweep(700) == 0
    with psycopg.connect(clean_db) as applier:
        # An applier holds the workflow: the sweeps pass it by (SKIP LOCKED).
        applier.execute(
            "SELECT 1 FROM dispatch WHERE dispatch_uuid = 'd-held' FOR NO KEY UPDATE"
        ).fetchone()
        assert sweep(901) == 0
        assert sweep(1500) == 0
    # Had those sweeps moved on, this one would look only at deadlines after
    # about 1,140 s, and miss the one at 900 s.
    assert sweep(2000) == 1
    assert _overdue_told(db) == ["d-held"]


def _two_step_request() -> dict[str, Any]:
    request = _sms_only_request()
    request["workflow"].insert(
        0,
        {
            "from": {"type": "messenger", "id": "page"},
            "to": {"type": "messenger", "id": "user"},
            "message": {"content": {"type": "text", "text": "hello"}},
            "failover": {"expiry_time": 600, "condition_status": "delivered"},
        },
    )
    return request


def test_a_rebuild_tells_only_the_outcomes_it_changes(client: FlaskClient, clean_db: str) -> None:
    db = get_db(client.application)
    post_all(client, payloads.three_message_workflow("d-5"))
    post_all(client, payloads.three_message_workflow("d-6", prefix="n"))
    told = all_events(db)
    # An older rule had decided d-6 otherwise (as a fixed bug would have).
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("UPDATE dispatch SET status = 'error' WHERE dispatch_uuid = 'd-6'")
    summary = rebuild.rebuild(clean_db, 32)
    assert summary.outcomes_changed == 1
    after = all_events(db)
    assert after[: len(told)] == told
    [correction] = after[len(told) :]
    assert correction["data"]["dispatch_uuid"] == "d-6"
    assert correction["type"] == "workflow.decided"
    assert (correction["data"]["status"], correction["data"]["previous_status"]) == (
        "completed",
        "error",
    )
    # The workflow's own count goes on after the events it had.
    assert correction["data"]["sequence"] == 3
    # Rebuilt again: nothing changes, nothing is told.
    assert rebuild.rebuild(clean_db, 32).outcomes_changed == 0
    assert all_events(db) == after


def test_a_rebuild_tells_every_changed_outcome_a_page_at_a_time(
    client: FlaskClient, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = get_db(client.application)
    for n in range(5):
        post_all(client, payloads.three_message_workflow(f"d-{n}", prefix=f"p{n}"))
    told = all_events(db)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("UPDATE dispatch SET status = 'error' WHERE dispatch_uuid <> 'd-2'")
    monkeypatch.setattr(rebuild, "PAGE", 2)
    assert rebuild.rebuild(clean_db, 32).outcomes_changed == 4
    corrections = all_events(db)[len(told) :]
    assert sorted(
        (e["data"]["dispatch_uuid"], e["data"]["previous_status"]) for e in corrections
    ) == [("d-0", "error"), ("d-1", "error"), ("d-3", "error"), ("d-4", "error")]


def test_a_later_commit_waits_for_an_earlier_position_to_be_visible(
    db: Database, clean_db: str
) -> None:
    """The feed's invariant, step by step: positions become visible in the order drawn."""
    for uuid in ("d-7", "d-8"):
        db.run(
            lambda conn, u=uuid: conn.execute(
                "INSERT INTO dispatch (dispatch_uuid, first_received_at, updated_at)"
                " VALUES (%s, now(), now())",
                (u,),
            )
        )
    first = psycopg.connect(clean_db, row_factory=dict_row)
    first.execute("SELECT 1 FROM dispatch WHERE dispatch_uuid = 'd-7' FOR NO KEY UPDATE")
    events.emit(first, [NewEvent("d-7", events.DECIDED)], NOW)  # drew position 1, not committed
    done = threading.Event()

    def second() -> None:
        db.run(lambda conn: events.emit(conn, [NewEvent("d-8", events.DECIDED)], NOW))
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    # Without the lock the second would commit position 2 now, and a reader
    # taking it would read on after 2: position 1 skipped for good.
    assert not done.wait(0.5)
    assert all_events(db) == []
    first.commit()
    thread.join(10)
    assert done.is_set()
    assert [e["data"]["dispatch_uuid"] for e in all_events(db)] == ["d-7", "d-8"]
    assert [e["position"] for e in all_events(db)] == [1, 2]
    first.close()


def test_a_consumer_of_the_feed_gets_every_event_once_under_concurrent_appliers(
    db: Database, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Commits that take their time after the events are made (a disk that
    # stalls, a busy server): the moment when a later transaction's events
    # could become visible first. Without the feed's lock this test fails.
    emit = events.emit

    def slow_to_commit(conn: Any, made: Any, now: datetime) -> None:
        emit(conn, made, now)
        if made:
            conn.execute("SELECT pg_sleep(%s)", (random.random() / 50,))

    monkeypatch.setattr(events, "emit", slow_to_commit)
    deliveries = workload(db)
    random.Random(5).shuffle(deliveries)
    for kind, payload in deliveries + deliveries[::3]:  # a third of them twice
        callback = read(KINDS[kind], json.dumps(payload).encode(), 32)
        capture(db, Delivery(callback, "application/json", NOW))
    seen: list[str] = []
    stop = threading.Event()

    def consume() -> None:
        after = 0
        while True:
            finished = stop.is_set()
            page = db.run(lambda conn, after=after: events.feed(conn, after, 7))
            seen.extend(e["id"] for e in page)
            if page:
                after = page[-1]["position"]
            elif finished:
                return

    def applier(seed: int) -> None:
        rng = random.Random(seed)
        while backlog.summary(db).waiting:
            apply_waiting(db, 32, batch=rng.randint(1, 6))
            time.sleep(rng.random() / 500)

    consumer = threading.Thread(target=consume)
    consumer.start()
    appliers = [threading.Thread(target=applier, args=(n,)) for n in range(4)]
    for thread in appliers:
        thread.start()
    for thread in appliers:
        thread.join(120)
    stop.set()
    consumer.join(30)
    recorded = [row[0] for row in query(clean_db, "SELECT event_id FROM workflow_event")]
    assert len(recorded) > 30
    assert sorted(seen) == sorted(recorded)
    assert len(set(seen)) == len(seen)
    # Each workflow's events come in its own order.
    by_workflow: dict[str, list[int]] = {}
    for e in db.run(lambda conn: events.feed(conn, 0, 10_000)):
        by_workflow.setdefault(e["data"]["dispatch_uuid"], []).append(e["data"]["sequence"])
    assert all(s == list(range(1, len(s) + 1)) for s in by_workflow.values())
