"""GET /events: the change feed, paged by cursor, with a long poll."""

from __future__ import annotations

import threading
import time

import pytest
from flask.testing import FlaskClient

from app import create_app
from app.extensions import get_db
from tests.conftest import decide_one


def test_pages_follow_the_cursor_to_the_end(client: FlaskClient) -> None:
    for n in range(3):
        decide_one(client, f"d-{n}", prefix=f"m{n}")
    everything = client.get("/events?limit=1000").get_json()["events"]
    assert len(everything) == 6
    got, after = [], None
    while True:
        page = client.get("/events?limit=4" + (f"&after={after}" if after else "")).get_json()
        got += page["events"]
        if not page["events"]:
            break
        after = page["next"]
    assert got == everything
    # At the end, `next` stays where it was: asking again gives nothing, and loses nothing.
    assert client.get(f"/events?after={after}").get_json() == {"events": [], "next": after}
    decide_one(client, "d-late", prefix="late")
    later = client.get(f"/events?after={after}").get_json()["events"]
    assert [e["data"]["dispatch_uuid"] for e in later] == ["d-late", "d-late"]


@pytest.mark.parametrize(
    "query",
    [
        "after=abc",
        "after=-1",
        "after=1e3",
        "after=" + "9" * 30,
        "limit=0",
        "limit=1001",
        "limit=x",
        "wait=31",
        "wait=-1",
        "wait=nan",
    ],
)
def test_a_bad_query_is_a_400_naming_it(client: FlaskClient, query: str) -> None:
    answer = client.get(f"/events?{query}")
    assert answer.status_code == 400
    body = answer.get_json()
    assert set(body) >= {"message", "errors"} and query.split("=")[0] in body["errors"]


def test_a_long_poll_answers_as_soon_as_an_event_is_made(client: FlaskClient) -> None:
    head = client.get("/events").get_json()["next"]
    answers: list[dict[str, object]] = []
    waited: list[float] = []

    def poll() -> None:
        started = time.monotonic()
        with client.application.test_client() as other:
            answers.append(other.get(f"/events?after={head}&wait=10").get_json())
        waited.append(time.monotonic() - started)

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    decide_one(client, "d-1")
    thread.join(15)
    assert answers and answers[0]["events"]
    assert 0.4 < waited[0] < 5


def test_an_empty_long_poll_ends_after_its_wait(client: FlaskClient) -> None:
    started = time.monotonic()
    answer = client.get("/events?wait=0.5").get_json()
    assert answer == {"events": [], "next": "0"}
    assert 0.3 < time.monotonic() - started < 3


def test_the_feed_is_closed_on_a_deployment_without_a_read_token(
    clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("READ_API_OPEN")
    application = create_app(
        {"database_url": clean_db, "apply_in_web": False, "read_api_token": "reader-token"}
    )
    client = application.test_client()
    assert client.get("/events").status_code == 401
    assert client.get("/events", headers={"Authorization": "Bearer forged"}).status_code == 401
    ok = client.get("/events", headers={"Authorization": "Bearer reader-token"})
    assert ok.status_code == 200
    get_db(application).close()
