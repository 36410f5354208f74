"""No read document shows a phone number or a Messenger id: not the read API, not the
dashboard, not the analysts' views, however the callbacks disagree about them."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.extensions import get_db
from app.store import migrations
from tests import payloads
from tests.conftest import fresh_database, post, query

# Every number and id the corpus gives a person: none may show anywhere.
NUMBERS = [f"4477009004{n:02d}" for n in range(10)]
PSID = "psid-1234567890"
PASSWORD = "a-dashboard-password"
DASHBOARD = {"Authorization": "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()}


def dispatch_status(message_uuid: str, status: str, at: str, to: dict[str, str], frm: str) -> dict:
    body = payloads.status(message_uuid, status, at, dispatch_uuid="d-numbers", price="0.01")
    body["to"] = {"type": "sms", **to}
    body["from"] = {"type": "sms", "number": frm}
    return body


def corpus() -> list[payloads.Delivery]:
    deliveries: list[payloads.Delivery] = [
        # Dispatch: the same message to a number, then to the number and an id, from two numbers.
        (
            "message-status",
            dispatch_status(
                "m-1", "submitted", "2020-01-01T10:00:00Z", {"number": NUMBERS[0]}, NUMBERS[1]
            ),
        ),
        (
            "message-status",
            dispatch_status(
                "m-1",
                "delivered",
                "2020-01-01T10:00:05Z",
                {"id": PSID, "number": NUMBERS[0]},
                NUMBERS[2],
            ),
        ),
        (
            "message-status",
            dispatch_status(
                "m-2", "rejected", "2020-01-01T10:00:06Z", {"number": NUMBERS[3]}, NUMBERS[1]
            ),
        ),
        (
            "final-report",
            payloads.final_report(
                "d-numbers",
                "completed",
                "2020-01-01T10:01:00Z",
                [{"message_uuid": "m-1", "status": "read"}],
                price="0.02",
            ),
        ),
    ]
    # Messages API: a status with its channel, then one without (to_conflict), to other numbers.
    with_channel = payloads.messages_status(
        "m-3", "submitted", "2020-01-01T11:00:00Z", workflow=("wf-numbers", 1, 2)
    )
    without = payloads.messages_status(
        "m-3", "delivered", "2020-01-01T11:00:05Z", workflow=("wf-numbers", 1, 2)
    )
    del without["channel"]
    messenger = payloads.messages_status(
        "m-4", "read", "2020-01-01T11:00:09Z", channel="messenger", workflow=("wf-numbers", 2, 2)
    )
    for body, to, frm in (
        (with_channel, NUMBERS[4], NUMBERS[5]),
        (without, NUMBERS[6], NUMBERS[7]),
        (messenger, PSID + "-2", NUMBERS[8]),
    ):
        body["to"], body["from"] = to, frm
        deliveries.append(("message-status", body))
    return deliveries


@pytest.fixture
def dash(clean_db: str) -> Iterator[FlaskClient]:
    app: Flask = create_app(
        {"database_url": clean_db, "apply_in_web": False, "dashboard_password": PASSWORD}
    )
    yield app.test_client()
    get_db(app).close()


def shown(text: str) -> list[str]:
    return [secret for secret in [*NUMBERS, PSID] if secret in text]


def test_no_read_document_shows_a_number_or_an_id(dash: FlaskClient, clean_db: str) -> None:
    for kind, body in corpus():
        assert post(dash, kind, body).status_code == 200, body
    kinds = {row[0] for row in query(clean_db, "SELECT kind FROM discrepancy")}
    # The corpus does disagree about the parties, in both APIs.
    assert {"to_conflict", "from_conflict"} <= kinds
    details = [row[0] for row in query(clean_db, "SELECT detail FROM discrepancy")]
    assert "also reported: a party of type unknown with no id and a number (values not shown)" in (
        details
    )

    pages = ["/workflows", "/workflows?overdue=true", "/metrics", "/openapi.json"]
    for workflow in ("d-numbers", "wf-numbers"):
        pages.append(f"/workflows/{workflow}")
    pages += [f"/messages/m-{n}" for n in range(1, 5)]
    read = {page: dash.get(page) for page in pages}
    for page in ("/dashboard", "/dashboard/workflows/d-numbers", "/dashboard/workflows/wf-numbers"):
        read[page] = dash.get(page, headers=DASHBOARD)
    for page, answer in read.items():
        assert answer.status_code == 200, page
        text = answer.get_data(as_text=True)
        assert not shown(text), (page, shown(text))
    # The read API does say what differed.
    workflow = dash.get("/messages/m-3").get_data(as_text=True)
    assert "to_conflict" in workflow and "values not shown" in workflow

    views = [
        row[0]
        for row in query(
            clean_db,
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'analytics'",
        )
    ]
    assert len(views) >= 7
    for view in views:
        rows = query(clean_db, f'SELECT * FROM analytics."{view}"')
        assert not shown(repr(rows)), (view, shown(repr(rows)))


def test_details_recorded_before_are_rewritten_without_values(
    server_url: str, tmp_path: Path
) -> None:
    url = fresh_database(server_url)
    before = tmp_path / "migrations"
    before.mkdir()
    for migration in sorted(migrations.MIGRATIONS_DIR.glob("*.sql")):
        if migration.name < "0015":
            (before / migration.name).write_text(migration.read_text())
    migrations.migrate(url, before)
    rows = [
        ("m-1", "to_conflict", f"also reported: sms/-/{NUMBERS[0]}"),
        ("m-1", "to_conflict", f"also reported: sms/-/{NUMBERS[1]}"),
        ("m-1", "from_conflict", f"also reported: messenger/{PSID}/with/slashes/-"),
        ("m-1", "channel_conflict", "also reported: sms"),
    ]
    for message, kind, detail in rows:
        query(
            url,
            "INSERT INTO discrepancy (subject, subject_id, kind, detail, recorded_at)"
            " VALUES ('message', %s, %s, %s, now()) RETURNING id",
            message,
            kind,
            detail,
        )
    migrations.migrate(url)
    after = query(url, "SELECT kind, detail FROM discrepancy ORDER BY kind, detail")
    assert after == [
        ("channel_conflict", "also reported: sms"),
        (
            "from_conflict",
            "also reported: a party of type messenger with an id and no number (values not shown)",
        ),
        (
            "to_conflict",
            "also reported: a party of type sms with no id and a number (values not shown)",
        ),
    ]
    assert not re.search(r"\d{6}", repr(after))
