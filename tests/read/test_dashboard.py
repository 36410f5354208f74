"""The dashboard: password, charts and a timeline, rendered in a real headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from PIL import Image

from app import create_app
from app.extensions import get_db
from app.model.times import iso
from app.outbound import endpoints
from app.pipeline import apply
from app.read.dashboard import COLOURS
from tests import payloads
from tests.conftest import post

PASSWORD = "dashboard-password"
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()}
TOKEN = "dashboard-token"


@pytest.fixture
def dash(clean_db: str) -> Iterator[FlaskClient]:
    app: Flask = create_app(
        {"database_url": clean_db, "dashboard_password": PASSWORD, "api_token": TOKEN}
    )
    client = app.test_client()
    client.put(
        "/workflows/d-1/definition",
        json=payloads.fixture("dispatch_request_failover.json"),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    for kind, payload in payloads.three_message_workflow("d-1"):
        post(client, kind, payload)
    yield client
    get_db(app).close()


def test_the_dashboard_is_off_without_a_password(client: FlaskClient) -> None:
    response = client.get("/dashboard", headers=AUTH)
    assert (response.status_code, response.mimetype) == (404, "text/html")
    page = response.get_data(as_text=True)
    assert "DASHBOARD_PASSWORD" in page and 'id="home"' not in page  # nowhere to go back to


def test_the_dashboard_needs_the_password(dash: FlaskClient) -> None:
    refused = dash.get("/dashboard")
    assert (refused.status_code, refused.mimetype) == (401, "text/html")
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="dispatch-ledger"'
    assert "Password required" in refused.get_data(as_text=True)
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:guess").decode()}
    assert dash.get("/dashboard", headers=wrong).status_code == 401
    assert dash.get("/dashboard", headers=AUTH).status_code == 200


@pytest.mark.parametrize("days", ["0", "367", "week", "-1"])
def test_a_bad_period_is_an_html_page_with_a_way_back(dash: FlaskClient, days: str) -> None:
    response = dash.get(f"/dashboard?days={days}", headers=AUTH)
    assert (response.status_code, response.mimetype) == (400, "text/html")
    page = response.get_data(as_text=True)
    assert "days must be a whole number from 1 to 366" in page
    assert 'href="/dashboard"' in page


def test_a_workflow_is_found_by_its_id_or_a_message_id(dash: FlaskClient) -> None:
    by_workflow = dash.get("/dashboard/find?id=d-1", headers=AUTH)
    assert (by_workflow.status_code, by_workflow.location) == (302, "/dashboard/workflows/d-1")
    by_message = dash.get("/dashboard/find?id=m-3-sms", headers=AUTH)
    assert (by_message.status_code, by_message.location) == (302, "/dashboard/workflows/d-1")
    missing = dash.get("/dashboard/find?id=nothing-here", headers=AUTH)
    assert (missing.status_code, missing.mimetype) == (404, "text/html")
    assert "No workflow or message has the id" in missing.get_data(as_text=True)
    # Every page has the way back and the search box.
    page = dash.get("/dashboard/workflows/d-1", headers=AUTH).get_data(as_text=True)
    assert 'id="home"' in page and 'action="/dashboard/find"' in page


def test_the_timeline_has_an_axis_exact_times_and_one_time_format(dash: FlaskClient) -> None:
    page = dash.get("/dashboard/workflows/d-1", headers=AUTH).get_data(as_text=True)
    ticks = re.findall(r'class="tick">([^<]+)<', page)
    assert len(ticks) == 5 and all(re.fullmatch(TIME, t) for t in ticks), ticks
    table = page.split('id="events"')[1].split("</table>")[0]
    # Every status of every message, with its exact time.
    times = re.findall(r"<td>(\d{4}-[^<]+)</td>", table)
    assert len(times) >= 6 and all(re.fullmatch(TIME, t) for t in times), times
    assert "2020-01-01T14:00:00Z" in times
    # No other time format anywhere on the page (no microseconds, no +00:00).
    assert not re.search(r"\d\d:\d\d:\d\d\.\d{6}|\+00:00", page)


def test_recent_workflows_are_ordered_by_their_latest_event(dash: FlaskClient) -> None:
    later = payloads.status("late-1", "delivered", "2021-06-01T00:00:00Z", dispatch_uuid="d-later")
    assert post(dash, "status", later).status_code == 200
    earlier = payloads.status("early-1", "delivered", "2019-01-01T00:00:00Z", dispatch_uuid="d-old")
    assert post(dash, "status", earlier).status_code == 200  # received last, happened first
    page = dash.get("/dashboard", headers=AUTH).get_data(as_text=True)
    recent = page.split("Recent workflows")[1]
    order = re.findall(r">(d-[a-z0-9-]+)</a>", recent)
    assert order == ["d-later", "d-1", "d-old"]


def test_the_overview_shows_the_funnel_failover_and_workflows(dash: FlaskClient) -> None:
    # The fixture's events are from 2020-01-01; a week later, seen over 7 days.
    with freeze_time("2020-01-07T12:00:00Z"):
        page = dash.get("/dashboard?days=7", headers=AUTH).get_data(as_text=True)
        empty = dash.get("/dashboard?days=5", headers=AUTH).get_data(as_text=True)
    assert "No messages in this period." in empty
    assert "No workflows began in this period." in empty and "step 2" not in empty
    assert page.count("<title>sms ") == 4 and page.count("<title>messenger ") == 4
    assert "step 2 viber_service_msg" in page
    assert ">d-1</a>" in page
    assert dash.get("/dashboard?days=0", headers=AUTH).status_code == 400


def test_the_overview_lists_callbacks_that_failed_to_apply(
    dash: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = dash.get("/dashboard", headers=AUTH).get_data(as_text=True)
    assert "0 waiting to be applied, 0 failed." in page and 'id="failed"' not in page

    def broken(message: Any, event: Any) -> Any:
        raise RuntimeError("no transition today")

    monkeypatch.setattr(apply, "apply_status", broken)
    late = payloads.status("m-late", "delivered", "2020-01-01T15:30:00Z", dispatch_uuid="d-1")
    assert post(dash, "status", late).status_code == 200
    page = dash.get("/dashboard", headers=AUTH).get_data(as_text=True)
    assert "0 waiting to be applied, 1 failed" in page
    assert "RuntimeError: no transition today" in page and ">m-late<" in page
    assert "dispatch-ledger apply --once --retry-failed" in page


def test_the_timeline_shows_each_step_its_statuses_and_deadline(dash: FlaskClient) -> None:
    page = dash.get("/dashboard/workflows/d-1", headers=AUTH).get_data(as_text=True)
    assert page.count("<circle") == 6  # 3 messages x 2 statuses
    assert "deadline" in page
    assert 'id="outcome">completed' in page
    assert dash.get("/dashboard/workflows/nope", headers=AUTH).status_code == 404


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed: apt-get install chromium"
    return found


def screenshot(html: str, folder: Path, name: str) -> Image.Image:
    page, png = folder / f"{name}.html", folder / f"{name}.png"
    page.write_text(html)
    subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={folder / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Image.open(png).convert("RGB")


def colours(image: Image.Image) -> Counter[tuple[int, int, int]]:
    """How many pixels of each RGB colour the image has."""
    data = image.tobytes()
    return Counter(zip(data[0::3], data[1::3], data[2::3], strict=True))


def rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


@pytest.mark.browser
def test_chromium_draws_the_charts_and_the_timeline(dash: FlaskClient, tmp_path: Path) -> None:
    with freeze_time("2020-01-07T12:00:00Z"):
        html = dash.get("/dashboard?days=7", headers=AUTH).get_data(as_text=True)
    overview = screenshot(html, tmp_path, "overview")
    assert overview.size == (1280, 1000)
    pixels = colours(overview)
    # Bars of every series are painted, in proportion: delivered (2 of 4
    # messages) and failed (2) bars, and the orange failover bars.
    for series in ("sent", "delivered", "failed"):
        assert pixels[rgb(COLOURS[series])] > 200, series
    assert pixels[rgb("#f97316")] > 500  # failover rate bars
    # The chart sits in the upper part of the page, below the heading.
    top = overview.crop((0, 0, 1280, 400))
    assert colours(top)[rgb(COLOURS["delivered"])] > 200

    timeline = screenshot(
        dash.get("/dashboard/workflows/d-1", headers=AUTH).get_data(as_text=True),
        tmp_path,
        "timeline",
    )
    dots = colours(timeline)
    for status in ("submitted", "delivered", "rejected"):
        assert dots[rgb(COLOURS[status])] > 60, status  # circles of radius 7
    assert dots[rgb("#dbeafe")] > 100  # the waiting window up to a deadline


def test_the_overview_filters_by_api_and_the_timeline_names_it(dash: FlaskClient) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    body = payloads.messages_status(
        "rcs-1", "delivered", iso(now), channel="rcs", workflow=("wf-1", 1, 2), price="0.01"
    )
    assert post(dash, "status", body).status_code == 200
    both = dash.get("/dashboard", headers=AUTH).get_data(as_text=True)
    only_messages = dash.get("/dashboard?api=messages", headers=AUTH).get_data(as_text=True)
    only_dispatch = dash.get("/dashboard?api=dispatch", headers=AUTH).get_data(as_text=True)
    assert "<td>rcs</td>" in both and "<td>rcs</td>" in only_messages
    assert "<td>rcs</td>" not in only_dispatch
    assert ">wf-1</a>" in both and ">wf-1</a>" in only_messages and ">wf-1</a>" not in only_dispatch
    assert "Messages API only" in only_messages
    refused = dash.get("/dashboard?api=fax", headers=AUTH)
    assert refused.status_code == 400
    timeline = dash.get("/dashboard/workflows/wf-1", headers=AUTH).get_data(as_text=True)
    assert "Messages API failover" in timeline and "sends no final report" in timeline


@pytest.mark.browser
def test_chromium_draws_a_messages_api_workflow(dash: FlaskClient, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for uuid, status, seconds, channel, item in (
        ("x-1", "submitted", 0, "rcs", 1),
        ("x-1", "rejected", 2, "rcs", 1),
        ("x-2", "submitted", 3, "sms", 2),
        ("x-2", "delivered", 9, "sms", 2),
    ):
        body = payloads.messages_status(
            uuid,
            status,
            iso(now - timedelta(seconds=60 - seconds)),
            channel=channel,
            workflow=("wf-b", item, 2),
            price="0.0333" if status == "delivered" else None,
        )
        assert post(dash, "status", body).status_code == 200
    html = dash.get("/dashboard?api=messages", headers=AUTH).get_data(as_text=True)
    pixels = colours(screenshot(html, tmp_path, "messages-overview"))
    for series in ("sent", "delivered", "failed"):
        assert pixels[rgb(COLOURS[series])] > 200, series
    page = dash.get("/dashboard/workflows/wf-b", headers=AUTH).get_data(as_text=True)
    assert "Messages API failover" in page
    dots = colours(screenshot(page, tmp_path, "messages-timeline"))
    for status in ("submitted", "delivered", "rejected"):
        assert dots[rgb(COLOURS[status])] > 60, status


def test_dots_a_second_apart_are_drawn_on_lanes_not_on_each_other() -> None:
    from app.read.dashboard import DOT_SPACING, _timeline_rows

    statuses = {
        "submitted": "2026-03-01T09:00:00Z",
        "delivered": "2026-03-01T09:00:01Z",
        "read": "2026-03-01T09:00:02Z",
    }
    document = {
        "steps": None,
        "messages": [
            {"message_uuid": "m", "channel": "sms", "status": "read", "statuses": statuses},
            {
                "message_uuid": "n",
                "channel": "sms",
                "status": "delivered",
                "statuses": {"submitted": "2026-03-01T10:00:00Z"},
            },
        ],
    }
    row = _timeline_rows(document)["rows"][0]
    dots = [(e["x"], e["lane"]) for e in row["events"]]
    assert [lane for _, lane in dots] == [0, 1, 2] and row["lanes"] == 3
    for i, (x, lane) in enumerate(dots):
        for other_x, other_lane in dots[i + 1 :]:
            assert lane != other_lane or abs(x - other_x) >= DOT_SPACING


def test_an_outcome_overdue_workflow_is_on_the_dashboard_with_its_reason(dash: FlaskClient) -> None:
    body = payloads.status("lone-1", "submitted", "2020-01-01T00:00:00Z", dispatch_uuid="d-lone")
    assert post(dash, "status", body).status_code == 200
    assert (
        dash.put(
            "/workflows/d-lone/definition",
            json={
                **payloads.fixture("dispatch_request_failover.json"),
                "workflow": payloads.fixture("dispatch_request_failover.json")["workflow"][-1:],
            },
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).status_code
        == 201
    )
    page = dash.get("/dashboard", headers=AUTH).get_data(as_text=True)
    overdue = page.split("<h2>Overdue</h2>")[1].split("</table>")[0]
    assert "d-lone" in overdue and "outcome_overdue" in overdue
    assert (
        "step 1 was submitted at 2020-01-01T00:00:00Z and has neither succeeded nor failed"
        in overdue
    )


def test_the_timeline_draws_an_event_past_the_last_utc_year(dash: FlaskClient) -> None:
    # 9999-12-31T23:59:59-01:00 is 10000-01-01T00:59:59Z: PostgreSQL keeps it,
    # Python's datetime has no UTC form for it. The JSON API shows it; so must the page.
    late = payloads.status("m-late", "delivered", "9999-12-31T23:59:59-01:00", dispatch_uuid="d-1")
    assert post(dash, "message-status", late).status_code == 200
    assert dash.get("/workflows/d-1").status_code == 200
    page = dash.get("/dashboard/workflows/d-1", headers=AUTH)
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    # The axis ends at the event, written where Python can write it (app.model.times).
    assert "9999-12-31T01:00:59-23:59</text>" in page.get_data(as_text=True)


def test_finding_an_id_no_callback_can_carry_is_a_page_not_a_500(dash: FlaskClient) -> None:
    for wanted in ("%00", "a%00b"):
        page = dash.get(f"/dashboard/find?id={wanted}", headers=AUTH)
        assert page.status_code == 404 and page.mimetype == "text/html", wanted
        assert "No workflow or message can have the id" in page.get_data(as_text=True)


def test_the_overview_lists_endpoints_and_their_health(dash: FlaskClient, clean_db: str) -> None:
    page = dash.get("/dashboard", headers=AUTH).get_data(as_text=True)
    assert "No endpoints" in page
    db = get_db(dash.application)
    now = datetime.now(UTC)
    healthy = endpoints.add(db, "https://hooks.example.com/a", None, "", now)["id"]
    dead = endpoints.add(db, "https://hooks.example.com/b", None, "", now)["id"]
    db.run(
        lambda conn: conn.execute(
            "UPDATE endpoint SET disabled_at = now(), disabled_reason = 'event evt_1 failed 8"
            " attempts, the last: HTTP 500' WHERE endpoint_id = %s",
            (dead,),
        )
    )
    page = dash.get("/dashboard", headers=AUTH).get_data(as_text=True)
    assert healthy in page and dead in page
    assert "failed 8 attempts, the last: HTTP 500" in page
    assert page.count("<strong>disabled</strong>") == 1
