"""A giant workflow hurts no one: a claim past ten items makes no step, deciding reads only the
messages that can hold a step, and a workflow's document pages its messages."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
from flask.testing import FlaskClient
from psycopg.rows import dict_row

from app.model.failover import MOST_STEPS, evaluate
from app.model.state import MAX_ITEMS, Api, MessageState, computed_usage
from app.pipeline.capture import Delivery, capture
from app.spec import definitions
from app.spec.definitions import load_definition
from app.spec.intake import CallbackKind, read
from app.store import storage
from app.store.db import Database
from tests import payloads
from tests.conftest import post, settle
from tests.pipeline.test_state_in_db import KINDS

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CHANNELS = ("sms", "whatsapp", "rcs")


def capture_all(db: Database, deliveries: list[payloads.Delivery]) -> None:
    """Capture callbacks as the request path does, then apply them all."""
    for kind, body in deliveries:
        kind_of = CallbackKind.MESSAGES_STATUS if "channel" in body else KINDS[kind]
        callback = read(kind_of, json.dumps(body).encode(), 32)
        capture(db, Delivery(callback, "application/json", NOW))
    settle(db, timeout=120)


def test_a_claim_past_ten_items_is_kept_recorded_and_makes_no_step(client: FlaskClient) -> None:
    # One 300-byte status made a workflow of 10,000 steps.
    claim = payloads.messages_status(
        "m-claim", "submitted", "2020-01-01T14:00:00Z", workflow=("wf-claim", 10_000, 10_000)
    )
    assert post(client, "status", claim).status_code == 200  # kept: a 4xx would lose it
    workflow = client.get("/workflows/wf-claim").json
    assert workflow is not None
    assert workflow["steps"] is None and workflow["decided_by"] is None
    [found] = [d for d in workflow["discrepancies"] if d["kind"] == "items_beyond_limit"]
    assert found["subject_id"] == "m-claim" and "at most 10 items" in found["detail"]
    # Beside real items, the claim still makes none: the workflow has the two they say.
    for item, status in ((1, "rejected"), (2, "delivered")):
        body = payloads.messages_status(
            f"m-{item}", status, f"2020-01-01T14:00:0{item}Z", workflow=("wf-claim", item, 2)
        )
        assert post(client, "status", body).status_code == 200
    workflow = client.get("/workflows/wf-claim").json
    assert workflow is not None and len(workflow["steps"]) == 2
    assert (workflow["status"], workflow["winning_step"]) == ("completed", 2)
    assert len(json.dumps(workflow)) < 10_000


def giant(workflow_id: str, messages: int) -> list[payloads.Delivery]:
    """A Messages API workflow with `messages` messages, priced, on three channels, items 1-3."""
    deliveries: list[payloads.Delivery] = []
    for n in range(messages):
        body = payloads.messages_status(
            f"{workflow_id}-m{n:05d}",
            "delivered" if n % 7 else "rejected",
            f"2020-01-01T{10 + n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
            channel=CHANNELS[n % 3],
            workflow=(workflow_id, n % 3 + 1, 3),
            price="0.0001" if n % 2 else "0.0333",
        )
        deliveries.append(("message-status", body))
    return deliveries


def test_a_workflow_of_5000_messages_reads_in_bounded_pages(
    client: FlaskClient, db: Database, clean_db: str
) -> None:
    capture_all(db, giant("wf-giant", 5000))
    answer = client.get("/workflows/wf-giant")
    assert answer.status_code == 200
    document = answer.json
    assert document is not None
    assert len(answer.get_data()) < 1_000_000
    assert document["messages_total"] == 5000 and len(document["messages"]) == 100
    # Exact, over every message (2,500 of each price), not only those on the page.
    exact = 2500 * Decimal("0.0001") + 2500 * Decimal("0.0333")
    assert document["usage"] == {"EUR": storage.format_decimal(exact)}
    # Every message once, in the order sent, page after page.
    seen = [m["message_uuid"] for m in document["messages"]]
    following = document["messages_next"]
    while following:
        page = client.get(following).json
        assert page is not None and page["messages_total"] == 5000
        seen += [m["message_uuid"] for m in page["messages"]]
        following = page["next"]
    assert seen == [f"wf-giant-m{n:05d}" for n in range(5000)]
    assert len(document["discrepancies"]) <= 100
    # Its decision: item 1's first message was rejected, item 2's delivered.
    assert (document["status"], document["winning_step"], len(document["steps"])) == (
        "completed",
        2,
        3,
    )
    del clean_db


def test_a_page_after_a_message_of_another_workflow_is_not_found(client: FlaskClient) -> None:
    for kind, body in payloads.three_message_workflow("d-1"):
        post(client, kind, body)
    assert client.get("/workflows/d-1/messages?limit=2").json["next"] is not None
    assert client.get("/workflows/d-1/messages?after=nothing").status_code == 404
    # Ids no callback can carry, refused before the database (a NUL made it 500).
    for after in ("%00", "a%00b", "x" * 201):
        answer = client.get(f"/workflows/d-1/messages?after={after}")
        assert answer.status_code == 404 and answer.json is not None, after
    assert client.get("/workflows/d-1/messages?limit=0").status_code == 400
    assert client.get("/workflows/d-1/messages?limit=1001").status_code == 400
    assert client.get("/workflows/nothing/messages").status_code == 404


def all_messages(clean_db: str, workflow: str) -> list[MessageState]:
    """Every message of a workflow, read plainly."""
    with psycopg.connect(clean_db, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM message WHERE dispatch_uuid = %s", (workflow,))
        return [storage.message_from_row(row) for row in rows.fetchall()]


def test_deciding_reads_only_the_messages_that_can_hold_a_step_and_decides_the_same(
    db: Database, clean_db: str
) -> None:
    """Random workflows, definitions and item claims (ties in time too): deciding from the
    messages storage.workflows_messages reads, with the totals of all, gives the decision and the
    cost that all the messages give."""
    rng = random.Random(11)
    deliveries: list[payloads.Delivery] = []
    for w in range(12):
        for n in range(rng.randint(1, 40)):
            item = rng.choice([None, None, 1, 2, 3, 4, 12])
            body = payloads.messages_status(
                f"r{w}-{n}",
                rng.choice(["submitted", "delivered", "read", "rejected"]),
                f"2020-01-01T14:00:{rng.randint(0, 20):02d}Z",
                channel=rng.choice(CHANNELS),
                workflow=(f"r{w}", item, rng.choice([3, 4, 12])) if item else None,
                price=rng.choice([None, "0.01", "0.333"]),
            )
            if item is None:
                body["workflow"] = {"workflow_id": f"r{w}"}
            deliveries.append(("message-status", body))
    capture_all(db, deliveries)
    definition = load_definition(payloads.fixture("dispatch_request_failover.json"))
    for w in range(12):
        workflow = f"r{w}"
        candidates, totals = db.run(
            lambda conn, u=workflow: storage.workflows_messages(conn, [u])[u]
        )
        everything = all_messages(clean_db, workflow)
        assert totals.messages == len(everything)
        assert dict(totals.usage) == computed_usage(everything)
        assert len(candidates) <= MOST_STEPS * (len(CHANNELS) + 1)
        for given in (None, definition):
            read_only, _ = evaluate(given, candidates, None, Api.MESSAGES, totals)
            whole, _ = evaluate(given, everything, None, Api.MESSAGES)
            assert read_only == whole, workflow


def test_deciding_a_giant_workflow_reads_a_bounded_number_of_messages(db: Database) -> None:
    capture_all(db, giant("wf-big", 3000))
    candidates, totals = db.run(lambda conn: storage.workflows_messages(conn, ["wf-big"])["wf-big"])
    assert totals.messages == 3000
    # The first message of each item number: all a Messages API workflow's steps can hold.
    assert len(candidates) == 3


def test_no_definition_has_more_steps_than_deciding_reads() -> None:
    # Deciding reads the first MOST_STEPS messages of each channel and item:
    # a definition with more steps could need one it did not read.
    assert definitions.MAX_STEPS <= MOST_STEPS
    assert MAX_ITEMS <= MOST_STEPS
