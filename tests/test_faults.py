"""Faults: a real database outage mid-stream, and hostile values that must stay data."""

from __future__ import annotations

import json
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from app import create_app
from app.config import Settings
from app.extensions import get_db, get_settings
from app.store import migrations
from app.store.db import Database, DatabaseUnavailable
from tests import payloads
from tests.conftest import OwnServer, fresh_database, post, query, set_read_only, settle


def test_an_outage_loses_nothing_and_ends_in_the_same_state(
    own_server: OwnServer, client: FlaskClient
) -> None:
    deliveries = payloads.three_message_workflow("d-1")
    # The reference run: one clean, ordered delivery on the shared database.
    for kind, payload in deliveries:
        assert post(client, kind, payload).status_code == 200
    expected = client.get("/workflows/d-1").json

    app = create_app({"database_url": own_server.url, "db_pool_timeout": 1.0})
    try:
        outage = app.test_client()
        first, rest = deliveries[:3], deliveries[3:]
        for kind, payload in first:
            assert post(outage, kind, payload).status_code == 200

        own_server.stop()
        for kind, payload in rest:
            response = post(outage, kind, payload)
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
        assert outage.get("/readyz").status_code == 503
        assert outage.get("/healthz").status_code == 200

        own_server.start()
        # The provider retries everything that was not acknowledged, until it
        # is; the pool needs a moment to reconnect, bounded by its settings.
        started = time.monotonic()
        pending = list(rest)
        while pending and time.monotonic() - started < 30:
            kind, payload = pending[0]
            code = post(outage, kind, payload).status_code
            assert code in (200, 503)
            if code == 200:
                pending.pop(0)
            else:
                time.sleep(0.5)
        assert pending == [], "not recovered 30 s after the database came back"
        assert outage.get("/readyz").status_code == 200
        assert outage.get("/workflows/d-1").json == expected
        assert query(own_server.url, "SELECT count(*), sum(deliveries) FROM raw_callback") == [
            (len(deliveries), len(deliveries))
        ]
    finally:
        get_db(app).close()


HOSTILE = [
    "x'; DROP TABLE message; --",
    "%(message_uuid)s",
    "%s%s%s",
    '{}\\\\"',
    "m\u2028\u202e\U0001f600",
    "../../etc/passwd",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_stored_and_served_as_plain_data(
    client: FlaskClient, clean_db: str, value: str
) -> None:
    payload = payloads.status(value, "submitted", "2020-01-01T14:00:00Z", dispatch_uuid=value)
    payload["error"] = {"code": 1, "reason": value}
    assert post(client, "message-status", payload).status_code == 200
    quoted = urllib.parse.quote(value, safe="")
    message = client.get(f"/messages/{quoted}").json
    assert message is not None
    assert (message["message_uuid"], message["dispatch_uuid"]) == (value, value)
    assert message["error"]["reason"] == value
    assert query(clean_db, "SELECT count(*) FROM message") == [(1,)]
    [(body,)] = query(clean_db, "SELECT body FROM raw_callback")
    assert json.loads(bytes(body))["message_uuid"] == value


def test_a_migrations_lock_on_the_state_does_not_hold_up_captures(
    client: FlaskClient, clean_db: str
) -> None:
    # A release's migration holds the workflow table's lock (an ALTER TABLE
    # does) for longer than the statement timeout: callbacks are still
    # captured and answered at once; they are applied once the lock is gone.
    delivery = payloads.status("m-locked", "delivered", "2026-01-01T10:00:00Z", dispatch_uuid="d-1")
    with psycopg.connect(clean_db) as release:
        release.execute("LOCK TABLE dispatch IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        answer = client.post("/webhooks/status", json=delivery)
        assert time.monotonic() - started < 2
        assert answer.status_code == 200 and answer.get_json()["status"] == "accepted"
        assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(1,)]
    settle(get_db(client.application))
    assert query(clean_db, "SELECT status, dispatch_uuid FROM message") == [("delivered", "d-1")]


def test_a_callback_stuck_behind_a_lock_on_the_raw_log_gets_503_and_its_retry_is_captured(
    client: FlaskClient, clean_db: str
) -> None:
    # A migration of the raw log itself blocks captures: the callback is
    # answered 503 with Retry-After after the statement timeout, nothing of
    # it is written, and the provider's retry after the release is captured.
    delivery = payloads.status("m-locked", "delivered", "2026-01-01T10:00:00Z", dispatch_uuid="d-1")
    with psycopg.connect(clean_db) as release:
        release.execute("LOCK TABLE raw_callback IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        blocked = post(client, "message-status", delivery)
        waited = time.monotonic() - started
    assert blocked.status_code == 503 and blocked.headers["Retry-After"]
    assert blocked.get_json()["code"] == 503
    assert 9 < waited < 20  # the statement timeout, not the pool's or a hang
    assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(0,)]
    assert query(clean_db, "SELECT count(*) FROM rejected_callback") == [(0,)]
    retried = post(client, "message-status", delivery)
    assert retried.status_code == 200 and retried.get_json()["status"] == "accepted"
    assert query(clean_db, "SELECT status, dispatch_uuid FROM message") == [("delivered", "d-1")]


def _open_every_connection(app: Flask) -> None:
    """Make the pool open all its connections, as a busy instance's pool has."""
    db = get_db(app)
    size = get_settings_of(app).db_pool_max_size
    with ThreadPoolExecutor(size) as pool:
        list(pool.map(lambda _: db.run(lambda c: c.execute("SELECT pg_sleep(0.3)")), range(size)))
    assert db.pool_stats()["pool_size"] == size


def _until_taken(
    client: FlaskClient,
    delivery: payloads.Delivery,
    within: float,
    every: float,
    taken: int = 200,
) -> list[int]:
    """Post `delivery` every `every` s until it is answered `taken` or `within` s have
    passed; the answers' status codes."""
    started = time.monotonic()
    answers: list[int] = []
    while time.monotonic() - started < within and taken not in answers:
        answers.append(post(client, *delivery).status_code)
        time.sleep(every)
    return answers


def get_settings_of(app: Flask) -> Settings:
    with app.app_context():
        return get_settings()


def test_after_a_restart_an_idle_instance_answers_at_once_and_is_ready(
    own_server: OwnServer,
) -> None:
    """Each pooled connection was cut by the restart; none may cost a callback a 503."""
    app = create_app({"database_url": own_server.url})  # the defaults, as deployed
    try:
        client = app.test_client()
        _open_every_connection(app)
        own_server.stop()
        own_server.start()
        deliveries = payloads.three_message_workflow("d-restart")
        for kind, payload in deliveries:
            assert post(client, kind, payload).status_code == 200
        assert [client.get("/readyz").status_code for _ in range(10)] == [200] * 10
    finally:
        get_db(app).close()


def test_during_an_outage_503_comes_fast_and_after_it_every_callback_is_taken(
    own_server: OwnServer,
) -> None:
    app = create_app({"database_url": own_server.url})
    try:
        client = app.test_client()
        _open_every_connection(app)
        own_server.stop()
        deliveries = payloads.three_message_workflow("d-outage")
        for kind, payload in deliveries:
            started = time.monotonic()
            response = post(client, kind, payload)
            assert response.status_code == 503 and response.headers["Retry-After"]
            assert time.monotonic() - started < 2
        # A refusal too: it cannot be kept, so it is retried (not dropped by a 422).
        refused = payloads.status("m-refused", "no-such-status", "2020-01-01T15:00:00Z")
        started = time.monotonic()
        assert post(client, "status", refused).status_code == 503
        assert time.monotonic() - started < 2
        assert client.get("/readyz").status_code == 503

        own_server.start()
        answers = _until_taken(client, deliveries[0], within=10, every=0.2)
        assert answers[-1] == 200, f"no callback taken 10 s after the database came back: {answers}"
        # From then on, every one.
        for kind, payload in deliveries[1:]:
            assert post(client, kind, payload).status_code == 200
        assert [client.get("/readyz").status_code for _ in range(10)] == [200] * 10
    finally:
        get_db(app).close()


def test_a_database_that_takes_no_writes_gets_503_and_once_it_does_every_callback_is_taken(
    server_url: str,
) -> None:
    """As after a failover whose new sessions still reach the old primary, now a standby."""
    url = fresh_database(server_url)
    migrations.migrate(url)
    set_read_only(server_url, url, True)
    app = create_app({"database_url": url})  # the defaults, as deployed
    try:
        client = app.test_client()
        deliveries = payloads.three_message_workflow("d-standby")
        for kind, payload in deliveries:
            response = post(client, kind, payload)
            assert response.status_code == 503 and response.headers["Retry-After"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["message"] == "The database is unavailable; retry later."
        assert query(url, "SELECT count(*) FROM raw_callback") == [(0,)]

        # The server takes writes again (the name now points at the new
        # primary): the sessions opened on the standby are replaced within a
        # second or so (kept, they would refuse every write for their life).
        set_read_only(server_url, url, False)
        answers = _until_taken(client, deliveries[0], within=5, every=0.05)
        assert answers[-1] == 200, f"no callback taken 5 s after writes came back: {answers}"
        for kind, payload in deliveries[1:]:
            assert post(client, kind, payload).status_code == 200
        assert client.get("/readyz").status_code == 200
        settle(get_db(app))
        assert query(url, "SELECT status FROM dispatch WHERE dispatch_uuid = 'd-standby'") == [
            ("completed",)
        ]
    finally:
        get_db(app).close()


def test_a_refusal_that_cannot_be_kept_is_503_so_that_its_retry_is_kept(
    server_url: str,
) -> None:
    """Answered 4xx, Vonage drops a callback for good: only a kept refusal may be final."""
    url = fresh_database(server_url)
    migrations.migrate(url)
    app = create_app({"database_url": url, "max_body_bytes": 4096})
    refused = payloads.status("m-refused", "no-such-status", "2020-01-01T15:00:00Z")
    not_json = payloads.status("m-not-json", "delivered", "2020-01-01T15:00:00Z")

    def refusals(reason: str) -> float:
        found = REGISTRY.get_sample_value("dispatch_ledger_rejects_total", {"reason": reason})
        return found or 0.0

    before = refusals("schema_violation")
    try:
        client = app.test_client()
        set_read_only(server_url, url, True)
        response = post(client, "status", refused)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        answer = response.get_json()
        assert answer["code"] == 503
        assert answer["message"].startswith("The callback is refused (422: ")
        assert answer["errors"]["status"]  # why, for whoever reads it
        # Not JSON either: the same, so that the retry is kept as not JSON.
        assert post(client, "status", not_json, content_type="text/plain").status_code == 503
        # Too large to read: nothing a retry could keep, so the refusal stands.
        assert post(client, "status", b"x" * 5000).status_code == 413
        assert query(url, "SELECT count(*) FROM rejected_callback") == [(0,)]
        assert refusals("schema_violation") == before  # not refused yet: to be retried

        set_read_only(server_url, url, False)
        answers = _until_taken(client, ("status", refused), within=5, every=0.05, taken=422)
        assert answers[-1] == 422, f"the retry not refused 5 s after writes came back: {answers}"
        assert refusals("schema_violation") == before + 1
        assert post(client, "status", not_json, content_type="text/plain").status_code == 415
        assert query(
            url,
            "SELECT reason, http_status FROM rejected_callback WHERE body IS NOT NULL ORDER BY id",
        ) == [("schema_violation", 422), ("unsupported_media_type", 415)]
    finally:
        get_db(app).close()


def test_a_database_url_that_cannot_be_parsed_makes_the_database_unavailable_not_a_crash() -> None:
    # Naming the service's sessions (application_name) must not turn a typo in
    # DATABASE_URL into a crash at start-up: it stays a database that cannot be reached
    # (503 to Vonage, which retries).
    url = "postgres:/missing-a-slash"
    db = Database(url, Settings(database_url=url, db_pool_timeout=0.2))
    try:
        with pytest.raises(DatabaseUnavailable):
            db.run(lambda conn: conn.execute("SELECT 1"))
    finally:
        db.close()
