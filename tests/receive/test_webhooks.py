"""The webhook endpoints against a real PostgreSQL: accepted, duplicated, refused and kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from app import create_app
from app.extensions import get_db
from app.pipeline import capture
from app.receive import rejects
from app.receive.auth import Credentials
from app.store.db import Database
from tests import payloads
from tests.conftest import post, query

SAMPLE_STATUS = payloads.fixture("message_status_sample.json")
SAMPLE_REPORT = payloads.fixture("final_report_sample.json")
UUID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
ENVELOPE_KEYS = {"code", "status", "message", "errors"}


def test_reference_status_sample_is_accepted_and_readable(client: FlaskClient) -> None:
    response = post(client, "message-status", SAMPLE_STATUS)
    assert response.status_code == 200
    assert response.json == {"status": "accepted", "callback_id": 1}

    message = client.get(f"/messages/{UUID}").json
    assert message is not None
    assert message["dispatch_uuid"] == UUID
    assert message["channel"] == "sms"
    assert message["status"] == "delivered"
    assert message["usage"] == {"EUR": "0.0333"}
    assert message["statuses"] == {"delivered": "2020-01-01T14:00:00Z"}
    assert message["error"] == {"code": 1300, "reason": "Not part of the provider network"}

    workflow = client.get(f"/workflows/{UUID}").json
    assert workflow is not None
    assert workflow["status"] == "pending"
    assert workflow["reported_status"] is None
    assert workflow["reported_usage"] is None
    assert workflow["usage"] == {"EUR": "0.0333"}


@pytest.mark.parametrize(
    "order", [("message-status", "final-report"), ("final-report", "message-status")]
)
def test_reference_samples_give_the_same_workflow_in_either_order(
    client: FlaskClient, order: tuple[str, str]
) -> None:
    samples = {"message-status": SAMPLE_STATUS, "final-report": SAMPLE_REPORT}
    for kind in order:
        assert post(client, kind, samples[kind]).status_code == 200
    workflow = client.get(f"/workflows/{UUID}").json
    assert workflow is not None
    assert set(workflow) >= {
        "dispatch_uuid",
        "template",
        "status",
        "reported_status",
        "usage",
        "reported_usage",
        "messages",
    }
    assert workflow["dispatch_uuid"] == UUID
    assert workflow["template"] == "failover"
    assert workflow["status"] == "completed"
    assert workflow["reported_status"] == "completed"
    # The same message priced 0.0333 in both callbacks counts once.
    assert workflow["usage"] == {"EUR": "0.0333"}
    assert workflow["reported_usage"] == {"EUR": "0.02"}
    [message] = workflow["messages"]
    assert message["status"] == "delivered"
    assert message["reported_status"] == "submitted"
    # The two samples name different channels for one message, and the
    # report's total is not the message's price: both kept, not resolved away.
    assert {d["kind"] for d in workflow["discrepancies"]} == {"channel_conflict", "usage_mismatch"}


def test_redelivery_answers_2xx_and_has_no_second_effect(
    client: FlaskClient, clean_db: str
) -> None:
    first = post(client, "message-status", SAMPLE_STATUS)
    again = post(client, "message-status", SAMPLE_STATUS)
    reserialized = post(
        client, "message-status", json.dumps(SAMPLE_STATUS, indent=2, sort_keys=True).encode()
    )
    assert first.json == {"status": "accepted", "callback_id": 1}
    assert again.status_code == reserialized.status_code == 200
    assert again.json == reserialized.json == {"status": "duplicate", "callback_id": 1}
    assert query(clean_db, "SELECT count(*), sum(deliveries) FROM raw_callback") == [(1, 3)]
    assert client.get(f"/workflows/{UUID}").json["usage"] == {"EUR": "0.0333"}  # type: ignore[index]


def test_raw_callback_keeps_the_exact_bytes(client: FlaskClient, clean_db: str) -> None:
    body = (
        b'{"message_uuid":"m-1", "status":"submitted",\n'
        b' "timestamp":"2020-01-01T14:00:00Z",\n "extra":{"kept":true}}'
    )
    assert post(client, "message-status", body).status_code == 200
    [(stored, payload, kind)] = query(clean_db, "SELECT body, payload, kind FROM raw_callback")
    assert bytes(stored) == body
    assert payload["extra"] == {"kept": True}
    assert kind == "message_status"


def test_the_jsonb_copy_is_the_document_posted(client: FlaskClient, clean_db: str) -> None:
    """Stored from the canonical text the dedup key hashes: every value as posted."""
    document = {
        "status": "submitted",
        "message_uuid": "m-\u00e9\u2713",
        "timestamp": "2020-01-01T14:00:00Z",
        "zeta": [1, 2.5, -0.0, 1e300, None, True, {"b": 1, "a": '"quoted" \\ \n'}],
        "alpha": "\ud83d\ude00",
    }
    body = json.dumps(document, indent=2).encode()  # keys unsorted, spaced, escaped
    assert post(client, "message-status", body).status_code == 200
    [(payload,)] = query(clean_db, "SELECT payload FROM raw_callback")
    # As jsonb reads the posted text itself (it has no -0, and 1e300 is a whole number).
    [(posted,)] = query(clean_db, "SELECT %s::jsonb", body.decode())
    assert payload == posted
    assert payload["message_uuid"] == "m-\u00e9\u2713" and payload["alpha"] == "\U0001f600"


BAD_DELIVERIES = [
    # (kind, body, content type, status, reason)
    ("message-status", b"{not json", "application/json", 400, "malformed_json"),
    ("final-report", b'{"a": NaN}', "application/json", 400, "malformed_json"),
    ("message-status", b'{"message_uuid": "x\\u0000"}', "application/json", 400, "malformed_json"),
    (
        "message-status",
        json.dumps(SAMPLE_STATUS).encode(),
        "text/plain",
        415,
        "unsupported_media_type",
    ),
    ("final-report", json.dumps(SAMPLE_REPORT).encode(), None, 415, "unsupported_media_type"),
    ("message-status", b'{"status": "lost"}', "application/json", 422, "schema_violation"),
    ("final-report", b"[]", "application/json", 422, "schema_violation"),
]


@pytest.mark.parametrize(("kind", "body", "ctype", "code", "reason"), BAD_DELIVERIES)
def test_bad_input_gets_its_status_and_is_kept(
    client: FlaskClient,
    clean_db: str,
    kind: str,
    body: bytes,
    ctype: str | None,
    code: int,
    reason: str,
) -> None:
    for attempt in (1, 2):
        response = post(client, kind, body, content_type=ctype)
        assert response.status_code == code
        assert response.is_json
        assert set(response.json) == ENVELOPE_KEYS  # type: ignore[arg-type]
        assert response.json["code"] == code  # type: ignore[index]
        rows = query(
            clean_db, "SELECT body, reason, http_status, attempts, kind FROM rejected_callback"
        )
        assert rows == [(body, reason, code, attempt, kind.replace("-", "_"))]
    assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(0,)]


def test_schema_violation_lists_field_level_errors(client: FlaskClient, clean_db: str) -> None:
    bad = {**SAMPLE_STATUS, "status": "opened", "usage": {"currency": "EUR", "price": "1,5"}}
    response = post(client, "message-status", bad)
    assert response.status_code == 422
    assert response.json["errors"] == {  # type: ignore[index]
        "status": ["Must be one of: submitted, delivered, read, rejected, undeliverable."],
        "usage": {"price": ['Not a decimal string such as "0.0333".']},
    }
    [(errors,)] = query(clean_db, "SELECT errors FROM rejected_callback")
    assert errors == response.json["errors"]  # type: ignore[index]


@pytest.mark.parametrize("excess", [1, 1000])
def test_too_large_body_is_refused_unread_and_kept(clean_db: str, excess: int) -> None:
    limit = 1024
    app = create_app({"database_url": clean_db, "max_body_bytes": limit})
    try:
        client = app.test_client()
        fits = json.dumps({**SAMPLE_STATUS, "pad": ""}).encode()
        fits = fits.replace(b'"pad": ""', b'"pad": "' + b"x" * (limit - len(fits)) + b'"')
        assert len(fits) == limit
        assert post(client, "message-status", fits).status_code == 200
        body = fits.replace(b'"pad": "', b'"pad": "' + b"x" * excess)
        response = post(client, "message-status", body)
        assert response.status_code == 413
        assert response.json["code"] == 413  # type: ignore[index]
        assert query(clean_db, "SELECT body, body_size, reason FROM rejected_callback") == [
            (None, len(body), "too_large")
        ]
    finally:
        get_db(app).close()


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/webhooks/message-status", 405),
        ("PUT", "/webhooks/final-report", 405),
        ("GET", "/nowhere", 404),
        ("GET", "/workflows/unknown-dispatch", 404),
        ("GET", "/messages/unknown-message", 404),
    ],
)
def test_routing_errors_use_the_json_envelope(
    client: FlaskClient, method: str, path: str, code: int
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == code
    assert response.is_json
    assert set(response.json) == ENVELOPE_KEYS  # type: ignore[arg-type]
    if code == 405:
        assert "POST" in response.headers["Allow"]


def test_a_failure_inside_the_service_stores_nothing_and_keeps_the_body(
    client: FlaskClient, clean_db: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: Any, deliveries: Any) -> Any:
        raise RuntimeError("bug in a transition")

    monkeypatch.setattr(capture, "capture_in", broken)
    # Answer as in production (tests otherwise let exceptions through).
    client.application.config["PROPAGATE_EXCEPTIONS"] = False
    response = post(client, "message-status", SAMPLE_STATUS)
    assert response.status_code == 500
    assert response.json["message"] == "The server failed to handle the request."  # type: ignore[index]
    assert "bug in a transition" not in response.get_data(as_text=True)
    assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(0,)]
    assert query(clean_db, "SELECT count(*) FROM message") == [(0,)]
    assert query(clean_db, "SELECT reason, http_status FROM rejected_callback") == [
        ("internal_error", 500)
    ]

    # Once fixed, the kept body is recovered by reprocessing.
    monkeypatch.undo()
    summary = rejects.reprocess(db, Credentials(), 32, _now())
    assert (summary.recovered, summary.still_rejected) == (1, 0)
    assert client.get(f"/messages/{UUID}").json["status"] == "delivered"  # type: ignore[index]


def test_a_failure_after_the_capture_committed_is_retried_as_a_duplicate(
    client: FlaskClient, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = capture.capture_in

    def broken(conn: Any, deliveries: Any) -> Any:
        real(conn, deliveries)  # one statement: committed as it answers
        raise RuntimeError("bug after storing")

    monkeypatch.setattr(capture, "capture_in", broken)
    client.application.config["PROPAGATE_EXCEPTIONS"] = False
    assert post(client, "message-status", SAMPLE_STATUS).status_code == 500
    monkeypatch.undo()
    # Vonage retries a 500: the retry finds the stored copy, which is applied once.
    retried = post(client, "message-status", SAMPLE_STATUS)
    assert retried.status_code == 200
    assert retried.json["status"] == "duplicate"  # type: ignore[index]
    assert query(clean_db, "SELECT count(*), sum(deliveries) FROM raw_callback") == [(1, 2)]
    found = client.get(f"/messages/{UUID}?wait=5").json
    assert (found["status"], found["pending_callbacks"]) == ("delivered", 0)  # type: ignore[index]


def _now() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


def test_reprocessing_recovers_what_todays_checks_accept(
    client: FlaskClient, clean_db: str, db: Database
) -> None:
    # Refused for its media type, but a valid callback: recovered.
    post(client, "message-status", SAMPLE_STATUS, content_type="text/plain")
    # Still invalid: stays rejected, with the attempt counted.
    post(client, "final-report", {"dispatch_uuid": "d"})
    # Refused in the past by a stricter schema (as if since fixed): recovered.
    old = json.dumps(payloads.status("m-old", "read", "2020-01-01T15:00:00Z")).encode()
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rejected_callback (kind, body, body_sha256, body_size, http_status,"
            " reason, message, first_received_at, last_received_at)"
            " VALUES ('message_status', %s, sha256(%s), %s, 422, 'schema_violation',"
            " 'old schema', now(), now())",
            (old, old, len(old)),
        )
    # Refused once for its media type, then delivered properly: a duplicate now.
    late = payloads.status("m-late", "submitted", "2020-01-01T15:00:00Z")
    post(client, "message-status", late, content_type="text/plain")
    post(client, "message-status", late)

    summary = rejects.reprocess(db, Credentials(), 32, _now())
    assert (summary.recovered, summary.duplicates, summary.still_rejected) == (2, 1, 1)
    # Nothing left to do: a second run touches only what still fails.
    again = rejects.reprocess(db, Credentials(), 32, _now())
    assert (again.recovered, again.duplicates, again.still_rejected) == (0, 0, 1)

    rows = query(
        clean_db,
        "SELECT reason, resolved_at IS NOT NULL, raw_callback_id IS NOT NULL, reprocess_attempts"
        " FROM rejected_callback ORDER BY id",
    )
    assert rows == [
        ("unsupported_media_type", True, True, 1),
        ("schema_violation", False, False, 2),
        ("schema_violation", True, True, 1),
        ("unsupported_media_type", True, True, 1),
    ]
    assert client.get("/messages/m-old").json["status"] == "read"  # type: ignore[index]
    assert client.get(f"/messages/{UUID}").json["status"] == "delivered"  # type: ignore[index]


def test_statuses_after_the_final_report_still_update_message_and_usage(
    client: FlaskClient,
) -> None:
    deliveries = payloads.three_message_workflow("d-late")
    report = deliveries[-1]
    post(client, report[0], report[1])
    before = client.get("/workflows/d-late").json
    assert before is not None
    assert before["status"] == "completed"
    # Messenger's price was in the report's message list; SMS's too.
    assert before["usage"] == {"EUR": "0.0433"}
    assert {m["message_uuid"]: m["statuses"] for m in before["messages"]} == {
        "m-1-messenger": {},
        "m-2-viber": {},
        "m-3-sms": {},
    }
    for kind, payload in deliveries[:-1]:
        assert post(client, kind, payload).status_code == 200
    after = client.get("/workflows/d-late").json
    assert after is not None
    assert [m["message_uuid"] for m in after["messages"]] == [
        "m-1-messenger",
        "m-2-viber",
        "m-3-sms",
    ]
    assert after["messages"][0]["statuses"] == {
        "submitted": "2020-01-01T14:00:00Z",
        "delivered": "2020-01-01T14:00:05Z",
    }
    assert after["usage"] == {"EUR": "0.0433"}
    assert after["reported_usage"] == {"EUR": "0.02"}


def test_a_late_delivery_missing_from_the_report_total_is_in_the_computed_usage(
    client: FlaskClient,
) -> None:
    post(
        client,
        "final-report",
        payloads.final_report(
            "d-1",
            "completed",
            "2020-01-01T14:10:10Z",
            [
                {
                    "message_uuid": "sms-1",
                    "channel": "sms",
                    "status": "delivered",
                    "usage": {"currency": "EUR", "price": "0.02"},
                }
            ],
            price="0.02",
        ),
    )
    # The first step's message is delivered (and priced) after the final report.
    post(
        client,
        "message-status",
        payloads.status(
            "wa-1",
            "delivered",
            "2020-01-01T14:12:00Z",
            channel="whatsapp",
            dispatch_uuid="d-1",
            price="0.0146",
        ),
    )
    workflow = client.get("/workflows/d-1").json
    assert workflow is not None
    assert workflow["usage"] == {"EUR": "0.0346"}
    assert workflow["reported_usage"] == {"EUR": "0.02"}


STATUS_URLS = ["status", "message-status", "final-report"]


@pytest.mark.parametrize("url", STATUS_URLS)
def test_every_status_url_takes_both_kinds_told_apart_by_shape(
    client: FlaskClient, clean_db: str, url: str
) -> None:
    """Dispatch sends both kinds to the application's status URL: none may be refused."""
    assert post(client, url, SAMPLE_STATUS).json == {"status": "accepted", "callback_id": 1}
    report = payloads.fixture("final_report_sample.json")
    assert post(client, url, report).json == {"status": "accepted", "callback_id": 2}
    kinds = query(clean_db, "SELECT kind FROM raw_callback ORDER BY id")
    assert kinds == [("message_status",), ("final_report",)]
    workflow = client.get(f"/workflows/{report['dispatch_uuid']}").json
    assert workflow is not None and workflow["reported_status"] == "completed"


@pytest.mark.parametrize("url", STATUS_URLS)
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "delivered"}, "message_uuid"),
        ([SAMPLE_STATUS], "_schema"),
        ({**SAMPLE_STATUS, "dispatch_uuid": "d", "template": "failover"}, "_schema"),
    ],
)
def test_a_body_of_neither_shape_is_refused_and_kept(
    client: FlaskClient, clean_db: str, url: str, body: Any, field: str
) -> None:
    response = post(client, url, body)
    assert response.status_code == 422
    if field == "message_uuid" and url == "final-report":
        field = "dispatch_uuid"  # the URL's hint says which fields a shapeless body misses
    assert response.json is not None and field in response.json["errors"]
    assert query(clean_db, "SELECT reason FROM rejected_callback") == [("schema_violation",)]
    assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(0,)]
