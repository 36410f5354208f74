"""Definitions, decisions, overdue workflows and reconciliation, over HTTP, with frozen time."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time

from app import create_app
from app.cli import main
from app.extensions import get_db
from tests import payloads
from tests.conftest import post, query

TOKEN = "an-api-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUEST = payloads.fixture(
    "dispatch_request_failover.json"
)  # messenger read 600 s, viber 300 s, sms
D = "d-flow"


@pytest.fixture
def api_app(clean_db: str) -> Iterator[Flask]:
    app = create_app({"database_url": clean_db, "api_token": TOKEN})
    yield app
    get_db(app).close()


@pytest.fixture
def api(api_app: Flask) -> FlaskClient:
    return api_app.test_client()


def define(api: FlaskClient, dispatch_uuid: str = D, body: Any = REQUEST) -> Any:
    return api.put(f"/workflows/{dispatch_uuid}/definition", json=body, headers=AUTH)


def status(api: FlaskClient, uuid: str, state: str, at: str, channel: str, **kw: Any) -> None:
    payload = payloads.status(uuid, state, at, channel=channel, dispatch_uuid=D, **kw)
    assert post(api, "message-status", payload).status_code == 200


def workflow(api: FlaskClient, dispatch_uuid: str = D) -> dict[str, Any]:
    response = api.get(f"/workflows/{dispatch_uuid}")
    assert response.status_code == 200
    document: dict[str, Any] = response.json  # type: ignore[assignment]
    return document


# --- definitions -------------------------------------------------------------


def test_a_definition_is_recorded_replaced_and_read_back(api: FlaskClient) -> None:
    first = define(api)
    assert first.status_code == 201
    assert first.json["source"] == "recorded"  # type: ignore[index]
    assert [s["channel"] for s in first.json["steps"]] == [  # type: ignore[index]
        "messenger",
        "viber_service_msg",
        "sms",
    ]
    assert define(api).status_code == 200
    stored = api.get(f"/workflows/{D}/definition", headers=AUTH).json
    assert stored is not None and stored["request"] == REQUEST
    assert workflow(api)["definition"] == "recorded"


def test_writing_needs_the_api_token(api: FlaskClient, clean_db: str) -> None:
    assert api.put(f"/workflows/{D}/definition", json=REQUEST).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert api.put(f"/workflows/{D}/definition", json=REQUEST, headers=wrong).status_code == 401
    assert define(api).status_code == 201
    # Reading one back too: it holds the recipients' numbers and the texts.
    for headers in ({}, wrong):
        response = api.get(f"/workflows/{D}/definition", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "447700900000" not in response.get_data(as_text=True)
    # The public read API shows the steps, never the numbers or the texts.
    public = api.get(f"/workflows/{D}").get_data(as_text=True)
    assert '"steps"' in public and "447700900000" not in public and "shipped" not in public
    off = create_app({"database_url": clean_db})  # no API_TOKEN: writes are off
    try:
        response = off.test_client().put(f"/workflows/{D}/definition", json=REQUEST, headers=AUTH)
        assert response.status_code == 403
        assert "API_TOKEN" in response.json["message"]  # type: ignore[index]
    finally:
        get_db(off).close()


def test_an_invalid_definition_lists_every_problem(api: FlaskClient, clean_db: str) -> None:
    bad = copy.deepcopy(REQUEST)
    bad["template"] = "cascade"
    bad["workflow"][0]["failover"]["expiry_time"] = 14
    bad["workflow"][0]["to"].pop("id")
    bad["workflow"][1]["message"]["content"]["text"] = "x" * 1001
    bad["workflow"][2]["failover"] = {"expiry_time": 60, "condition_status": "read"}
    response = define(api, body=bad)
    assert response.status_code == 422
    errors = response.json["errors"]  # type: ignore[index]
    assert set(errors) == {"template", "workflow"}
    assert set(errors["workflow"]) == {"0", "1", "2"}
    assert "expiry_time" in errors["workflow"]["0"]["failover"]
    assert errors["workflow"]["0"]["to"]["id"] == ["Required for messenger."]
    assert "limited to 1000" in errors["workflow"]["1"]["message"]["content"]["text"][0]
    assert errors["workflow"]["2"]["failover"] == {
        "_schema": ["The last message must not have a failover."],
        "condition_status": ["SMS can only fail over on delivered."],
    }
    assert query(clean_db, "SELECT count(*) FROM workflow_definition") == [(0,)]


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [(b"{", "application/json", 400), (json.dumps(REQUEST).encode(), "text/plain", 415)],
)
def test_definition_bodies_get_the_usual_errors(
    api: FlaskClient, body: bytes, ctype: str, code: int
) -> None:
    response = api.put(
        f"/workflows/{D}/definition", data=body, headers={**AUTH, "Content-Type": ctype}
    )
    assert response.status_code == code


# --- decisions ---------------------------------------------------------------

T = "2026-03-01T09:00:00.000Z"  # step 1 submitted; its deadline is 09:10:00


@pytest.mark.parametrize(
    ("read_at", "expected"),
    [
        ("2026-03-01T09:09:59.999Z", "completed"),
        ("2026-03-01T09:10:00.000Z", "completed"),  # at the deadline: within
        ("2026-03-01T09:10:00.001Z", "pending"),
    ],
)
def test_the_first_steps_window_decides(api: FlaskClient, read_at: str, expected: str) -> None:
    define(api)
    status(api, "m1", "submitted", T, "messenger")
    status(api, "m1", "read", read_at, "messenger")
    doc = workflow(api)
    assert (doc["status"], doc["decided_by"]) == (expected, "definition")
    if expected == "completed":
        assert doc["winning_step"] == 1
        assert doc["current_step"] is None and doc["deadline"] is None
    else:
        # Failed over: step 2 (Viber) is due since step 1's deadline.
        assert doc["current_step"]["step"] == 2
        assert doc["current_step"]["channel"] == "viber_service_msg"
        assert doc["deadline"] is None  # Viber has not been sent yet
        assert doc["due_at"] == "2026-03-01T09:10:00Z"
        assert [s["outcome"] for s in doc["steps"]] == ["expired", "pending", "not_reached"]


def test_pending_shows_the_current_step_and_its_deadline(api: FlaskClient) -> None:
    define(api)
    status(api, "m1", "submitted", T, "messenger")
    status(api, "m1", "delivered", "2026-03-01T09:00:03Z", "messenger")  # not yet read
    doc = workflow(api)
    assert doc["status"] == "pending"
    assert doc["current_step"]["step"] == 1
    assert doc["current_step"]["condition_status"] == "read"
    assert doc["deadline"] == "2026-03-01T09:10:00Z"


def test_immediate_failure_then_last_step_failure_is_an_error(api: FlaskClient) -> None:
    define(api)
    status(api, "m1", "submitted", T, "messenger")
    status(api, "m1", "rejected", "2026-03-01T09:00:01Z", "messenger", error=(1300, "x"))
    doc = workflow(api)
    assert (doc["current_step"]["step"], doc["due_at"]) == (2, "2026-03-01T09:00:01Z")
    status(api, "m2", "submitted", "2026-03-01T09:00:02Z", "viber_service_msg")
    status(api, "m2", "undeliverable", "2026-03-01T09:00:04Z", "viber_service_msg")
    status(api, "m3", "submitted", "2026-03-01T09:00:05Z", "sms")
    status(api, "m3", "rejected", "2026-03-01T09:00:06Z", "sms")
    doc = workflow(api)
    assert (doc["status"], doc["decided_by"], doc["winning_step"]) == ("error", "definition", None)
    assert [s["outcome"] for s in doc["steps"]] == ["failed", "failed", "failed"]


def test_a_definition_recorded_after_the_callbacks_decides_at_once(api: FlaskClient) -> None:
    status(api, "m1", "submitted", T, "messenger")
    status(api, "m1", "read", "2026-03-01T09:01:00Z", "messenger")
    before = workflow(api)
    assert (before["status"], before["decided_by"], before["steps"]) == ("pending", None, None)
    define(api)
    after = workflow(api)
    assert (after["status"], after["decided_by"], after["winning_step"]) == (
        "completed",
        "definition",
        1,
    )


def final_report(
    status_: str, at: str, price: str | None, listed: dict[str, str]
) -> dict[str, Any]:
    """A final report listing {message_uuid: its status as Dispatch saw it}."""
    channels = {"m1": "messenger", "m2": "viber_service_msg", "m3": "sms"}
    return payloads.final_report(
        D,
        status_,
        at,
        [{"message_uuid": m, "channel": channels[m], "status": s} for m, s in listed.items()],
        price=price,
    )


def test_a_final_report_that_disagrees_is_recorded_with_its_reason(
    api: FlaskClient, clean_db: str
) -> None:
    define(api)
    status(api, "m1", "submitted", T, "messenger", price="0.0100")
    status(api, "m1", "read", "2026-03-01T09:02:00Z", "messenger", price="0.0100")
    post(
        api, "final-report", final_report("error", "2026-03-01T09:02:01Z", "0.0100", {"m1": "read"})
    )
    doc = workflow(api)
    assert (doc["status"], doc["decided_by"], doc["reported_status"]) == (
        "completed",
        "definition",
        "error",
    )
    [mismatch] = [d for d in doc["discrepancies"] if d["kind"] == "status_mismatch"]
    assert mismatch["detail"] == (
        "final report says error; by the definition the workflow is completed "
        "(step 1 (messenger) reached read in time)"
    )
    assert query(clean_db, "SELECT kind FROM reconciliation") == [("status_mismatch",)]


def test_late_events_after_the_final_report_update_usage_and_the_reason(
    api: FlaskClient,
) -> None:
    define(api)
    status(api, "m1", "submitted", T, "messenger", price="0.0100")
    status(api, "m1", "rejected", "2026-03-01T09:00:01Z", "messenger", price="0.0100")
    status(api, "m2", "submitted", "2026-03-01T09:00:02Z", "viber_service_msg")
    status(api, "m3", "submitted", "2026-03-01T09:05:02Z", "sms", price="0.0333")
    status(api, "m3", "delivered", "2026-03-01T09:05:09Z", "sms", price="0.0333")
    post(
        api,
        "final-report",
        final_report(
            "completed",
            "2026-03-01T09:05:10Z",
            "0.0433",
            {"m1": "rejected", "m2": "submitted", "m3": "delivered"},
        ),
    )
    assert workflow(api)["discrepancies"] == []  # the report adds up so far

    # Viber, which Dispatch had given up on, is delivered after the report.
    status(api, "m2", "delivered", "2026-03-01T09:07:00Z", "viber_service_msg", price="0.0200")
    doc = workflow(api)
    assert (doc["status"], doc["winning_step"]) == ("completed", 3)
    assert doc["usage"] == {"EUR": "0.0633"}
    assert doc["reported_usage"] == {"EUR": "0.0433"}
    [mismatch] = doc["discrepancies"]
    assert mismatch["kind"] == "usage_mismatch"
    assert mismatch["detail"].startswith("final report total 0.0433 EUR; computed 0.0633 EUR")
    assert (
        "message m2 (viber_service_msg, 0.02 EUR) has events after the final report"
        in (mismatch["detail"])
    )


def test_without_a_definition_the_decision_says_unknown(api: FlaskClient) -> None:
    status(api, "m1", "submitted", T, "messenger")
    doc = workflow(api)
    assert (doc["status"], doc["decided_by"], doc["current_step"]) == ("pending", None, None)
    post(
        api, "final-report", final_report("completed", "2026-03-01T09:01:00Z", None, {"m1": "read"})
    )
    assert (workflow(api)["status"], workflow(api)["decided_by"]) == ("completed", "final_report")


# --- overdue -------------------------------------------------------------------


def overdue_ids(api: FlaskClient, **params: Any) -> list[tuple[str, str]]:
    response = api.get("/workflows", query_string={"overdue": "true", **params})
    assert response.status_code == 200
    return [(w["dispatch_uuid"], w["kind"]) for w in response.json["workflows"]]  # type: ignore[index]


@pytest.mark.parametrize(
    ("now", "listed"),
    [
        ("2026-03-01T09:14:59.999Z", False),  # deadline 09:10 + 300 s grace, just before
        ("2026-03-01T09:15:00Z", False),  # at the end of the grace
        ("2026-03-01T09:15:00.001Z", True),  # just after: failover is overdue
    ],
)
def test_a_failover_that_does_not_happen_is_overdue_after_the_grace(
    api: FlaskClient, now: str, listed: bool
) -> None:
    define(api)
    status(api, "m1", "submitted", T, "messenger")
    with freeze_time(now):
        assert overdue_ids(api) == ([(D, "failover_overdue")] if listed else [])
    # Once Viber shows up, nothing is overdue any more.
    status(api, "m2", "submitted", "2026-03-01T09:10:01Z", "viber_service_msg")
    with freeze_time(now):
        assert overdue_ids(api) == []


def test_a_missing_final_report_is_overdue_after_the_grace(api: FlaskClient) -> None:
    define(api)
    status(api, "m1", "submitted", T, "messenger")
    status(api, "m1", "read", "2026-03-01T09:01:00Z", "messenger")  # completed at 09:01
    with freeze_time("2026-03-01T09:06:00Z"):
        assert overdue_ids(api) == []
    with freeze_time("2026-03-01T09:06:00.001Z"):
        assert overdue_ids(api) == [(D, "final_report_overdue")]
        assert overdue_ids(api, grace=3600) == []
    post(
        api, "final-report", final_report("completed", "2026-03-01T09:01:01Z", None, {"m1": "read"})
    )
    with freeze_time("2026-03-01T10:00:00Z"):
        assert overdue_ids(api) == []


@pytest.mark.parametrize(
    "query_string",
    [
        {"overdue": "maybe"},
        {"limit": "0"},
        {"limit": "x"},
        {"overdue": "true", "grace": "-1"},
        {"grace": "-1"},  # checked even where it does not apply
        {"overdue": "false", "grace": "x"},
    ],
)
def test_listing_arguments_are_checked(api: FlaskClient, query_string: dict[str, str]) -> None:
    response = api.get("/workflows", query_string=query_string)
    assert response.status_code == 400
    assert response.json["code"] == 400  # type: ignore[index]


def test_recent_workflows_are_listed_by_their_latest_event(api: FlaskClient) -> None:
    # d-b's event is the later one, though its callback is received first.
    for n, (uuid, happened) in enumerate(
        [("d-b", "2026-03-01T08:30:00Z"), ("d-a", "2026-03-01T08:00:00Z")]
    ):
        with freeze_time(f"2026-03-01T09:0{n}:00Z"):
            post(
                api,
                "message-status",
                payloads.status(f"m-{uuid}", "submitted", happened, dispatch_uuid=uuid),
            )
    listed = api.get("/workflows").json["workflows"]  # type: ignore[index]
    assert [(w["dispatch_uuid"], w["last_event_at"]) for w in listed] == [
        ("d-b", "2026-03-01T08:30:00Z"),
        ("d-a", "2026-03-01T08:00:00Z"),
    ]


def test_the_overdue_command_lists_and_can_fail(api: FlaskClient, clean_db: str) -> None:
    define(api)
    status(api, "m1", "submitted", T, "messenger")
    runner = CliRunner()
    env = {"DATABASE_URL": clean_db}
    with freeze_time("2026-03-01T10:00:00Z"):
        result = runner.invoke(main, ["overdue"], env=env)
        assert result.exit_code == 0, result.output
        assert f"{D}  failover_overdue" in result.output
        assert "1 overdue (grace 300 s, outcome timeout 86400 s)" in result.output
        failing = runner.invoke(main, ["overdue", "--json", "--fail-if-any"], env=env)
        assert failing.exit_code == 1
        assert json.loads(failing.stdout.splitlines()[0])["since"] == "2026-03-01T09:10:00Z"
    with freeze_time("2026-03-01T09:01:00Z"):
        quiet = runner.invoke(main, ["overdue", "--fail-if-any"], env=env)
        assert (quiet.exit_code, quiet.stdout.strip()) == (
            0,
            "0 overdue (grace 300 s, outcome timeout 86400 s)",
        )
