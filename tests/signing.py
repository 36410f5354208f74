"""Sign callbacks the way Vonage does, for tests."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import jwt

SECRET = "a-signature-secret-of-32-bytes!!"
OLD_SECRET = "the-previous-secret-being-rotated"


def token(body: bytes, secret: str = SECRET, iat: float | None = None, **claims: Any) -> str:
    payload: dict[str, Any] = {
        "iat": int(time.time()) if iat is None else iat,
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": "abcd1234",
        "application_id": "aaaaaaaa-0000-0000-0000-000000000000",
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(body: bytes, secret: str = SECRET, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(body, secret, **claims)}"}
