"""POST/GET /endpoints and DELETE /endpoints/<id>: the receivers of webhooks out (API_TOKEN)."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify
from marshmallow import ValidationError

from app.access import require_api_token
from app.bodies import json_body
from app.errors import ApiError
from app.extensions import get_db, get_settings
from app.outbound import endpoints

bp = Blueprint("endpoint_api", __name__)


@bp.post("/endpoints")
def add_endpoint() -> tuple[Response, int]:
    """Register an endpoint: {"url", "events" (optional), "description"}; its secret is in the
    answer, and only there."""
    require_api_token()
    body = json_body()
    try:
        fields = endpoints.check(body, get_settings())
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ApiError(422, "The endpoint cannot be registered.", messages) from None
    document = endpoints.add(
        get_db(), fields["url"], fields["events"], fields["description"], datetime.now(UTC)
    )
    return jsonify(document), 201


@bp.get("/endpoints")
def list_endpoints() -> Response:
    """Every endpoint with its health (never its secret)."""
    require_api_token()
    return jsonify({"endpoints": endpoints.listed(get_db())})


@bp.delete("/endpoints/<endpoint_id>")
def remove_endpoint(endpoint_id: str) -> tuple[str, int]:
    """Remove an endpoint; what was still to be sent to it is dropped."""
    require_api_token()
    if not (endpoint_id.isascii() and endpoint_id.isprintable() and len(endpoint_id) <= 100):
        # No id we hand out looks like that (a NUL could not even be sent to the database).
        raise ApiError(404, "No endpoint has that id.")
    try:
        endpoints.remove(get_db(), endpoint_id)
    except endpoints.NotFound:
        raise ApiError(404, f"No endpoint has the id {endpoint_id!r}.") from None
    return "", 204
