"""Who may use the owner's endpoints and, when the operator asks for it, the read API."""

from __future__ import annotations

import hmac

from flask import request

from app.errors import ApiError
from app.extensions import get_settings

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _bearer_is(*tokens: str | None) -> bool:
    scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Every configured token is compared, in constant time each.
    matches = [hmac.compare_digest(given.strip().encode(), t.encode()) for t in tokens if t]
    return any(matches)


def require_api_token() -> None:
    """Definitions are the account owner's: a bearer API_TOKEN is required.

    Sending and recording act for the owner; a stored definition holds the
    recipients' numbers and the message texts, which the read API never shows.
    """
    token = get_settings().api_token
    if not token:
        raise ApiError(403, "This endpoint is off: set API_TOKEN to enable it.")
    if not _bearer_is(token):
        raise ApiError(401, "A valid API token is required.", headers=_CHALLENGE)


def has_read_access() -> bool:
    """Whether this request may read workflows, messages and metrics (Settings.read_tokens)."""
    tokens = get_settings().read_tokens()
    return tokens is None or _bearer_is(*tokens)


def require_read_access() -> None:
    """Reading workflows, messages and metrics: open locally, a token on a deployment.

    The documents carry ids, statuses, costs, error reasons and the sender's
    client_ref (never numbers or texts): a business's traffic, not for anyone
    who finds the URL.
    """
    tokens = get_settings().read_tokens()
    if tokens is None or _bearer_is(*tokens):
        return
    if not tokens:
        raise ApiError(
            403,
            "The read API is closed: set READ_API_TOKEN (or API_TOKEN) to read with it,"
            " or READ_API_OPEN=true to open it to anyone.",
        )
    raise ApiError(401, "A valid read token is required.", headers=_CHALLENGE)
