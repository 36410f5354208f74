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
from dataclasses import dataclass
from typing import Literal

import jwt

Method = Literal["signature", "basic", "none"]


class AuthFailure(Exception):
    """The callback could not be shown to come from Vonage; the message is safe to send back."""


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


def authenticate(
    authorization: str | None, body: bytes, now: float, credentials: Credentials
) -> Method:
    """Check a callback's Authorization header against its exact body; raise AuthFailure."""
    if not credentials.required:
        return "none"
    if not authorization:
        raise AuthFailure("The callback carries no Authorization header.")
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and credentials.secrets:
        _check_signature(value.strip(), body, now, credentials)
        return "signature"
    if scheme == "basic" and credentials.basic_user is not None:
        _check_basic(value.strip(), credentials)
        return "basic"
    raise AuthFailure("The Authorization scheme is not one this service accepts.")


def _check_signature(token: str, body: bytes, now: float, credentials: Credentials) -> None:
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

    iat = claims["iat"]
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise AuthFailure("The token's 'iat' claim is not a time.")
    if iat > now + credentials.max_age_seconds:
        raise AuthFailure("The token was issued in the future.")
    if iat < now - credentials.max_age_seconds:
        raise AuthFailure("The token is too old.")

    expected = hashlib.sha256(body).hexdigest()
    payload_hash = claims["payload_hash"]
    if not isinstance(payload_hash, str) or not hmac.compare_digest(
        payload_hash.lower().encode(), expected.encode()
    ):
        raise AuthFailure("The body does not match the token's payload_hash.")


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
