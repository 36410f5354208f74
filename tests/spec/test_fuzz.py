"""Hostile input: schemathesis against /openapi.json, hypothesis against the schemas."""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError
from schemathesis.checks import CHECKS

from app import create_app
from app.extensions import get_db
from app.read.openapi import _NOT_BLANK
from app.spec.intake import CallbackKind, Rejection, read
from app.spec.messages_request import BLANK, is_blank
from app.spec.schemas import (
    CallbackSchema,
    load_final_report,
    load_message_status,
    load_messages_status,
)
from tests import payloads

TOKEN = "a-fuzzing-token"


def test_every_operation_keeps_to_its_openapi_description(clean_db: str) -> None:
    """Every operation of /openapi.json, fuzzed with every schemathesis check.

    No 5xx; what the document calls valid is accepted and what it calls
    invalid is refused; answers match their documented status, headers and
    shape; a missing or wrong token is refused where one is needed.
    """
    app = create_app({"database_url": clean_db, "api_token": TOKEN})
    api = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 14
    # Sending answers 502/503 by design when Dispatch refuses or is not set
    # up; its validation is the definition's, fuzzed through PUT. An
    # endpoint's URL must also be a public address, which no JSON schema
    # says: its rules are tested in tests/outbound.
    unfuzzed = {("POST", "/workflows"), ("POST", "/endpoints")}
    fuzzed = [op for op in operations if (op.method.upper(), op.path) not in unfuzzed]
    assert len(fuzzed) == 12
    try:
        for operation in fuzzed:
            # Driven by hypothesis directly: schemathesis's pytest plugin does
            # not load under pytest 9.

            @given(case=operation.as_strategy())
            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
            def fuzz(case: Any) -> None:
                # On the case, not the call: the auth check then sends it
                # again without the token, and expects a refusal.
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
                if case.query and "wait" in case.query:
                    case.query["wait"] = 0  # a long poll of up to 30 s per example: too slow
                case.validate_response(case.call(), checks=CHECKS.get_all())

            fuzz()
    finally:
        get_db(app).close()


def test_the_openapi_document_describes_both_callbacks(client: Any) -> None:
    document = client.get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    assert {
        "/webhooks/status",
        "/webhooks/message-status",
        "/webhooks/final-report",
    } <= set(document["paths"])
    status = document["components"]["schemas"]["MessageStatus"]
    assert set(status["required"]) == {"message_uuid", "status", "timestamp"}
    assert (
        "viber_sevice_msg"
        in document["components"]["schemas"]["Party"]["properties"]["type"]["enum"]
    )


def test_the_openapi_document_describes_both_workflow_requests(client: Any) -> None:
    document = client.get("/openapi.json").json
    both = {"#/components/schemas/DispatchRequest", "#/components/schemas/MessagesFailoverRequest"}
    for path, method in (("/workflows", "post"), ("/workflows/{dispatch_uuid}/definition", "put")):
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert {one["$ref"] for one in body["schema"]["oneOf"]} == both
    # Each channel's message types, as the check has them (the fuzzing above sends them).
    rules = document["components"]["schemas"]["MessagesMessage"]["allOf"][1]["anyOf"]
    whatsapp = {
        r["properties"]["message_type"]["const"]
        for r in rules
        if r["properties"]["channel"]["const"] == "whatsapp"
    }
    assert whatsapp == {"text", "image", "audio", "video", "file", "template", "sticker", "custom"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The sample with some fields replaced by arbitrary JSON (closer to real mistakes)."""
    keys = st.sampled_from(sorted(base))
    return st.dictionaries(keys, json_values, max_size=4).map(lambda patch: {**base, **patch})


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, mutated(payloads.fixture("message_status_sample.json"))))
def test_message_status_schema_refuses_cleanly_or_loads(payload: Any) -> None:
    try:
        load_message_status(payload)
    except ValidationError as exc:
        json.dumps(exc.messages, default=str)


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, mutated(payloads.fixture("final_report_sample.json"))))
def test_final_report_schema_refuses_cleanly_or_loads(payload: Any) -> None:
    try:
        load_final_report(payload)
    except ValidationError as exc:
        json.dumps(exc.messages, default=str)


MESSAGES_SAMPLE = payloads.messages_status(
    "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    "rejected",
    "2026-03-01T09:00:00.000Z",
    channel="rcs",
    workflow=("3TcNjguHxr2vcCZ9Ddsnq6tw8yQUpZ9rMHv9QXSxLan5ibMxqSzLdx9", 1, 2),
    price="0.0150",
    error=(1300, "Not part of the provider network"),
    client_ref="campaign-7",
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        json_values,
        mutated(MESSAGES_SAMPLE),
        mutated(MESSAGES_SAMPLE["workflow"]).map(lambda w: {**MESSAGES_SAMPLE, "workflow": w}),
        mutated(MESSAGES_SAMPLE["error"]).map(lambda e: {**MESSAGES_SAMPLE, "error": e}),
    )
)
def test_messages_status_schema_refuses_cleanly_or_loads(payload: Any) -> None:
    try:
        event = load_messages_status(payload)
    except ValidationError as exc:
        json.dumps(exc.messages, default=str)
    else:
        # What it loads is what the state can hold: a place only within a workflow.
        assert event.item_number is None or event.dispatch_uuid is not None
        assert (
            event.error is None or event.error.code is None or -(2**31) <= event.error.code < 2**31
        )


def _within(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The sample with fields of one of its objects replaced (nested schemas' own checks)."""
    inner = sorted(key for key, value in base.items() if isinstance(value, dict))
    return st.sampled_from(inner).flatmap(
        lambda key: mutated(base[key]).map(lambda value: {**base, key: value})
    )


_SAMPLES = (
    (load_message_status, payloads.fixture("message_status_sample.json")),
    (load_final_report, payloads.fixture("final_report_sample.json")),
    (load_messages_status, MESSAGES_SAMPLE),
)


def _outcome(load: Any, payload: Any) -> Any:
    try:
        return ("loaded", load(payload))
    except ValidationError as exc:
        return ("refused", exc.messages)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    which=st.sampled_from(range(len(_SAMPLES))),
)
def test_the_short_way_through_the_schemas_gives_what_marshmallows_load_gives(
    data: st.DataObject, which: int
) -> None:
    """Loaded alike, or refused with the same errors, for any JSON near each callback."""
    load, sample = _SAMPLES[which]
    payload = data.draw(
        st.one_of(json_values, mutated(sample), _within(sample), _callbacks()), label="payload"
    )
    short = _outcome(load, payload)
    CallbackSchema.short_way = False
    try:
        whole = _outcome(load, payload)
    finally:
        CallbackSchema.short_way = True
    assert short == whole


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_read_or_refused_with_a_4xx(body: bytes) -> None:
    for kind in CallbackKind:
        try:
            read(kind, body, max_depth=32)
        except Rejection as rejection:
            assert 400 <= rejection.http_status < 500


@functools.cache
def _callbacks() -> st.SearchStrategy[Any]:
    """Bodies drawn from /openapi.json's own schema of a callback (either kind)."""
    from app.read.openapi import document

    operation = schemathesis.openapi.from_dict(document())["/webhooks/status"]["POST"]
    return operation.as_strategy().map(lambda case: case.body)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=_callbacks())
def test_every_payload_the_schema_accepts_is_stored_and_applied(
    clean_db: str, payload: dict[str, Any]
) -> None:
    """Drawn from /openapi.json's own schemas, and applied under a definition when it names one."""
    app = create_app({"database_url": clean_db, "api_token": TOKEN})
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a bug shows as 500, as in production
    auth = {"Authorization": f"Bearer {TOKEN}"}
    definition: dict[str, Any] | None = payloads.fixture("dispatch_request_failover.json")
    try:
        client = app.test_client()
        workflow = payload.get("dispatch_uuid") or (
            ((payload.get("_links") or {}).get("workflow") or {}).get("dispatch_uuid")
        )
        if isinstance(payload.get("to"), str):  # the Messages API's: its workflow object
            definition = payloads.messages_failover_request("rcs", "whatsapp", "sms")
            named = payload.get("workflow") or {}
            workflow = named.get("workflow_id") or named.get("id")
        path = f"/workflows/{urllib.parse.quote(workflow, safe='')}" if workflow else None
        if path:
            put = client.put(f"{path}/definition", json=definition, headers=auth)
            if put.status_code == 409:
                # An earlier example made this id a workflow of the other API:
                # a definition for this one is refused, and the callback kept.
                api = "messages" if "failover" in definition else "dispatch"
                assert client.get(path).json["api"] not in (None, api)  # type: ignore[index]
                definition = None
            else:
                assert put.status_code in (200, 201), put.json
        response = client.post("/webhooks/status", json=payload)
        assert response.status_code == 200, response.json
        # Applied by the app's own background applier: the reads wait for it,
        # and it must have applied the callback, not set it aside as failed.
        reads = [path] if path else []
        if "message_uuid" in payload:
            reads.append(f"/messages/{urllib.parse.quote(payload['message_uuid'], safe='')}")
        for read_path in reads:
            found = client.get(read_path, query_string={"wait": "10"})
            assert found.status_code == 200, found.json
            assert (found.json["pending_callbacks"], found.json["failed_callbacks"]) == (0, 0)
        if path and definition is not None:
            # Deciding again from what is stored, as a new definition does.
            assert (
                client.put(f"{path}/definition", json=definition, headers=auth).status_code == 200
            )
            assert client.get("/workflows", query_string={"overdue": "true"}).status_code == 200
    finally:
        get_db(app).close()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*BLANK, "a", "\x1b", "\u200b", "é"]), max_size=4))
def test_the_published_url_pattern_and_the_check_agree_on_blank(url: str) -> None:
    # A url of "\x1c" was refused by the check (str.strip() calls it space) and
    # valid by /openapi.json's pattern (no regex engine does): schemathesis found it.
    assert bool(re.search(_NOT_BLANK, url)) is not is_blank(url)
