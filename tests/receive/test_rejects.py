"""Kept rejects: each one replayable on its own, and junk bounded so it cannot fill the disk."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from app import create_app
from app.extensions import get_db
from app.pipeline.capture import Delivery
from app.receive import rejects
from app.receive.auth import Credentials
from app.store.db import Database
from tests import payloads
from tests.conftest import post, query
from tests.servers import ROOT
from tests.signing import SECRET, bearer

JSON = {"Content-Type": "application/json"}


def _status(n: int) -> dict[str, Any]:
    return payloads.status(f"m-{n}", "delivered", "2020-01-01T15:00:00Z")


def test_a_reject_that_fails_to_replay_is_recorded_and_the_others_go_on(
    client: FlaskClient, clean_db: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):  # refused for their media type: valid callbacks
        post(client, "status", _status(n), content_type="text/plain")
    real = rejects.capture_in

    def buggy(conn: Any, deliveries: list[Delivery]) -> Any:
        if any(getattr(d.callback.event, "message_uuid", "") == "m-1" for d in deliveries):
            raise RuntimeError("a bug that quotes the body: m-1 +447700900000")
        return real(conn, deliveries)

    monkeypatch.setattr(rejects, "capture_in", buggy)
    summary = rejects.reprocess(db, Credentials(), 32, datetime.now(UTC))
    assert (summary.recovered, summary.failed, summary.remaining) == (2, 1, 1)
    [(reason, message, attempts)] = query(
        clean_db,
        "SELECT reason, message, reprocess_attempts FROM rejected_callback"
        " WHERE resolved_at IS NULL",
    )
    # The failure is on the row, without the body's contents; the reason stands.
    assert (reason, attempts) == ("unsupported_media_type", 1)
    assert "RuntimeError" in message and "+447700900000" not in message
    assert query(clean_db, "SELECT message_uuid FROM message ORDER BY 1") == [("m-0",), ("m-2",)]

    monkeypatch.undo()
    again = rejects.reprocess(db, Credentials(), 32, datetime.now(UTC))
    assert (again.recovered, again.failed, again.remaining) == (1, 0, 0)


def test_a_crash_while_replaying_an_unverified_reject_keeps_it_unverified(
    clean_db: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else a later run would take the crash's reason and replay it without its token check."""
    wrong = create_app({"database_url": clean_db, "vonage_signature_secret": "w" * 32})
    body = json.dumps(_status(1)).encode()
    try:
        forged = bearer(body, "an-attacker-guessing-a-secret-32b")
        response = wrong.test_client().post("/webhooks/status", data=body, headers=JSON | forged)
        assert response.status_code == 401
    finally:
        get_db(wrong).close()

    def crash(*_: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(rejects, "_verify_any", crash)
    assert rejects.reprocess(db, Credentials(secrets=(SECRET,)), 32, datetime.now(UTC)).failed == 1
    monkeypatch.undo()
    summary = rejects.reprocess(db, Credentials(secrets=(SECRET,)), 32, datetime.now(UTC))
    assert (summary.recovered, summary.still_rejected) == (0, 1)
    assert query(clean_db, "SELECT reason FROM rejected_callback") == [("unauthorized",)]


def test_the_command_says_what_remains_and_its_exit_status_tells(
    client: FlaskClient, clean_db: str
) -> None:
    post(client, "status", _status(1), content_type="text/plain")
    post(client, "status", {"message_uuid": "m-2"})  # invalid today too

    def run() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": clean_db}
        command = [sys.executable, "-m", "app.cli", "reprocess-rejects"]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)

    first = run()
    assert first.returncode == 1, first.stderr
    assert "recovered 1," in first.stdout and "still rejected 1," in first.stdout
    assert "1 unrecovered rejects remain" in first.stdout
    query(clean_db, "DELETE FROM rejected_callback WHERE resolved_at IS NULL RETURNING id")
    done = run()
    assert done.returncode == 0 and "0 unrecovered rejects remain" in done.stdout


@pytest.fixture
def small_budget(clean_db: str) -> Any:
    app = create_app(
        {
            "database_url": clean_db,
            "vonage_signature_secret": SECRET,
            "rejects_kept_bytes_per_hour": 20_000,
        }
    )
    yield app
    get_db(app).close()


def test_a_flood_of_forged_junk_is_counted_but_not_kept_past_the_budget(
    small_budget: Any, clean_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    from app import metrics

    client = small_budget.test_client()
    forged = {"Authorization": "Bearer e30.e30.e30"}
    before = metrics.REJECTS_DROPPED.labels("unauthorized")._value.get()
    with caplog.at_level(logging.WARNING):
        for n in range(60):
            junk = json.dumps({"junk": n, "pad": "x" * 4_000}).encode()
            assert (
                client.post("/webhooks/status", data=junk, headers=JSON | forged).status_code == 401
            )
    [(kept, stored)] = query(clean_db, "SELECT count(*), sum(length(body)) FROM rejected_callback")
    assert 2 <= kept <= 5 and stored <= 20_000
    assert query(clean_db, "SELECT reason, deliveries, dropped FROM reject_window") == [
        ("unauthorized", 60, 60 - kept)
    ]
    assert metrics.REJECTS_DROPPED.labels("unauthorized")._value.get() - before == 60 - kept
    # One line when the budget is first spent, not one per delivery.
    assert caplog.text.count("REJECTS_KEPT_BYTES_PER_HOUR") == 1


def test_signed_callbacks_that_violate_the_schema_are_always_kept_whole(
    small_budget: Any, clean_db: str
) -> None:
    client = small_budget.test_client()
    for n in range(30):
        body = json.dumps({"message_uuid": f"m-{n}", "pad": "x" * 4_000}).encode()
        response = client.post("/webhooks/status", data=body, headers=JSON | bearer(body))
        assert response.status_code == 422
    assert query(clean_db, "SELECT count(*) FROM rejected_callback") == [(30,)]
    assert query(clean_db, "SELECT dropped FROM reject_window") == [(0,)]


def test_tokens_kept_with_refusals_count_against_the_budget(
    small_budget: Any, clean_db: str
) -> None:
    """Eight huge forged tokens on one small body must not slip past the budget."""
    client = small_budget.test_client()
    body = json.dumps(_status(1)).encode()
    for n in range(8):
        forged = {"Authorization": "Bearer " + f"{n}" * 8000}
        response = client.post("/webhooks/status", data=body, headers=JSON | forged)
        assert response.status_code == 401
    [(offered, dropped)] = query(clean_db, "SELECT bytes, dropped FROM reject_window")
    assert offered >= 8 * (8000 + len(body))
    [(kept,)] = query(
        clean_db, "SELECT coalesce(sum(length(t)), 0) FROM rejected_callback, unnest(tokens) t"
    )
    assert kept <= 20_000 and dropped >= 6
