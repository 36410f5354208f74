"""GET /openapi.json: the service described from its own marshmallow schemas (apispec)."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from app.schemas import (
    ChannelField,
    FinalReportSchema,
    IsoTimestamp,
    MessageStatusSchema,
    PriceField,
)

bp = Blueprint("openapi", __name__)

_ERROR = {
    "type": "object",
    "required": ["code", "status", "message", "errors"],
    "properties": {
        "code": {"type": "integer"},
        "status": {"type": "string"},
        "message": {"type": "string"},
        "errors": {"type": "object"},
    },
}
_RECEIPT = {
    "type": "object",
    "required": ["status", "callback_id"],
    "properties": {
        "status": {"type": "string", "enum": ["accepted", "duplicate"]},
        "callback_id": {"type": "integer"},
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}
            },
        }
        for code, description in [
            (400, "Malformed JSON"),
            (401, "Not shown to come from Vonage"),
            (404, "Not found"),
            (413, "Body too large"),
            (415, "Not application/json"),
            (422, "Does not match the Dispatch API reference"),
            (503, "Database unavailable; retry after Retry-After seconds"),
        ]
        if code in codes
    }


def _webhook(schema: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{}, {"signature": []}, {"basic": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            },
            "responses": {
                "200": {
                    "description": "Accepted, or a duplicate of a stored callback",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Receipt"}}
                    },
                },
                **_errors(400, 401, 413, 415, 422, 503),
            },
        }
    }


def _read(name: str, summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": summary,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_errors(404, 503),
            },
        }
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3 document (built once; it depends only on the code)."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="dispatch-ledger",
        version="1",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Webhook receiver and read API for Vonage Dispatch callbacks."},
    )
    plugin.map_to_openapi_type(IsoTimestamp, "string", "date-time")  # type: ignore[no-untyped-call]
    plugin.map_to_openapi_type(PriceField, "string", None)  # type: ignore[no-untyped-call]
    plugin.map_to_openapi_type(ChannelField, "string", None)  # type: ignore[no-untyped-call]
    spec.components.schema("MessageStatus", schema=MessageStatusSchema)
    spec.components.schema("FinalReport", schema=FinalReportSchema)
    spec.components.schema("ErrorEnvelope", _ERROR)
    spec.components.schema("Receipt", _RECEIPT)
    spec.components.security_scheme(
        "signature", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    spec.components.security_scheme("basic", {"type": "http", "scheme": "basic"})
    spec.path(
        "/webhooks/message-status",
        operations=_webhook("MessageStatus", "Receive a message-status callback"),
    )
    spec.path(
        "/webhooks/final-report",
        operations=_webhook("FinalReport", "Receive a final-report callback"),
    )
    spec.path("/workflows/{dispatch_uuid}", operations=_read("dispatch_uuid", "One workflow"))
    spec.path("/messages/{message_uuid}", operations=_read("message_uuid", "One message"))
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI description of this service."""
    return jsonify(document())
