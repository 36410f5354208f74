"""Signed webhooks over HTTP: only Vonage gets in, and refusals are kept."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app, ingest
from app.db import Database
from app.extensions import get_db
from tests import payloads
from tests.conftest import query
from tests.signing import OLD_SECRET, SECRET, bearer, token

BODY = json.dumps(payloads.fixture("message_status_sample.json")).encode()
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def signed_app(clean_db: str) -> Iterator[Flask]:
    app = create_app(
        {
            "database_url": clean_db,
            "vonage_signature_secret": SECRET,
            "vonage_signature_secret_previous": OLD_SECRET,
        }
    )
    yield app
    get_db(app).close()


@pytest.fixture
def signed(signed_app: Flask) -> FlaskClient:
    return signed_app.test_client()


def send(client: FlaskClient, headers: dict[str, str], body: bytes = BODY) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = client.post("/webhooks/message-status", data=body, headers={**JSON, **headers})
    assert response.is_json
    return response.status_code, response.json  # type: ignore[return-value]


def test_a_signed_callback_is_accepted_and_its_replay_is_a_duplicate(signed: FlaskClient) -> None:
    headers = bearer(BODY)
    assert send(signed, headers) == (200, {"status": "accepted", "callback_id": 1})
    # The very same token and body again (a provider retry): no second effect.
    assert send(signed, headers) == (200, {"status": "duplicate", "callback_id": 1})


def test_the_previous_secret_works_during_a_rotation(signed: FlaskClient) -> None:
    assert send(signed, bearer(BODY, OLD_SECRET))[0] == 200


REFUSED = {
    "unsigned": ({}, BODY),
    "forged": (bearer(BODY, "an-attacker-guessing-a-secret-32b"), BODY),
    "tampered": (bearer(BODY), BODY.replace(b"delivered", b"read")),
    "stale": (bearer(BODY, iat=0), BODY),
    "future": (bearer(BODY, iat=4_102_444_800), BODY),  # 2100-01-01
    "other scheme": ({"Authorization": "Token " + token(BODY)}, BODY),
    "malformed and unsigned": ({}, b"{not json"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_forged_tampered_stale_and_unsigned_callbacks_are_refused_and_kept(
    signed: FlaskClient, clean_db: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    headers, body = REFUSED[case]
    with caplog.at_level(logging.WARNING):
        response = signed.post("/webhooks/message-status", data=body, headers={**JSON, **headers})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json is not None
    assert set(response.json) == {"code", "status", "message", "errors"}
    assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(0,)]
    assert query(clean_db, "SELECT body, reason, http_status FROM rejected_callback") == [
        (body, "unauthorized", 401)
    ]
    # Neither the secret nor the token is echoed, logged or stored.
    secrets = [SECRET, OLD_SECRET, *(v.split(" ", 1)[-1] for v in headers.values())]
    stored = json.dumps(query(clean_db, "SELECT message, errors::text FROM rejected_callback"))
    for secret in secrets:
        assert secret not in response.get_data(as_text=True)
        assert secret not in caplog.text
        assert secret not in stored


def test_refused_deliveries_are_counted_and_never_replayed(
    signed: FlaskClient, clean_db: str, db: Database
) -> None:
    for _ in range(3):
        assert send(signed, {})[0] == 401
    assert query(clean_db, "SELECT attempts FROM rejected_callback") == [(3,)]
    summary = ingest.reprocess_rejects(db, 32, datetime(2026, 1, 1, tzinfo=UTC))
    assert (summary.recovered, summary.still_rejected) == (0, 0)
    assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(0,)]


def test_basic_credentials_instead_of_signatures(clean_db: str) -> None:
    app = create_app(
        {"database_url": clean_db, "webhook_basic_user": "vonage", "webhook_basic_password": "pw"}
    )
    try:
        client = app.test_client()
        good = "Basic " + base64.b64encode(b"vonage:pw").decode()
        bad = "Basic " + base64.b64encode(b"vonage:guess").decode()
        assert send(client, {"Authorization": good})[0] == 200
        assert send(client, {"Authorization": bad})[0] == 401
        assert send(client, bearer(BODY))[0] == 401  # no secret configured
    finally:
        get_db(app).close()


def test_without_credentials_the_service_starts_and_warns_loudly(
    clean_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_app({"database_url": clean_db})
    try:
        assert "NOT AUTHENTICATED" in caplog.text
        assert send(app.test_client(), {})[0] == 200
    finally:
        get_db(app).close()


def test_the_read_api_needs_no_signature(signed: FlaskClient) -> None:
    assert send(signed, bearer(BODY))[0] == 200
    assert signed.get("/messages/aaaaaaaa-bbbb-cccc-dddd-0123456789ab").status_code == 200
