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


def require_read_access() -> None:
    """With READ_API_TOKEN set, reading workflows, messages and metrics needs it (or API_TOKEN).

    Unset, the read API is open, as its contract has it: its documents carry
    ids, statuses and costs, never numbers or texts.
    """
    settings = get_settings()
    if settings.read_api_token and not _bearer_is(settings.read_api_token, settings.api_token):
        raise ApiError(401, "A valid read token is required.", headers=_CHALLENGE)
