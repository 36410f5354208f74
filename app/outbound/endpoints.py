"""Where endpoints are registered, removed, given new secrets, enabled and replayed to.

The HTTP API (`/endpoints`) and the command (`dispatch-ledger endpoints`) both
call these, so they check and answer alike.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from app.config import Settings
from app.model.times import iso
from app.outbound import addresses, signing
from app.store import endpoints as stored
from app.store.db import Database
from app.store.events import TYPES
from app.store.queries import sql

# After a rotation the previous secret signs too, for this long: receivers
# have a day to switch to the new one.
ROTATION_GRACE = timedelta(hours=24)
MAX_DESCRIPTION_CHARS = 500


class NotFound(LookupError):
    """No endpoint has that id."""


class EndpointSchema(Schema):
    """POST /endpoints' body (an unknown field is refused, named: marshmallow's default)."""

    url = fields.String(required=True)
    events = fields.List(
        fields.String(validate=validate.OneOf(TYPES)),
        validate=validate.Length(min=1, max=len(TYPES)),
        load_default=None,
    )
    description = fields.String(
        load_default="", validate=validate.Length(max=MAX_DESCRIPTION_CHARS)
    )

    @validates("events")
    def _unique(self, value: list[str] | None, **_: Any) -> None:
        if value is not None and len(set(value)) != len(value):
            raise ValidationError("Each event type once.")


def check(body: Any, settings: Settings) -> dict[str, Any]:
    """A registration's fields, checked; marshmallow's ValidationError names what is wrong."""
    if not isinstance(body, dict):
        raise ValidationError({"_schema": ["A JSON object is required."]})
    loaded: dict[str, Any] = EndpointSchema().load(body)
    try:
        addresses.check_url(
            loaded["url"],
            allow_http=settings.endpoints_allow_http,
            allow_private=settings.endpoints_allow_private,
        )
    except addresses.NotAllowed as exc:
        raise ValidationError({"url": [f"Not allowed: {exc}."]}) from None
    return loaded


def add(
    db: Database,
    url: str,
    event_types: list[str] | None,
    description: str,
    now: datetime,
) -> dict[str, Any]:
    """Register a checked endpoint; its document with the secret (shown only now)."""
    params = {
        "endpoint_id": "ep_" + secrets.token_hex(12),
        "url": url,
        "event_types": sorted(event_types) if event_types else None,
        "description": description,
        "secret": signing.new_secret(),
        "now": now,
    }
    row = db.run(lambda conn: conn.execute(sql("insert_endpoint"), params).fetchone())
    assert row is not None
    return {**_document(row), "secret": row["secret"]}


def listed(db: Database) -> list[dict[str, Any]]:
    """Every endpoint and its health (no secrets)."""
    rows = db.run(stored.listed)
    return [{**_document(row), **_health(row)} for row in rows]


def remove(db: Database, endpoint_id: str) -> None:
    if not _one(db, "delete_endpoint", {"endpoint_id": endpoint_id}):
        raise NotFound(endpoint_id)


def rotate_secret(db: Database, endpoint_id: str, now: datetime) -> str:
    """A new secret (returned); the previous one signs too for ROTATION_GRACE."""
    secret = signing.new_secret()
    params = {"endpoint_id": endpoint_id, "secret": secret, "until": now + ROTATION_GRACE}
    if not _one(db, "rotate_secret", params):
        raise NotFound(endpoint_id)
    return secret


def enable(db: Database, endpoint_id: str, now: datetime) -> None:
    """Turn it back on: events from now on, and what waited is due again."""
    _exists(db, endpoint_id)
    db.run(
        lambda conn: conn.execute(sql("enable_endpoint"), {"endpoint_id": endpoint_id, "now": now})
    )


def replay(db: Database, endpoint_id: str, since: datetime, now: datetime) -> int:
    """Queue again what it has not received of the events made since `since`; how many."""
    _exists(db, endpoint_id)
    params = {"endpoint_id": endpoint_id, "since": since, "now": now}
    return db.run(lambda conn: len(conn.execute(sql("replay_endpoint"), params).fetchall()))


def _exists(db: Database, endpoint_id: str) -> None:
    if not _one(db, "endpoint_exists", {"endpoint_id": endpoint_id}):
        raise NotFound(endpoint_id)


def _one(db: Database, query: str, params: dict[str, Any]) -> bool:
    return db.run(lambda conn: conn.execute(sql(query), params).fetchone()) is not None


def _document(row: Any) -> dict[str, Any]:
    return {
        "id": row["endpoint_id"],
        "url": row["url"],
        "events": list(row["event_types"]) if row["event_types"] else list(TYPES),
        "description": row["description"],
        "created_at": iso(row["created_at"]),
    }


def _health(row: Any) -> dict[str, Any]:
    def at(name: str) -> str | None:
        return iso(row[name]) if row[name] is not None else None

    return {
        "enabled": row["disabled_at"] is None,
        "disabled_at": at("disabled_at"),
        "disabled_reason": row["disabled_reason"],
        "pending": row["pending"],
        "oldest_pending_at": at("oldest_pending_at"),
        "last_attempt_at": at("last_attempt_at"),
        "last_outcome": row["last_outcome"],
        "last_delivered_at": at("last_delivered_at"),
    }
