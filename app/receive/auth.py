"""Is this callback from Vonage? Signed-webhook JWTs, or HTTP Basic credentials.

Vonage signs each Dispatch callback with a JWT in `Authorization: Bearer`,
HS256 with the application's signature secret; its `payload_hash` claim is the
hex SHA-256 of the exact body. Pure: the clock and the settings come in as
arguments, and nothing here logs a secret or a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Literal

import jwt

from app.config import Settings

Method = Literal["signature", "basic", "none"]


# How far a token's `exp` and `nbf` may be off, for clocks that drift apart.
CLOCK_SKEW_SECONDS = 60


class AuthFailure(Exception):
    """The callback could not be shown to come from Vonage; the message is safe to send back."""


class Unsigned(AuthFailure):
    """No Authorization at all while signatures are required.

    Vonage sends a callback unsigned on a rare internal error of its own and
    retries it on a 5xx, so this one is answered 503, not refused for good.
    """


@dataclass(frozen=True)
class Credentials:
    """What a callback may prove itself with; empty means nothing is checked."""

    secrets: tuple[str, ...] = ()
    max_age_seconds: int = 300
    basic_user: str | None = None
    basic_password: str | None = None

    @property
    def required(self) -> bool:
        return bool(self.secrets or self.basic_user)

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        secrets = (settings.vonage_signature_secret, settings.vonage_signature_secret_previous)
        return cls(
            secrets=tuple(s for s in secrets if s),
            max_age_seconds=settings.signature_max_age_seconds,
            basic_user=settings.webhook_basic_user,
            basic_password=settings.webhook_basic_password,
        )


def authenticate(
    authorization: str | None, body: bytes, now: float, credentials: Credentials
) -> Method:
    """Check a callback's Authorization header against its exact body; raise AuthFailure."""
    if not credentials.required:
        return "none"
    if not authorization or not authorization.strip():
        message = "The callback carries no Authorization header."
        raise (Unsigned if credentials.secrets else AuthFailure)(message)
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and credentials.secrets:
        _check_signature(value.strip(), body, now, credentials)
        return "signature"
    if scheme == "basic" and credentials.basic_user is not None:
        _check_basic(value.strip(), credentials)
        return "basic"
    raise AuthFailure("The Authorization scheme is not one this service accepts.")


def bearer_token(authorization: str | None) -> str | None:
    """The token of a `Bearer` Authorization header, kept with a refusal so it can be re-checked."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    token = value.strip()
    # A JWT is three base64url parts; anything longer than a header can be is not one.
    return token if scheme.lower() == "bearer" and token and len(token) <= 8192 else None


def verify_kept_token(token: str, body: bytes, credentials: Credentials) -> None:
    """Re-check a kept token against today's secrets and its body, but not its age.

    The body is what Vonage signed (payload_hash), so a token that was refused
    under a wrong or rotated secret proves the body genuine later on; replaying
    it is at worst a harmless duplicate.
    """
    _check_signature(token, body, None, credentials)


def _check_signature(token: str, body: bytes, now: float | None, credentials: Credentials) -> None:
    claims = None
    for secret in credentials.secrets:
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                # Time is checked below against the injected clock, both ways.
                options={
                    "require": ["iat", "payload_hash"],
                    "verify_iat": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                },
            )
            break
        except jwt.InvalidSignatureError:
            continue  # perhaps signed with the other secret of a rotation
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailure(f"The token has no {exc.claim!r} claim.") from None
        except jwt.PyJWTError:
            raise AuthFailure("The token is not a valid HS256 JWT.") from None
    if claims is None:
        raise AuthFailure("The token's signature does not verify.")

    iat = _time_claim(claims, "iat")
    exp = _time_claim(claims, "exp")
    nbf = _time_claim(claims, "nbf")
    if now is not None:
        assert iat is not None  # required above
        if iat > now + credentials.max_age_seconds:
            raise AuthFailure("The token was issued in the future.")
        if iat < now - credentials.max_age_seconds:
            raise AuthFailure("The token is too old.")
        if exp is not None and exp < now - CLOCK_SKEW_SECONDS:
            raise AuthFailure("The token has expired ('exp').")
        if nbf is not None and nbf > now + CLOCK_SKEW_SECONDS:
            raise AuthFailure("The token is not valid yet ('nbf').")

    expected = hashlib.sha256(body).hexdigest()
    payload_hash = claims["payload_hash"]
    if not isinstance(payload_hash, str) or not hmac.compare_digest(
        payload_hash.lower().encode(), expected.encode()
    ):
        raise AuthFailure("The body does not match the token's payload_hash.")


def _time_claim(claims: dict[str, object], name: str) -> int | float | None:
    """A NumericDate claim: absent, or a finite number (NaN and booleans are not times)."""
    value = claims.get(name)
    if value is None:
        return None
    # An int is compared as it is: float() of a huge one would overflow.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthFailure(f"The token's {name!r} claim is not a time.")
    if isinstance(value, float) and not math.isfinite(value):
        raise AuthFailure(f"The token's {name!r} claim is not a time.")
    return value


def _check_basic(value: str, credentials: Credentials) -> None:
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthFailure("The Basic credentials are malformed.") from None
    assert credentials.basic_user is not None and credentials.basic_password is not None
    # Both compared in full, in constant time, so timing tells nothing.
    user_ok = hmac.compare_digest(user.encode(), credentials.basic_user.encode())
    password_ok = hmac.compare_digest(password.encode(), credentials.basic_password.encode())
    if not (sep and user_ok and password_ok):
        raise AuthFailure("The Basic credentials are wrong.")
