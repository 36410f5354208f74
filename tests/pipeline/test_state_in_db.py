"""Arrival order, concurrency and outages against the real database."""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.pipeline import decide
from app.read import readmodel
from app.spec.definitions import load_definition
from app.spec.intake import CallbackKind, read
from app.store.db import Database
from tests import payloads
from tests.conftest import deliver, post, query

KINDS = {"message-status": CallbackKind.MESSAGE_STATUS, "final-report": CallbackKind.FINAL_REPORT}


def renamed(deliveries: list[payloads.Delivery], tag: str) -> list[payloads.Delivery]:
    """The same workflow under other ids, so several runs can share one database."""
    text = json.dumps(deliveries).replace("d-1", f"d-{tag}").replace('"m-', f'"{tag}-m-')
    result: list[payloads.Delivery] = [(kind, payload) for kind, payload in json.loads(text)]
    return result


def normalized(document: dict[str, Any] | None, tag: str) -> str:
    assert document is not None
    return json.dumps(document).replace(f"d-{tag}", "d-1").replace(f'"{tag}-m-', '"m-')


def test_arrival_order_and_duplicates_do_not_change_the_stored_state(client: FlaskClient) -> None:
    base = payloads.three_message_workflow("d-1")
    rng = random.Random(20201)
    orders = [list(range(7)), list(reversed(range(7)))]
    orders += [rng.sample(range(7), 7) for _ in range(10)]
    documents = set()
    for n, order in enumerate(orders):
        tag = f"o{n}"
        deliveries = renamed(base, tag)
        # Every order also carries duplicates, re-serialized and exact.
        sequence = [deliveries[i] for i in order] + rng.choices(deliveries, k=3)
        for kind, payload in sequence:
            assert post(client, kind, payload).status_code == 200
        documents.add(normalized(client.get(f"/workflows/d-{tag}").json, tag))
    assert len(documents) == 1
    workflow = json.loads(documents.pop())
    assert workflow["status"] == "completed"
    assert workflow["usage"] == {"EUR": "0.0433"}
    assert workflow["reported_usage"] == {"EUR": "0.02"}
    assert [(m["channel"], m["status"]) for m in workflow["messages"]] == [
        ("messenger", "delivered"),
        ("viber_service_msg", "rejected"),
        ("sms", "delivered"),
    ]
    # The report's total misses the first steps' prices: recorded, with both sums.
    assert [(d["kind"], d["detail"]) for d in workflow["discrepancies"]] == [
        ("usage_mismatch", "final report total 0.02 EUR; computed 0.0433 EUR")
    ]


def test_final_reports_that_disagree_are_stored_the_same_in_any_order(
    client: FlaskClient,
) -> None:
    # A delivered message that one final report lists as rejected and another as read.
    base: list[payloads.Delivery] = [
        (
            "message-status",
            payloads.status("m-1", "delivered", "2020-01-01T14:00:05Z", dispatch_uuid="d-1"),
        ),
        (
            "final-report",
            payloads.final_report(
                "d-1",
                "error",
                "2020-01-01T14:05:00Z",
                [{"message_uuid": "m-1", "status": "rejected"}],
            ),
        ),
        (
            "final-report",
            payloads.final_report(
                "d-1",
                "completed",
                "2020-01-01T14:06:00Z",
                [{"message_uuid": "m-1", "status": "read"}],
            ),
        ),
    ]
    documents = set()
    for n, order in enumerate(itertools.permutations(range(3))):
        tag = f"r{n}"
        for kind, payload in (renamed(base, tag)[i] for i in order):
            assert post(client, kind, payload).status_code == 200
        documents.add(normalized(client.get(f"/workflows/d-{tag}").json, tag))
    assert len(documents) == 1
    kinds = {d["kind"] for d in json.loads(documents.pop())["discrepancies"]}
    assert {"status_contradiction", "final_report_conflict"} <= kinds


def _deliver_all(db: Database, deliveries: list[payloads.Delivery], threads: int) -> list[str]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    barrier = threading.Barrier(threads)

    def deliver_chunk(chunk: list[payloads.Delivery]) -> list[str]:
        barrier.wait()  # start together, so the transactions really overlap
        outcomes = []
        for kind, payload in chunk:
            callback = read(KINDS[kind], json.dumps(payload).encode(), 32)
            outcomes.append(deliver(db, callback, "application/json", now).outcome)
        return outcomes

    chunks = [deliveries[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return [o for result in pool.map(deliver_chunk, chunks) for o in result]


def big_workflow(dispatch_uuid: str, messages: int) -> list[payloads.Delivery]:
    """Many messages of one workflow, each with three statuses, and its final report."""
    deliveries: list[payloads.Delivery] = []
    listed = []
    for i in range(messages):
        uuid = f"{dispatch_uuid}-msg-{i:02d}"
        for second, status in ((0, "submitted"), (5, "delivered"), (9, "read")):
            deliveries.append(
                (
                    "message-status",
                    payloads.status(
                        uuid,
                        status,
                        f"2020-01-01T14:{i:02d}:{second:02d}Z",
                        channel="messenger",
                        dispatch_uuid=dispatch_uuid if status != "read" else None,
                        price="0.0101",
                    ),
                )
            )
        listed.append(
            {
                "message_uuid": uuid,
                "channel": "messenger",
                "status": "delivered",
                "usage": {"currency": "EUR", "price": "0.0101"},
            }
        )
    deliveries.append(
        (
            "final-report",
            payloads.final_report(
                dispatch_uuid, "completed", "2020-01-01T15:00:00Z", listed, price="0.3"
            ),
        )
    )
    return deliveries


def test_concurrent_deliveries_of_one_workflow_lose_no_update(db: Database) -> None:
    def document(dispatch_uuid: str) -> str:
        return json.dumps(readmodel.workflow(db, dispatch_uuid)).replace(dispatch_uuid, "D")

    rng = random.Random(5)
    _deliver_all(db, big_workflow("d-serial", 20), threads=1)
    expected = document("d-serial")

    for round_ in range(3):
        deliveries = big_workflow(f"d-par{round_}", 20)
        # Duplicates too, so that the same callback also races with itself.
        deliveries += rng.choices(deliveries, k=15)
        rng.shuffle(deliveries)
        outcomes = _deliver_all(db, deliveries, threads=8)
        assert outcomes.count("accepted") == 61
        assert outcomes.count("duplicate") == 15
        assert document(f"d-par{round_}") == expected

    workflow = json.loads(expected)
    assert workflow["usage"] == {"EUR": "0.2020"}
    assert {m["status"] for m in workflow["messages"]} == {"read"}
    assert all(len(m["statuses"]) == 3 for m in workflow["messages"])


def test_the_same_callback_racing_with_itself_is_stored_once(db: Database, clean_db: str) -> None:
    sample = [("message-status", payloads.fixture("message_status_sample.json"))] * 16
    outcomes = _deliver_all(db, sample, threads=16)
    assert sorted(outcomes) == ["accepted"] + ["duplicate"] * 15
    assert query(clean_db, "SELECT count(*), sum(deliveries) FROM raw_callback") == [(1, 16)]


@pytest.fixture
def offline_app(tmp_path: Any) -> Iterator[Flask]:
    """The service pointed at a PostgreSQL that is not there."""
    url = f"postgresql://postgres@/dispatch_ledger?host={tmp_path}&connect_timeout=1"
    application = create_app({"database_url": url, "db_pool_timeout": 0.5})
    yield application
    from app.extensions import get_db

    get_db(application).close()


def test_database_down_answers_503_with_retry_after(offline_app: Flask) -> None:
    client = offline_app.test_client()
    response = post(client, "message-status", payloads.fixture("message_status_sample.json"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json is not None
    assert set(response.json) == {"code", "status", "message", "errors"}
    assert client.get("/readyz").status_code == 503
    assert client.get("/workflows/x").status_code == 503
    assert client.get("/healthz").status_code == 200
    # Metrics still answer (without the backlog, which lives in the database).
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "dispatch_ledger_callbacks_total" in metrics.get_data(as_text=True)
    assert "dispatch_ledger_callbacks_waiting" not in metrics.get_data(as_text=True)


def test_bad_input_is_retried_while_the_database_is_down(offline_app: Flask) -> None:
    client = offline_app.test_client()
    # Keeping the reject fails: answered 400, Vonage would drop it for good
    # and no copy would be left; 503 makes it come again once it can be kept.
    response = post(client, "message-status", b"{broken")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.get_json()["message"].startswith("The callback is refused (400: ")


def test_workflows_that_claim_each_others_messages_concurrently_end_consistent(
    db: Database, clean_db: str
) -> None:
    # Statuses link each message to its owner, and the owner's final report
    # lists it; another workflow's report claims it too, and the next one's
    # as well, so that transactions lock workflows in crossing orders. The
    # deadlocks this can cause are retried; the end state must be as if the
    # deliveries had come one by one.
    from tests.store.test_analytics import FRESH_ROLLUPS, KEPT_ROLLUPS, assert_decisions_are_current

    now = datetime(2026, 3, 1, tzinfo=UTC)
    request = payloads.fixture("dispatch_request_failover.json")
    request["workflow"] = request["workflow"][-1:]  # one SMS step
    deliveries: list[payloads.Delivery] = []
    sets = 12
    for n in range(sets):
        owner, thief = f"{n:02d}-owner", f"{'0000' if n % 2 else 'zzzz'}-thief-{n:02d}"
        db.run(
            lambda conn, owner=owner: decide.record_definition(
                conn, owner, request, load_definition(request), "recorded", now
            )
        )
        mine, next_one = f"m-{n:02d}", f"m-{(n + 1) % sets:02d}"
        listed = [
            {"message_uuid": m, "href": m, "channel": "sms", "status": "delivered"}
            for m in (mine, next_one)
        ]
        at = f"2026-02-01T10:{n:02d}"
        deliveries += [
            ("message-status", payloads.status(mine, "submitted", f"{at}:00Z")),
            (
                "message-status",
                payloads.status(mine, "delivered", f"{at}:05Z", dispatch_uuid=owner, price="0.01"),
            ),
            ("final-report", payloads.final_report(owner, "completed", f"{at}:30Z", listed[:1])),
            ("final-report", payloads.final_report(thief, "completed", f"{at}:40Z", listed)),
        ]
    random.Random(11).shuffle(deliveries)
    outcomes = _deliver_all(db, deliveries, threads=8)
    assert outcomes == ["accepted"] * len(deliveries)
    kept = query(clean_db, KEPT_ROLLUPS)
    assert kept == query(clean_db, FRESH_ROLLUPS)
    assert sum(steps for _, steps, *_ in kept) == sets  # each message counted once
    assert_decisions_are_current(db, clean_db, now)
