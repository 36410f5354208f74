"""Authenticity as pure code: signatures, payload hashes, clocks, Basic credentials."""

from __future__ import annotations

import base64
import hashlib
import time

import jwt
import pytest
from freezegun import freeze_time

from app.receive.auth import AuthFailure, Credentials, authenticate
from tests.signing import OLD_SECRET, SECRET, token

BODY = b'{"message_uuid": "m", "status": "submitted"}'
SIGNED = Credentials(secrets=(SECRET,), max_age_seconds=300)
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def header(value: str) -> str:
    return f"Bearer {value}"


def test_nothing_configured_checks_nothing() -> None:
    assert authenticate(None, BODY, NOW, Credentials()) == "none"


def test_a_vonage_signed_callback_is_accepted() -> None:
    assert authenticate(header(token(BODY, iat=NOW)), BODY, NOW, SIGNED) == "signature"


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "no Authorization"),
        ("", "no Authorization"),
        ("Token abc", "scheme"),
        ("Basic dXNlcjpwYXNz", "scheme"),  # Basic not configured
        ("Bearer not.a.jwt", "not a valid"),
        ("Bearer ", "not a valid"),
    ],
)
def test_missing_or_malformed_credentials_are_refused(
    authorization: str | None, reason: str
) -> None:
    with pytest.raises(AuthFailure, match=reason):
        authenticate(authorization, BODY, NOW, SIGNED)


def test_forged_signature_is_refused() -> None:
    forged = token(BODY, secret="someone-elses-secret-entirely-32b", iat=NOW)
    with pytest.raises(AuthFailure, match="signature does not verify"):
        authenticate(header(forged), BODY, NOW, SIGNED)


def test_tampered_body_is_refused() -> None:
    tampered = BODY.replace(b"submitted", b"delivered")
    with pytest.raises(AuthFailure, match="payload_hash"):
        authenticate(header(token(BODY, iat=NOW)), tampered, NOW, SIGNED)


@pytest.mark.parametrize("algorithm", ["HS512", "none"])
def test_other_algorithms_are_refused(algorithm: str) -> None:
    claims = {"iat": NOW, "payload_hash": "x"}
    key = SECRET * 2 if algorithm != "none" else None  # HS512 wants 64 bytes
    forged = jwt.encode(claims, key, algorithm=algorithm)  # type: ignore[arg-type]
    with pytest.raises(AuthFailure):
        authenticate(header(forged), BODY, NOW, SIGNED)


@pytest.mark.parametrize("missing", ["iat", "payload_hash"])
def test_tokens_without_the_needed_claims_are_refused(missing: str) -> None:
    claims = {"iat": NOW, "payload_hash": hashlib.sha256(BODY).hexdigest()}
    del claims[missing]
    incomplete = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthFailure, match=missing):
        authenticate(header(incomplete), BODY, NOW, SIGNED)


@pytest.mark.parametrize(
    ("age", "accepted"),
    [(0, True), (300, True), (301, False), (-300, True), (-301, False), (86_400, False)],
)
def test_token_age_is_checked_both_ways_at_the_exact_boundary(age: int, accepted: bool) -> None:
    signed = header(token(BODY, iat=NOW - age))
    if accepted:
        assert authenticate(signed, BODY, NOW, SIGNED) == "signature"
    else:
        with pytest.raises(AuthFailure, match="too old" if age > 0 else "future"):
            authenticate(signed, BODY, NOW, SIGNED)


def test_the_wall_clock_is_what_the_view_passes() -> None:
    with freeze_time("2026-01-01T00:00:00Z"):
        signed = header(token(BODY))  # iat from the frozen clock
    with freeze_time("2026-01-01T00:05:00Z"):
        assert authenticate(signed, BODY, time.time(), SIGNED) == "signature"
    with freeze_time("2026-01-01T00:05:01Z"), pytest.raises(AuthFailure, match="too old"):
        authenticate(signed, BODY, time.time(), SIGNED)


def test_rotation_accepts_the_current_and_the_previous_secret() -> None:
    rotating = Credentials(secrets=(SECRET, OLD_SECRET))
    for secret in (SECRET, OLD_SECRET):
        assert authenticate(header(token(BODY, secret, iat=NOW)), BODY, NOW, rotating)
    # Once the rotation is over, the old secret no longer works.
    with pytest.raises(AuthFailure):
        authenticate(header(token(BODY, OLD_SECRET, iat=NOW)), BODY, NOW, SIGNED)


BASIC = Credentials(basic_user="vonage", basic_password="s3cret:with:colons")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_credentials_when_configured() -> None:
    assert authenticate(basic("vonage", "s3cret:with:colons"), BODY, NOW, BASIC) == "basic"
    for user, password in [("vonage", "wrong"), ("other", "s3cret:with:colons"), ("vonage", "")]:
        with pytest.raises(AuthFailure, match="wrong"):
            authenticate(basic(user, password), BODY, NOW, BASIC)
    with pytest.raises(AuthFailure, match="malformed"):
        authenticate("Basic %%%", BODY, NOW, BASIC)


def test_either_method_when_both_are_configured() -> None:
    both = Credentials(secrets=(SECRET,), basic_user="vonage", basic_password="pw")
    assert authenticate(header(token(BODY, iat=NOW)), BODY, NOW, both) == "signature"
    assert authenticate(basic("vonage", "pw"), BODY, NOW, both) == "basic"


def test_failure_messages_never_contain_the_secret_or_the_token() -> None:
    forged = token(BODY, secret="x" * 32, iat=NOW)
    for authorization in (header(forged), header(token(BODY, iat=NOW - 999))):
        with pytest.raises(AuthFailure) as caught:
            authenticate(authorization, BODY, NOW, SIGNED)
        assert SECRET not in str(caught.value)
        assert forged not in str(caught.value)
