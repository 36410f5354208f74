"""Messages API failover beside Dispatch: received at one URL, correlated, decided, overdue."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time

from app.extensions import get_db
from app.read.overdue import list_overdue
from app.spec import messages_request
from app.spec.intake import CallbackKind, Rejection, kind_of, read
from tests import payloads
from tests.conftest import TABLES, post, query

# A workflow_id from one of Vonage's SDK fixtures: 55 characters, not a UUID.
W = "3TcNjguHxr2vcCZ9Ddsnq6tw8yQUpZ9rMHv9QXSxLan5ibMxqSzLdx9"
T0, T1, T2, T3 = (
    "2026-03-01T09:00:00Z",
    "2026-03-01T09:00:01Z",
    "2026-03-01T09:00:02Z",
    "2026-03-01T09:00:09Z",
)


def ms(uuid: str, status: str, at: str, channel: str, item: int, total: int = 2, **kw: Any):  # type: ignore[no-untyped-def]
    return payloads.messages_status(
        uuid, status, at, channel=channel, workflow=(W, item, total), **kw
    )


def send_all(client: FlaskClient, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        response = post(client, "status", body)
        assert response.status_code == 200, response.json


def workflow(client: FlaskClient, workflow_id: str = W) -> dict[str, Any]:
    response = client.get(f"/workflows/{workflow_id}")
    assert response.status_code == 200, response.json
    document: dict[str, Any] = response.json  # type: ignore[assignment]
    return document


RCS_REJECTED_SMS_DELIVERED = [
    ms("a1", "submitted", T0, "rcs", 1),
    ms("a1", "rejected", T1, "rcs", 1, error=(1300, "Not part of the provider network")),
    ms("a2", "submitted", T2, "sms", 2),
    ms("a2", "delivered", T3, "sms", 2, price="0.0333"),
]


# --- telling the kinds apart ---------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (payloads.messages_status("m", "delivered", T0), CallbackKind.MESSAGES_STATUS),
        (payloads.status("m", "delivered", T0), CallbackKind.MESSAGE_STATUS),
        # No parties at all: a top-level channel or workflow says Messages API.
        (
            {"message_uuid": "m", "status": "read", "timestamp": T0, "channel": "rcs"},
            CallbackKind.MESSAGES_STATUS,
        ),
        ({"message_uuid": "m", "status": "read", "timestamp": T0}, CallbackKind.MESSAGE_STATUS),
        (payloads.final_report("d", "completed", T0, []), CallbackKind.FINAL_REPORT),
    ],
)
def test_the_kind_is_told_by_shape(payload: dict[str, Any], expected: CallbackKind) -> None:
    for hint in CallbackKind:
        assert kind_of(payload, hint) is expected


@pytest.mark.parametrize("spelling", [payloads.NET_SPELLING, payloads.JAVA_SPELLING])
def test_both_spellings_of_the_workflow_object_are_read(spelling: tuple[str, str, str]) -> None:
    body = payloads.messages_status(
        "m",
        "rejected",
        T0,
        channel="viber_service",
        workflow=(W, 2, 3),
        spelling=spelling,
        error=("1300", "Not part of the provider network"),
    )
    import json

    event = read(CallbackKind.MESSAGE_STATUS, json.dumps(body).encode(), 32).event
    assert (event.dispatch_uuid, event.item_number, event.items_total) == (W, 2, 3)  # type: ignore[union-attr]
    assert event.channel == "viber_service"  # type: ignore[union-attr]
    assert event.error is not None and event.error.code == 1300  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channel": "viber_service_msg"}, "channel"),  # Dispatch's name is not the Messages API's
        ({"channel": "fax"}, "channel"),
        ({"client_ref": "x" * 101}, "client_ref"),
        ({"workflow": {"workflow_id": W, "items_number": "one"}}, "workflow"),
        ({"workflow": {"workflow_id": W, "items_number": "0"}}, "workflow"),
        ({"error": {"title": True}}, "error"),
        ({"usage": {"currency": "EUR", "price": 0.03}}, "usage"),
        ({"to": 447700900000}, "to"),
    ],
)
def test_a_bad_messages_status_is_refused_with_its_field(
    client: FlaskClient, change: dict[str, Any], field: str
) -> None:
    body = {**payloads.messages_status("m", "delivered", T0, workflow=(W, 1, 2)), **change}
    response = post(client, "status", body)
    assert response.status_code == 422, response.json
    assert field in response.json["errors"]  # type: ignore[index]
    assert "Messages API" in response.json["message"]  # type: ignore[index]


def test_an_odd_workflow_object_is_kept_rather_than_refused(client: FlaskClient) -> None:
    """Refusing would lose the callback for good (a 4xx is never retried)."""
    odd = [
        # Item 3 of 2: kept; the workflow has as many steps as its highest item.
        {
            **ms("o1", "delivered", T1, "sms", 1),
            "workflow": {"workflow_id": W, "items_number": "3", "items_total": "2"},
        },
        # Both spellings, disagreeing: the .NET SDK's stands.
        {
            **ms("o2", "rejected", T0, "rcs", 1),
            "workflow": {"workflow_id": W, "id": "other", "items_number": 1, "total_items": 9},
        },
        # No id at all: a plain message.
        {**ms("o3", "submitted", T0, "rcs", 1), "workflow": {"items_number": "1"}},
    ]
    send_all(client, odd)
    doc = workflow(client)
    assert (doc["status"], doc["winning_step"]) == ("completed", 3)
    assert [m["message_uuid"] for m in doc["messages"]] == ["o2", "o1"]
    plain = client.get("/messages/o3").json
    assert plain is not None and (plain["dispatch_uuid"], plain["item_number"]) == (None, None)
    assert client.get("/workflows/other").status_code == 404


def test_dispatch_statuses_still_refuse_the_messages_api_channels(client: FlaskClient) -> None:
    body = payloads.status("m", "delivered", T0, channel="rcs")
    response = post(client, "status", body)
    assert response.status_code == 422
    assert "to" in response.json["errors"]  # type: ignore[index]


# --- correlated and decided ----------------------------------------------------


def test_a_failover_workflow_is_decided_and_costed_from_its_items(
    client: FlaskClient, clean_db: str
) -> None:
    send_all(client, RCS_REJECTED_SMS_DELIVERED)
    doc = workflow(client)
    assert (doc["api"], doc["status"], doc["decided_by"], doc["winning_step"]) == (
        "messages",
        "completed",
        "callbacks",
        2,
    )
    assert doc["reported_status"] is None and doc["template"] is None
    assert doc["usage"] == {"EUR": "0.0333"}
    assert [(s["step"], s["channel"], s["outcome"], s["why"]) for s in doc["steps"]] == [
        (1, "rcs", "failed", "rejected (or undeliverable): the next item goes out"),
        (2, "sms", "succeeded", "delivered (read implies delivered)"),
    ]
    assert [(m["message_uuid"], m["item_number"], m["items_total"]) for m in doc["messages"]] == [
        ("a1", 1, 2),
        ("a2", 2, 2),
    ]
    assert query(clean_db, "SELECT api, winning_channel, computed_cost::text FROM dispatch") == [
        ("messages", "sms", "0.0333")
    ]


@pytest.mark.parametrize("seed", range(4))
def test_any_order_and_redelivery_give_the_same_workflow(app: Flask, seed: int) -> None:
    rng = random.Random(seed)
    bodies = [*RCS_REJECTED_SMS_DELIVERED, rng.choice(RCS_REJECTED_SMS_DELIVERED)]
    rng.shuffle(bodies)
    client = app.test_client()
    send_all(client, bodies)
    doc = workflow(client)
    assert (doc["status"], doc["winning_step"], doc["usage"]) == ("completed", 2, {"EUR": "0.0333"})
    assert doc["discrepancies"] == []


@pytest.mark.parametrize("failure", ["rejected", "undeliverable"])
def test_the_last_item_failing_ends_the_workflow_in_error(
    client: FlaskClient, failure: str
) -> None:
    send_all(client, [*RCS_REJECTED_SMS_DELIVERED[:3], ms("a2", failure, T3, "sms", 2)])
    doc = workflow(client)
    assert (doc["status"], doc["winning_step"]) == ("error", None)
    assert [s["outcome"] for s in doc["steps"]] == ["failed", "failed"]


def test_read_implies_delivered_and_an_item_seen_late_is_not_lost(client: FlaskClient) -> None:
    # Only item 2's read arrives: item 1 is missing, item 2 completed the workflow.
    send_all(client, [ms("a2", "read", T3, "whatsapp", 2, 3)])
    doc = workflow(client)
    assert (doc["status"], doc["winning_step"]) == ("completed", 2)
    assert [s["outcome"] for s in doc["steps"]] == ["missing", "succeeded", "not_reached"]


def test_a_rejected_item_with_no_next_one_is_pending_then_overdue(
    app: Flask, client: FlaskClient
) -> None:
    send_all(client, RCS_REJECTED_SMS_DELIVERED[:2])
    doc = workflow(client)
    assert (doc["status"], doc["current_step"]["step"], doc["due_at"]) == ("pending", 2, T1)
    db = get_db(app)
    at = datetime(2026, 3, 1, 9, 6, tzinfo=UTC)  # 6 minutes on: past a 5-minute grace
    found = list_overdue(db, at, 300, 10, 86_400)
    assert [(o.dispatch_uuid, o.kind, o.api) for o in found] == [
        (W, "failover_overdue", "messages")
    ]
    assert "item 2 was due when the item before it failed" in found[0].reason
    assert list_overdue(db, at, 600, 10, 86_400) == []


def test_an_item_without_an_outcome_is_overdue_after_the_timeout(
    app: Flask, client: FlaskClient
) -> None:
    send_all(client, RCS_REJECTED_SMS_DELIVERED[:3])
    doc = workflow(client)
    assert (doc["status"], doc["current_step"]["step"], doc["due_at"]) == ("pending", 2, None)
    assert doc["awaiting_since"] == T2
    db = get_db(app)
    day_later = datetime(2026, 3, 2, 9, 0, 3, tzinfo=UTC)
    found = list_overdue(db, day_later, 300, 10, 86_400)
    assert [(o.kind, o.current_step) for o in found] == [("outcome_overdue", 2)]
    assert found[0].reason.startswith("item 2 was submitted at 2026-03-01T09:00:02Z")
    assert list_overdue(db, day_later, 300, 10, 2 * 86_400) == []


def test_no_final_report_is_ever_overdue_for_a_messages_workflow(
    app: Flask, client: FlaskClient
) -> None:
    send_all(client, RCS_REJECTED_SMS_DELIVERED)
    far = datetime(2027, 1, 1, tzinfo=UTC)
    assert list_overdue(get_db(app), far, 0, 10, 1) == []


def test_a_status_without_a_workflow_is_a_plain_message(client: FlaskClient, clean_db: str) -> None:
    send_all(
        client, [payloads.messages_status("p1", "delivered", T0, channel="rcs", client_ref="r-1")]
    )
    response = client.get("/messages/p1")
    assert response.status_code == 200
    doc = response.json
    assert doc is not None
    assert (doc["dispatch_uuid"], doc["api"], doc["channel"], doc["client_ref"]) == (
        None,
        "messages",
        "rcs",
        "r-1",
    )
    assert query(clean_db, "SELECT count(*) FROM dispatch") == [(0,)]


def test_conflicting_positions_are_recorded_not_dropped(client: FlaskClient) -> None:
    send_all(client, [ms("a1", "submitted", T0, "rcs", 1), ms("a1", "rejected", T1, "rcs", 2, 3)])
    kinds = {d["kind"] for d in workflow(client)["discrepancies"]}
    assert {"item_number_conflict", "items_total_conflict"} <= kinds


def test_a_dispatch_status_naming_a_messages_workflow_is_a_conflict(client: FlaskClient) -> None:
    short = "wf-7"  # short enough for a Dispatch callback to name it
    first = payloads.messages_status("a1", "submitted", T0, channel="rcs", workflow=(short, 1, 2))
    send_all(client, [first, payloads.status("x1", "submitted", T1, dispatch_uuid=short)])
    doc = workflow(client, short)
    assert doc["api"] == "messages"  # whatever the order: the Messages API's items decide
    assert "api_conflict" in {d["kind"] for d in doc["discrepancies"]}


def test_every_order_of_a_three_item_workflow_decides_alike(app: Flask, clean_db: str) -> None:
    bodies = [
        ms("b1", "rejected", T0, "rcs", 1, 3),
        ms("b2", "rejected", T1, "whatsapp", 2, 3),
        ms("b3", "delivered", T3, "sms", 3, 3, price="0.05"),
    ]
    seen = set()
    for order in itertools.permutations(bodies):
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {TABLES}")
        send_all(app.test_client(), list(order))
        doc = workflow(app.test_client())
        seen.add((doc["status"], doc["winning_step"], tuple(s["outcome"] for s in doc["steps"])))
    assert seen == {("completed", 3, ("failed", "failed", "succeeded"))}


# --- definitions: a Messages failover request ----------------------------------

TOKEN = "an-api-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(clean_db: str) -> Any:
    from app import create_app

    app = create_app({"database_url": clean_db, "api_token": TOKEN})
    yield app.test_client()
    get_db(app).close()


def test_a_recorded_messages_definition_names_each_items_channel(api: FlaskClient) -> None:
    request = payloads.messages_failover_request("rcs", "whatsapp", "sms")
    created = api.put(f"/workflows/{W}/definition", json=request, headers=AUTH)
    assert created.status_code == 201, created.json
    assert created.json["api"] == "messages"  # type: ignore[index]
    assert [s["channel"] for s in created.json["steps"]] == ["rcs", "whatsapp", "sms"]  # type: ignore[index]
    send_all(api, [ms("c1", "rejected", T0, "rcs", 1, 3)])
    doc = workflow(api)
    assert (doc["status"], doc["decided_by"], doc["current_step"]["channel"]) == (
        "pending",
        "definition",
        "whatsapp",
    )
    dispatch = payloads.fixture("dispatch_request_failover.json")
    conflict = api.put(f"/workflows/{W}/definition", json=dispatch, headers=AUTH)
    assert conflict.status_code == 409
    assert "messages API" in conflict.json["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"channel": "viber_service_msg"}, "channel"),
        ({"message_type": "template"}, "message_type"),  # not on RCS
        ({"text": "x" * 3073}, "text"),
        ({"ttl": 10}, "ttl"),
        ({"ttl": 600.5}, "ttl"),
        ({"ttl": "600"}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"client_ref": "x" * 101}, "client_ref"),
        ({"failover": []}, "failover"),
        ({"webhook_version": "v2"}, "webhook_version"),
        ({"message_type": "image", "image": {"caption": "no url"}}, "image"),
    ],
)
def test_a_bad_messages_request_is_refused_field_by_field(
    api: FlaskClient, change: dict[str, Any], where: str
) -> None:
    request = {**payloads.messages_failover_request("rcs", "sms"), **change}
    response = api.put(f"/workflows/{W}/definition", json=request, headers=AUTH)
    assert response.status_code == 422, response.json
    assert where in response.json["errors"]  # type: ignore[index]
    assert "Messages API" in response.json["message"]  # type: ignore[index]


def test_a_failover_request_may_start_with_a_whatsapp_template(api: FlaskClient) -> None:
    # Its top-level `template` is the WhatsApp template, not Dispatch's "failover".
    first = {
        "channel": "whatsapp",
        "message_type": "template",
        "to": "447700900000",
        "from": "447700900001",
        "template": {"name": "verify:code", "parameters": ["1234"]},
        "whatsapp": {"policy": "deterministic", "locale": "en-GB"},
    }
    request = {**first, "failover": payloads.messages_failover_request("sms", "sms")["failover"]}
    created = api.put(f"/workflows/{W}/definition", json=request, headers=AUTH)
    assert created.status_code == 201, created.json
    assert created.json["api"] == "messages"  # type: ignore[index]
    assert [s["channel"] for s in created.json["steps"]] == ["whatsapp", "sms"]  # type: ignore[index]
    # Without its object, it is still checked as a Messages API request.
    untemplated = {**request, "template": None}
    refused = api.put(f"/workflows/{W}/definition", json=untemplated, headers=AUTH)
    assert refused.status_code == 422
    assert "Messages API" in refused.json["message"]  # type: ignore[index]
    # Dispatch's request names its template as a string: still Dispatch's.
    dispatch = {**payloads.fixture("dispatch_request_failover.json"), "channel": "sms"}
    assert not messages_request.is_messages_request(dispatch)
    assert not messages_request.is_messages_request({**request, "template": "failover"})


def test_a_ttl_is_a_json_integer_in_either_spelling(api: FlaskClient) -> None:
    # JSON has one kind of number: 600.0 is the integer 600 (as the published schema says).
    request = {**payloads.messages_failover_request("rcs", "sms"), "ttl": 600.0}
    response = api.put(f"/workflows/{W}/definition", json=request, headers=AUTH)
    assert response.status_code == 201, response.json


def test_a_failover_item_is_checked_as_a_whole_message(api: FlaskClient) -> None:
    request = payloads.messages_failover_request("rcs", "sms")
    request["failover"][0]["text"] = "x" * 1001
    del request["failover"][0]["from"]
    response = api.put(f"/workflows/{W}/definition", json=request, headers=AUTH)
    assert response.status_code == 422
    assert set(response.json["errors"]["failover"]["0"]) == {"from", "text"}  # type: ignore[index]


def test_a_dispatch_workflows_last_step_without_an_outcome_becomes_overdue(
    api: FlaskClient,
) -> None:
    dispatch = payloads.fixture("dispatch_request_failover.json")
    assert api.put("/workflows/d1/definition", json=dispatch, headers=AUTH).status_code == 201
    for uuid, state, at, channel in (
        ("d-m1", "rejected", T0, "messenger"),
        ("d-m2", "rejected", T1, "viber_service_msg"),
        ("d-m3", "submitted", T2, "sms"),
    ):
        body = payloads.status(uuid, state, at, channel=channel, dispatch_uuid="d1")
        assert post(api, "status", body).status_code == 200
    doc = workflow(api, "d1")
    assert (doc["status"], doc["current_step"]["step"], doc["awaiting_since"]) == ("pending", 3, T2)
    with freeze_time("2026-03-02T09:00:03Z"):
        listed = api.get("/workflows?overdue=true", headers=AUTH).json
    assert listed is not None
    assert [(w["dispatch_uuid"], w["kind"]) for w in listed["workflows"]] == [
        ("d1", "outcome_overdue")
    ]
    assert listed["workflows"][0]["reason"].startswith("step 3 was submitted")
    with freeze_time("2026-03-02T08:59:00Z"):
        assert api.get("/workflows?overdue=true", headers=AUTH).json["workflows"] == []  # type: ignore[index]


def test_rejections_name_the_kind_they_were_checked_as() -> None:
    with pytest.raises(Rejection) as caught:
        read(CallbackKind.FINAL_REPORT, b'{"message_uuid": "m", "to": "1", "status": "x"}', 32)
    assert caught.value.http_status == 422
    assert "Messages API" in caught.value.message


# --- one ledger: the analytics views ---------------------------------------------


def test_the_analysts_comparison_of_the_two_apis(client: FlaskClient, clean_db: str) -> None:
    """The example questions of sql/README.md that compare the APIs, on one of each."""
    from datetime import timedelta

    from app.model.times import iso
    from benchmarks import scale

    day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def at(seconds: int) -> str:
        return iso(day + timedelta(seconds=seconds))

    # Dispatch: viber_service_msg rejected, SMS delivered.
    dispatch = [
        payloads.status("d1", "rejected", at(0), channel="viber_service_msg", dispatch_uuid="dw"),
        payloads.status("d2", "delivered", at(5), channel="sms", dispatch_uuid="dw", price="0.05"),
    ]
    # Messages API: viber_service (the same channel, its own name) delivered at once.
    messages = [ms("n1", "delivered", at(3), "viber_service", 1, 2, price="0.02")]
    send_all(client, dispatch + messages)
    examples = dict(scale.examples())
    funnel = next(sql for q, sql in examples.items() if q.startswith("How do the two APIs"))
    per_workflow = next(sql for q, sql in examples.items() if q.startswith("And per workflow"))
    with psycopg.connect(clean_db) as conn:
        rows = conn.execute(funnel).fetchall()  # type: ignore[call-overload]
        assert [(r[0], r[1], r[3]) for r in rows] == [
            ("sms", 1, None),
            ("viber_service_msg", 1, 1),  # one name for both APIs' Viber
        ]
        viber = rows[1]
        assert (float(viber[2]), float(viber[4])) == (0.0, 1.0)
        outcomes = conn.execute(per_workflow).fetchall()  # type: ignore[call-overload]
    assert [(r[0], r[1], r[2], str(r[4])) for r in outcomes] == [
        ("dispatch", "pending", 1, "0.05"),  # no definition, no final report: undecided
        ("messages", "completed", 1, "0.02"),
    ]


def test_a_messages_workflows_last_item_is_left_out_of_the_failover_rate(
    client: FlaskClient, clean_db: str
) -> None:
    send_all(client, RCS_REJECTED_SMS_DELIVERED)
    assert query(
        clean_db,
        "SELECT api, step, channel, messages, failed_over FROM analytics.failover_rate"
        " ORDER BY step",
    ) == [("messages", 1, "rcs", 1, 1)]  # item 2 of 2 (sms) cannot fail over
    assert query(clean_db, "SELECT items_total FROM dispatch") == [(2,)]
