"""GET /openapi.json: the service described from its own marshmallow schemas (apispec)."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from app.spec.definitions import (
    CHANNEL_CONTENT,
    E164,
    MAX_STEPS,
    REQUIRED_PARTY_FIELDS,
    TEXT_LIMITS,
    DispatchRequestSchema,
)
from app.spec.messages_request import (
    BLANK,
    CHANNELS,
    MEDIA,
    MESSAGE_TYPES,
    TTL_RANGES,
    FailoverRequestSchema,
)
from app.spec.messages_request import TEXT_LIMITS as MESSAGES_TEXT_LIMITS
from app.spec.schemas import (
    ChannelField,
    CodeOrText,
    CountField,
    FinalReportSchema,
    IsoTimestamp,
    MessagesStatusSchema,
    MessageStatusSchema,
    PriceField,
)
from app.store import events

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


_ERRORS = {
    400: "Malformed JSON",
    401: "Not shown to come from Vonage",
    403: "Off: API_TOKEN is not set",
    404: "Not found",
    413: "Body too large",
    415: "Not application/json",
    422: "Does not match the Dispatch API reference",
    502: "Dispatch refused the request or could not be reached (nothing sent), or answered"
    " 2xx without the workflow's id (it may have been sent: see the message)",
    503: "Database unavailable (a callback it would refuse too: it cannot be kept now), or a"
    " callback came unsigned while signatures are required; retry after Retry-After seconds"
    " (Vonage does)",
    504: "Vonage did not answer: the workflow may have been sent; do not send it again blindly",
}
_TOKEN_REQUIRED = {401: "A valid API token is required"}


def _errors(*codes: int, described: dict[int, str] | None = None) -> dict[str, Any]:
    descriptions = _ERRORS | (described or {})
    return {
        str(code): {
            "description": descriptions[code],
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}
            },
        }
        for code in codes
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Any status URL takes every kind, told apart by shape as intake.kind_of
# does: a status has message_uuid (the Messages API's with string parties);
# a final report has dispatch_uuid (and template) and no message_uuid; a body
# with both shapes is refused. Each alternative here is one kind_of reads
# the same way (a little narrower than what it accepts).
_CALLBACK = {
    "oneOf": [
        {
            "allOf": [
                {"$ref": "#/components/schemas/MessageStatus"},
                {"not": {"required": ["dispatch_uuid", "template"]}},
                # A top-level channel or workflow is the Messages API's.
                {"not": {"anyOf": [{"required": ["channel"]}, {"required": ["workflow"]}]}},
            ]
        },
        {
            # The Messages API's status: its `to` is a string (Dispatch's an object).
            "allOf": [
                {"$ref": "#/components/schemas/MessagesStatus"},
                {"not": {"required": ["dispatch_uuid", "template"]}},
                {"required": ["to"], "properties": {"to": {"type": "string"}}},
            ]
        },
        {
            "allOf": [
                {"$ref": "#/components/schemas/FinalReport"},
                {"not": {"required": ["message_uuid"]}},
            ]
        },
    ]
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


# Open unless READ_API_TOKEN is set; then that token or API_TOKEN.
_READ_SECURITY: list[dict[str, list[str]]] = [{}, {"readToken": []}, {"apiToken": []}]
_READ_REFUSED = {401: "A valid read token is required (READ_API_TOKEN is set)"}


def _read(
    name: str,
    summary: str,
    document: dict[str, Any] | None = None,
    query: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (401, 404, 503),
) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": _READ_SECURITY,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}},
                *(query or []),
            ],
            "responses": {
                "200": {
                    "description": summary,
                    "content": {"application/json": {"schema": document or {"type": "object"}}},
                },
                **_errors(*errors, described=_READ_REFUSED),
            },
        }
    }


# A workflow's messages come a page at a time (readmodel.MESSAGES_PAGE in its
# document), so that no document grows with what a workflow claims to hold.
_NEXT_PAGE = {
    "type": ["string", "null"],
    "description": "The path of the next page of messages (GET /workflows/{dispatch_uuid}"
    "/messages?after=...), or null when there are no more",
}
_WORKFLOW_DOCUMENT = {
    "type": "object",
    "description": "One workflow. Its messages are paged: `messages` holds the first 100 in the"
    " order they were sent, `messages_total` says how many there are, `messages_next` where the"
    " rest are. `discrepancies` lists the first 100 of `discrepancies_total`.",
    "required": ["dispatch_uuid", "messages", "messages_total", "messages_next"],
    "properties": {
        "dispatch_uuid": {"type": "string"},
        "messages": {"type": "array", "maxItems": 100, "items": {"type": "object"}},
        "messages_total": {"type": "integer", "minimum": 0},
        "messages_next": _NEXT_PAGE,
        "discrepancies": {"type": "array", "items": {"type": "object"}},
        "discrepancies_total": {"type": "integer", "minimum": 0},
    },
}
_MESSAGES_PAGE = {
    "type": "object",
    "description": "A page of a workflow's messages, in the order they were sent.",
    "required": ["dispatch_uuid", "messages", "messages_total", "next"],
    "properties": {
        "dispatch_uuid": {"type": "string"},
        "messages": {"type": "array", "maxItems": 1000, "items": {"type": "object"}},
        "messages_total": {"type": "integer", "minimum": 0},
        "next": _NEXT_PAGE,
    },
}


def _query(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """An optional query argument."""
    parameter = {"name": name, "in": "query", "required": False, "schema": schema}
    if description is not None:
        parameter["description"] = description
    return parameter


_PAGE_QUERY = [
    _query(
        "after",
        {"type": "string"},
        "The last message of the previous page (its message_uuid)",
    ),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
]


# A workflow is sent or recorded from either API's request, told apart by
# shape as messages_request.is_messages_request does (Dispatch's has
# `workflow` and `template`).
_WORKFLOW_REQUEST = {
    "oneOf": [
        {"$ref": "#/components/schemas/DispatchRequest"},
        {"$ref": "#/components/schemas/MessagesFailoverRequest"},
    ]
}
_OBJECT = {"type": "object"}
_PATH_ID = {"name": "dispatch_uuid", "in": "path", "required": True, "schema": {"type": "string"}}


def _workflows() -> dict[str, Any]:
    return {
        "get": {
            "summary": "Overdue workflows (overdue=true), or the latest to change",
            "security": _READ_SECURITY,
            "parameters": [
                _query("overdue", {"type": "string", "enum": ["true", "false"]}),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                _query("grace", {"type": "integer", "minimum": 0, "maximum": 7 * 86400}),
            ],
            "responses": {
                "200": _json(_OBJECT, "The workflows"),
                **_errors(400, 401, 503, described=_READ_REFUSED),
            },
        },
        "post": {
            "summary": "Validate a Dispatch or Messages API failover request, send it to"
            " Vonage, and record it",
            "security": [{"apiToken": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _WORKFLOW_REQUEST}},
            },
            "responses": {
                "202": _json(
                    {
                        "type": "object",
                        "required": ["dispatch_uuid", "recorded"],
                        "properties": {
                            "dispatch_uuid": {"type": "string"},
                            "recorded": {"type": "boolean"},
                            "message": {"type": "string"},
                        },
                    },
                    "Sent; recorded unless `recorded` is false (then `message` says what"
                    " to do, and it must not be sent again)",
                ),
                **_errors(400, 401, 403, 413, 415, 422, 502, 503, 504, described=_TOKEN_REQUIRED),
            },
        },
    }


_EVENT = {
    "type": "object",
    "description": "A workflow event: `data` is the workflow's summary when it was made, with"
    " its per-workflow `sequence` (and `previous_status`, `overdue` or `discrepancy`)",
    "required": ["id", "type", "timestamp", "data"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": list(events.TYPES)},
        "timestamp": {"type": "string"},
        "data": {"type": "object", "required": ["dispatch_uuid", "sequence", "status"]},
    },
}


def _feed() -> dict[str, Any]:
    return {
        "get": {
            "summary": "The change feed: workflow events after a cursor, in commit order",
            "security": _READ_SECURITY,
            "parameters": [
                _query(
                    "after",
                    {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    "The `next` of the page before (absent: from the first event kept)",
                ),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "At most"),
                _query(
                    "wait",
                    {"type": "number", "minimum": 0, "maximum": 30},
                    "Seconds to wait for an event when none is there yet (a long poll)",
                ),
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["events", "next"],
                        "properties": {
                            "events": {"type": "array", "items": _EVENT},
                            "next": {"type": "string"},
                        },
                    },
                    "A page of events, and the cursor to ask after next",
                ),
                **_errors(400, 401, 503, described=_READ_REFUSED),
            },
        }
    }


_ENDPOINT = {
    "type": "object",
    "required": ["id", "url", "events", "description", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "url": {"type": "string"},
        "events": {"type": "array", "items": {"type": "string", "enum": list(events.TYPES)}},
        "description": {"type": "string"},
        "created_at": {"type": "string"},
    },
}


def _endpoints() -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {
                "type": "string",
                "description": "https, a public address (unless ENDPOINTS_ALLOW_HTTP,"
                " ENDPOINTS_ALLOW_PRIVATE); no fragment",
            },
            "events": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "string", "enum": list(events.TYPES)},
            },
            "description": {"type": "string", "maxLength": 500},
        },
    }
    added = {
        "allOf": [
            _ENDPOINT,
            {"required": ["secret"], "properties": {"secret": {"type": "string"}}},
        ]
    }
    return {
        "post": {
            "summary": "Register an endpoint for signed webhooks out (its secret is shown"
            " only in this answer)",
            "security": [{"apiToken": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "201": _json(added, "Registered"),
                **_errors(400, 401, 403, 413, 415, 422, 503, described=_TOKEN_REQUIRED),
            },
        },
        "get": {
            "summary": "Every endpoint with its health (never its secret)",
            "security": [{"apiToken": []}],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["endpoints"],
                        "properties": {"endpoints": {"type": "array", "items": _ENDPOINT}},
                    },
                    "The endpoints",
                ),
                **_errors(401, 403, 503, described=_TOKEN_REQUIRED),
            },
        },
    }


def _endpoint() -> dict[str, Any]:
    return {
        "delete": {
            "summary": "Remove an endpoint; what was still to be sent to it is dropped",
            "security": [{"apiToken": []}],
            "parameters": [
                {
                    "name": "endpoint_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "204": {"description": "Removed"},
                **_errors(401, 403, 404, 503, described=_TOKEN_REQUIRED),
            },
        }
    }


def _definition() -> dict[str, Any]:
    return {
        "put": {
            "summary": "Record the definition of a workflow another system sent (a Dispatch"
            " request or a Messages API failover request)",
            "security": [{"apiToken": []}],
            "parameters": [_PATH_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _WORKFLOW_REQUEST}},
            },
            "responses": {
                "200": _json(_OBJECT, "Replaced"),
                "201": _json(_OBJECT, "Recorded"),
                **_errors(
                    400,
                    401,
                    403,
                    404,
                    409,
                    413,
                    415,
                    422,
                    503,
                    described=_TOKEN_REQUIRED
                    | {409: "The workflow is one of the other API's (Dispatch or Messages)"},
                ),
            },
        },
        "get": {
            "summary": "A workflow's stored definition (it holds numbers and texts)",
            "security": [{"apiToken": []}],
            "parameters": [_PATH_ID],
            "responses": {
                "200": _json(_OBJECT, "The definition"),
                **_errors(401, 403, 404, 503, described=_TOKEN_REQUIRED),
            },
        },
    }


def _schema_name(schema: Any) -> str:
    # Callbacks and Dispatch requests both have parties and media, of other
    # shapes: the request's own are prefixed so that neither hides the other.
    # The Messages API request's are prefixed with the API's name.
    # A schema narrowed with only=... is a shape of its own, named after it.
    cls = schema if isinstance(schema, type) else type(schema)
    name: str = cls.__name__.removesuffix("Schema")
    only = getattr(schema, "only", None) if not isinstance(schema, type) else None
    name += "".join(field.title() for field in sorted(only or ()))
    prefix = {"app.spec.definitions": "Request", "app.spec.messages_request": "Messages"}
    return prefix.get(cls.__module__, "") + name


# What intake.parse_json refuses anywhere in a body (PostgreSQL's jsonb and
# text cannot hold it), said in the schema: no NUL in any string or key,
# known field or not.
_NO_NUL = "^[^\\u0000]*$"
_JSON_VALUE = {
    "anyOf": [
        {"type": "string", "pattern": _NO_NUL},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": _NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        },
    ]
}


def _storable(schema: Any) -> None:
    """Say in every request schema what a body must be to be stored (see _NO_NUL)."""
    if isinstance(schema, list):
        for item in schema:
            _storable(item)
        return
    if not isinstance(schema, dict):
        return
    kinds = schema.get("type")
    is_string = kinds == "string" or (isinstance(kinds, list) and "string" in kinds)
    if is_string and "pattern" not in schema and "enum" not in schema:
        schema["pattern"] = _NO_NUL  # applies to strings only; null stays allowed
    free_form = kinds == "object" and schema.get("additionalProperties") == {}  # a fields.Dict
    if "properties" in schema or free_form:
        # Unknown fields are accepted (and kept in the raw copy), as any JSON.
        if free_form:
            del schema["additionalProperties"]
        schema.setdefault("additionalProperties", {"$ref": "#/components/schemas/JsonValue"})
        schema.setdefault("propertyNames", {"pattern": _NO_NUL})
    for value in schema.values():
        _storable(value)


def _content_rule(channel: str, content_type: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"properties": {"type": {"const": content_type}}}
    if content_type != "custom":
        rule["required"] = [content_type]
    if content_type == "text":
        rule["properties"]["text"] = {"maxLength": TEXT_LIMITS[channel]}
    if content_type in ("image", "file") and channel != "whatsapp":
        rule["properties"][content_type] = {"not": {"required": ["caption"]}}
    return rule


def _step_rule(channel: str, last: bool) -> dict[str, Any]:
    """One workflow message on one channel, as definitions.py's rules have it."""
    parties = REQUIRED_PARTY_FIELDS[channel]
    to: dict[str, Any] = {
        "properties": {"type": {"const": channel}},
        "required": ["type", parties["to"]],
    }
    if channel != "messenger":
        to["properties"]["number"] = {"pattern": E164.pattern}
    contents = [_content_rule(channel, t) for t in sorted(CHANNEL_CONTENT[channel])]
    rule: dict[str, Any] = {
        "properties": {
            "to": to,
            "from": {"properties": {"type": {"const": channel}}, "required": [parties["from"]]},
            "message": {"properties": {"content": {"anyOf": contents}}},
        },
    }
    if last:
        rule["not"] = {"required": ["failover"]}
    else:
        rule["required"] = ["failover"]
        if channel == "sms":
            rule["properties"]["failover"] = {
                "properties": {"condition_status": {"const": "delivered"}}
            }
    return rule


def _workflow_rules() -> dict[str, Any]:
    """What DispatchRequestSchema checks across fields, for the published schema.

    Every message but the last fails over and the last does not; each message
    is one channel's shape (parties, content types, text limits).
    """
    step = {
        last: {"anyOf": [_step_rule(c, last) for c in sorted(REQUIRED_PARTY_FIELDS)]}
        for last in (False, True)
    }
    lengths = [
        {"minItems": n, "maxItems": n, "prefixItems": [step[False]] * (n - 1) + [step[True]]}
        for n in range(1, MAX_STEPS + 1)
    ]
    tag_rule = {
        "if": {"properties": {"category": {"const": "message_tag"}}, "required": ["category"]},
        "then": {"required": ["tag"]},
    }
    return {
        "properties": {
            "workflow": {
                "anyOf": lengths,
                "items": {"properties": {"message": {"properties": {"messenger": tag_rule}}}},
            }
        }
    }


_NOT_BLANK = "[^" + "".join(f"\\u{ord(char):04x}" for char in BLANK) + "]"


def _messages_item_rules() -> dict[str, Any]:
    """What MessageSchema checks across fields, for the published schema.

    Each channel takes its own message types, each type needs its content
    (a media one with its url), and a channel limits its text and its ttl.
    """
    kinds = []
    for channel in CHANNELS:
        low, high = TTL_RANGES[channel]
        for kind in sorted(MESSAGE_TYPES[channel]):
            properties: dict[str, Any] = {
                "channel": {"const": channel},
                "message_type": {"const": kind},
                "ttl": {"minimum": low, "maximum": high},
            }
            if kind == "text":
                properties["text"] = {"maxLength": MESSAGES_TEXT_LIMITS[channel]}
            if kind in MEDIA:
                # A url is not blank: one character outside BLANK, the check's own set.
                url = {"type": "string", "pattern": _NOT_BLANK}
                properties[kind] = {"required": ["url"], "properties": {"url": url}}
            kinds.append({"properties": properties, "required": [kind]})
    return {"anyOf": kinds}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3 document (built once; it depends only on the code)."""
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="dispatch-ledger",
        version="1",
        openapi_version="3.1.0",
        plugins=[plugin],
        info={
            "description": "Webhook receiver and read API for Vonage Dispatch and Messages API"
            " failover callbacks."
        },
    )
    # Not format date-time: the pattern says exactly what is accepted (a
    # missing offset too, taken as UTC).
    plugin.map_to_openapi_type(IsoTimestamp, "string", None)  # type: ignore[no-untyped-call]
    plugin.map_to_openapi_type(PriceField, "string", None)  # type: ignore[no-untyped-call]
    plugin.map_to_openapi_type(ChannelField, "string", None)  # type: ignore[no-untyped-call]
    plugin.map_to_openapi_type(CountField, None, None)  # type: ignore[no-untyped-call]
    plugin.map_to_openapi_type(CodeOrText, None, None)  # type: ignore[no-untyped-call]
    spec.components.schema("MessageStatus", schema=MessageStatusSchema)
    spec.components.schema("MessagesStatus", schema=MessagesStatusSchema)
    spec.components.schema("FinalReport", schema=FinalReportSchema)
    spec.components.schema("ErrorEnvelope", _ERROR)
    spec.components.schema("Receipt", _RECEIPT)
    spec.components.security_scheme(
        "signature", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    spec.components.security_scheme("basic", {"type": "http", "scheme": "basic"})
    spec.components.security_scheme("apiToken", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("readToken", {"type": "http", "scheme": "bearer"})
    spec.components.schema("DispatchRequest", schema=DispatchRequestSchema)
    spec.components.schema("MessagesFailoverRequest", schema=FailoverRequestSchema)
    spec.components.schema("Callback", _CALLBACK)
    spec.path(
        "/webhooks/status",
        operations=_webhook(
            "Callback", "Receive any callback, Dispatch or Messages API (the one status URL)"
        ),
    )
    spec.path(
        "/webhooks/message-status",
        operations=_webhook("Callback", "Receive any Dispatch callback (as the status URL)"),
    )
    spec.path(
        "/webhooks/final-report",
        operations=_webhook("Callback", "Receive any Dispatch callback (as the report URL)"),
    )
    spec.path(
        "/workflows/{dispatch_uuid}",
        operations=_read("dispatch_uuid", "One workflow", _WORKFLOW_DOCUMENT),
    )
    spec.path(
        "/workflows/{dispatch_uuid}/messages",
        operations=_read(
            "dispatch_uuid",
            "A page of one workflow's messages",
            _MESSAGES_PAGE,
            _PAGE_QUERY,
            (400, 401, 404, 503),
        ),
    )
    spec.path("/messages/{message_uuid}", operations=_read("message_uuid", "One message"))
    spec.path("/workflows", operations=_workflows())
    spec.path("/workflows/{dispatch_uuid}/definition", operations=_definition())
    spec.path("/events", operations=_feed())
    spec.path("/endpoints", operations=_endpoints())
    spec.path("/endpoints/{endpoint_id}", operations=_endpoint())
    built = spec.to_dict()
    schemas = built["components"]["schemas"]
    for name, schema in schemas.items():
        if name not in ("ErrorEnvelope", "Receipt", "Callback"):
            _storable(schema)
    schemas["JsonValue"] = _JSON_VALUE
    schemas["DispatchRequest"] = {"allOf": [schemas["DispatchRequest"], _workflow_rules()]}
    item = _messages_item_rules()
    schemas["MessagesMessage"] = {"allOf": [schemas["MessagesMessage"], item]}
    # Its `template`, if any, is an object (Dispatch's a string).
    not_dispatch = {"not": {"required": ["workflow"]}}
    schemas["MessagesFailoverRequest"] = {
        "allOf": [schemas["MessagesFailoverRequest"], item, not_dispatch]
    }
    return built


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI description of this service."""
    return jsonify(document())
