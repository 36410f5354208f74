"""Standard Webhooks signatures: what a receiver checks with any of its libraries.

The signed content is `<webhook-id>.<webhook-timestamp>.<body>`, the MAC is
HMAC-SHA256 keyed with the base64-decoded part of the `whsec_` secret, and
the header holds `v1,<base64 MAC>`, one per secret, space-separated (during
a rotation both the new and the previous secret sign).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
# 24 random bytes: the 192 bits Standard Webhooks asks for at the least.
SECRET_BYTES = 24


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secrets_: list[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a delivery, signed with each secret given."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            signature(secret, webhook_id, timestamp, body) for secret in secrets_
        ),
    }
