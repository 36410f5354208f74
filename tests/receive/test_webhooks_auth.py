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

from app import create_app
from app.extensions import get_db
from app.receive import rejects
from app.receive.auth import Credentials
from app.store.db import Database
from tests import payloads
from tests.conftest import query, settle
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
    "forged": (bearer(BODY, "an-attacker-guessing-a-secret-32b"), BODY),
    "tampered": (bearer(BODY), BODY.replace(b"delivered", b"read")),
    "stale": (bearer(BODY, iat=0), BODY),
    "future": (bearer(BODY, iat=4_102_444_800), BODY),  # 2100-01-01
    "other scheme": ({"Authorization": "Token " + token(BODY)}, BODY),
    "NaN iat": (bearer(BODY, iat=float("nan")), BODY),
    "expired": (bearer(BODY, exp=1_000_000_000), BODY),
    "not yet valid": (bearer(BODY, nbf=4_102_444_800), BODY),
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
    # A bearer token is kept with the body (to be verified again after a
    # secret is fixed); no other credential is, and nothing is echoed or logged.
    offered = headers["Authorization"].split(" ", 1)[-1]
    kept_tokens = [offered] if headers["Authorization"].startswith("Bearer ") else []
    assert query(clean_db, "SELECT tokens FROM rejected_callback") == [(kept_tokens,)]
    stored = json.dumps(query(clean_db, "SELECT message, errors::text FROM rejected_callback"))
    for secret in (SECRET, OLD_SECRET, offered):
        assert secret not in response.get_data(as_text=True)
        assert secret not in caplog.text
        assert secret not in stored


def _reprocess(db: Database, *secrets: str) -> rejects.ReprocessSummary:
    return rejects.reprocess(db, Credentials(secrets=secrets), 32, datetime.now(UTC))


def test_an_unsigned_callback_gets_503_so_vonage_retries_it(
    signed: FlaskClient, clean_db: str, db: Database
) -> None:
    for _ in range(3):
        response = signed.post("/webhooks/message-status", data=BODY, headers=JSON)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert response.json is not None and "Authorization" in response.json["message"]
    assert query(clean_db, "SELECT reason, http_status, attempts FROM rejected_callback") == [
        ("unsigned", 503, 3)
    ]
    # Its content is never applied unverified: replaying it waits for the retry.
    summary = _reprocess(db, SECRET)
    assert (summary.recovered, summary.still_rejected, summary.remaining) == (0, 1, 1)
    assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(0,)]
    # Vonage's retry comes signed: accepted, and the kept copy is then settled.
    assert send(signed, bearer(BODY))[0] == 200
    summary = _reprocess(db, SECRET)
    assert (summary.duplicates, summary.remaining) == (1, 0)
    assert query(
        clean_db, "SELECT resolved_at IS NOT NULL, raw_callback_id FROM rejected_callback"
    ) == [(True, 1)]


def test_an_empty_authorization_header_is_unsigned_too(signed: FlaskClient) -> None:
    assert send(signed, {"Authorization": "  "})[0] == 503


def test_after_a_wrong_secret_is_fixed_the_kept_tokens_recover_the_genuine_callbacks(
    clean_db: str, db: Database
) -> None:
    """An operator set the wrong secret: Vonage's callbacks got 401 and were dropped by Vonage."""
    wrong = create_app({"database_url": clean_db, "vonage_signature_secret": "w" * 32})
    genuine = [
        json.dumps(payloads.status(f"m-{i}", "delivered", "2020-01-01T15:00:00Z")).encode()
        for i in range(3)
    ]
    forged = json.dumps(payloads.status("m-forged", "read", "2020-01-01T15:00:00Z")).encode()
    try:
        client = wrong.test_client()
        # Signed with the real secret long ago: replay ignores the token's age.
        headers = [bearer(genuine[0]), bearer(genuine[1], iat=0), bearer(genuine[2])]
        for body, header in zip(genuine, headers, strict=True):
            assert send(client, header, body)[0] == 401
        assert send(client, bearer(forged, "an-attacker-guessing-a-secret-32b"), forged)[0] == 401
        # A genuine token over another body (tampered in flight) proves nothing.
        assert send(client, bearer(genuine[0]), genuine[0].replace(b"delivered", b"read"))[0] == 401
    finally:
        get_db(wrong).close()

    assert _reprocess(db, "w" * 32).remaining == 5  # still the wrong secret: nothing recovered
    summary = _reprocess(db, SECRET)
    assert (summary.recovered, summary.still_rejected, summary.remaining) == (3, 2, 2)
    stored = query(clean_db, "SELECT message_uuid, status FROM message ORDER BY 1")
    assert stored == [("m-0", "delivered"), ("m-1", "delivered"), ("m-2", "delivered")]


def test_a_reject_keeps_the_latest_few_distinct_tokens(signed: FlaskClient, clean_db: str) -> None:
    for n in range(10):
        assert send(signed, bearer(BODY, "x" * 32, jti=str(n % 9)))[0] == 401
    [(tokens, attempts)] = query(clean_db, "SELECT tokens, attempts FROM rejected_callback")
    assert attempts == 10
    assert len(tokens) == 8 == len(set(tokens))


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
        assert send(client, {})[0] == 401  # no signature expected, so not Vonage's fallback
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
    settle(get_db(signed.application))
    assert signed.get("/messages/aaaaaaaa-bbbb-cccc-dddd-0123456789ab").status_code == 200
