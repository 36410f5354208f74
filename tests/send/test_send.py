"""Sending workflows to Dispatch: against a local stand-in of POST /v0.1/dispatch."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from werkzeug.test import TestResponse

from app import create_app
from app.cli import main
from app.extensions import get_db
from app.store import migrations
from tests import payloads
from tests.conftest import OwnServer, fresh_database, query, set_read_only

TOKEN = "an-api-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Dispatch credentials the stand-in takes (Basic).
BASIC = {"dispatch_api_key": "key", "dispatch_api_secret": "secret"}
REQUEST = payloads.fixture("dispatch_request_failover.json")
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()


class StandIn:
    """Dispatch's side: checks credentials as the real API does, answers 202 + uuid."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.scenarios: list[str | None] = []
        self.refuse_with: int | None = None
        # Dispatch's answer to a workflow it takes (its body), when not a fresh uuid.
        self.accept_with: dict[str, Any] | None = None
        # Run once Vonage has accepted a workflow, before the answer goes back.
        self.before_answer: Callable[[], None] | None = None
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.received.append((self.headers.get("Authorization", ""), body))
                stand_in.scenarios.append(self.headers.get("X-Emulator-Scenario"))
                if self.path not in ("/v0.1/dispatch", "/v1/messages"):
                    return self._answer(404, {"title": "Not found"})
                if stand_in.refuse_with or not stand_in.authorized(self.headers):
                    code = stand_in.refuse_with or 401
                    return self._answer(code, {"title": "Refused", "detail": "bad credentials"})
                if self.path == "/v1/messages":  # a failover send: a workflow_id, not a UUID
                    workflow_id = "W" + uuid.uuid4().hex + uuid.uuid4().hex[:22]
                    answer = {"message_uuid": str(uuid.uuid4()), "workflow_id": workflow_id}
                    return self._answer(202, answer)
                if stand_in.before_answer is not None:
                    stand_in.before_answer()
                accepted = stand_in.accept_with
                if accepted is None:
                    accepted = {"dispatch_uuid": str(uuid.uuid4())}
                self._answer(202, accepted)

            def _answer(self, code: int, document: Any) -> None:
                raw = json.dumps(document).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def authorized(self, headers: Any) -> bool:
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        if scheme == "Basic":
            return base64.b64decode(value) == b"key:secret"
        if scheme == "Bearer":
            claims = jwt.decode(value, KEY.public_key(), algorithms=["RS256"])
            return bool(claims["application_id"] == "app-1")
        return False


@pytest.fixture
def dispatch_api() -> Iterator[StandIn]:
    stand_in = StandIn()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


def sender(clean_db: str, url: str, **credentials: Any) -> Flask:
    return create_app(
        {"database_url": clean_db, "api_token": TOKEN, "dispatch_api_url": url, **credentials}
    )


def send_once(database_url: str, url: str, **settings: Any) -> TestResponse:
    """POST the request once to a service sending to `url`; its answer."""
    app = sender(database_url, url, **settings)
    try:
        return app.test_client().post("/workflows", json=REQUEST, headers=AUTH)
    finally:
        get_db(app).close()


@pytest.mark.parametrize(
    "credentials",
    [
        BASIC,
        {"dispatch_application_id": "app-1", "dispatch_private_key": PEM},
    ],
    ids=["basic", "jwt"],
)
def test_a_valid_workflow_is_sent_answered_202_and_recorded(
    clean_db: str, dispatch_api: StandIn, credentials: dict[str, str]
) -> None:
    app = sender(clean_db, dispatch_api.url, **credentials)
    try:
        client = app.test_client()
        response = client.post("/workflows", json=REQUEST, headers=AUTH)
        assert response.status_code == 202
        assert response.json is not None and response.json["recorded"] is True
        dispatch_uuid = response.json["dispatch_uuid"]
        [(_, sent)] = dispatch_api.received
        assert sent == REQUEST
        stored = client.get(f"/workflows/{dispatch_uuid}/definition", headers=AUTH).json
        assert stored is not None and stored["source"] == "sent"
        doc = client.get(f"/workflows/{dispatch_uuid}").json
        assert doc is not None
        assert (doc["status"], doc["decided_by"], doc["current_step"]["step"]) == (
            "pending",
            "definition",
            1,
        )
    finally:
        get_db(app).close()


def test_the_private_key_may_be_a_file(
    clean_db: str, dispatch_api: StandIn, tmp_path: Path
) -> None:
    key_file = tmp_path / "private.key"
    key_file.write_text(PEM)
    response = send_once(
        clean_db,
        dispatch_api.url,
        dispatch_application_id="app-1",
        dispatch_private_key=str(key_file),
    )
    assert response.status_code == 202


def test_an_invalid_workflow_is_never_sent(clean_db: str, dispatch_api: StandIn) -> None:
    app = sender(clean_db, dispatch_api.url, **BASIC)
    try:
        bad = {**REQUEST, "workflow": REQUEST["workflow"][:1]}  # a lone message with a failover
        response = app.test_client().post("/workflows", json=bad, headers=AUTH)
        assert response.status_code == 422
        assert dispatch_api.received == []
    finally:
        get_db(app).close()


@pytest.mark.parametrize("refusal", [401, 422, 500])
def test_a_refusal_by_dispatch_is_a_502_and_nothing_is_recorded(
    clean_db: str, dispatch_api: StandIn, refusal: int
) -> None:
    dispatch_api.refuse_with = refusal
    response = send_once(clean_db, dispatch_api.url, **BASIC)
    assert response.status_code == 502
    assert response.json["errors"] == {"dispatch_status": refusal}  # type: ignore[index]
    assert f"Dispatch answered {refusal}" in response.json["message"]  # type: ignore[index]
    assert query(clean_db, "SELECT count(*) FROM workflow_definition") == [(0,)]


def test_unreachable_dispatch_is_a_502(clean_db: str) -> None:
    response = send_once(clean_db, "http://127.0.0.1:9", **BASIC)
    assert response.status_code == 502
    assert "could not be reached" in response.json["message"]  # type: ignore[index]


@pytest.mark.parametrize("answer", [{}, {"dispatch_uuid": ""}, {"dispatch_uuid": 7}])
def test_an_accepted_workflow_without_its_id_is_a_502_that_says_it_may_have_been_sent(
    clean_db: str, dispatch_api: StandIn, answer: dict[str, Any]
) -> None:
    # Dispatch answered 202, so it took the workflow: unlike a refusal, not one to resend.
    dispatch_api.accept_with = answer
    response = send_once(clean_db, dispatch_api.url, **BASIC)
    assert response.status_code == 502
    assert response.json is not None
    assert response.json["errors"] == {"dispatch_status": 202}
    assert response.json["message"].startswith("Dispatch answered 202 without a dispatch_uuid")
    assert "may have been sent. Do not send it again" in response.json["message"]
    assert len(dispatch_api.received) == 1


def _hang_up() -> None:
    raise ConnectionAbortedError("the stand-in hangs up without an answer")


@pytest.mark.parametrize(
    "before_answer", [lambda: time.sleep(2), _hang_up], ids=["too-slow", "hangs-up"]
)
def test_no_answer_from_dispatch_is_a_504_that_says_it_may_have_been_sent(
    clean_db: str, dispatch_api: StandIn, before_answer: Callable[[], None]
) -> None:
    # Unlike a refused connection (502, nothing sent), the request went out:
    # sending it again could send the messages twice.
    dispatch_api.before_answer = before_answer
    response = send_once(clean_db, dispatch_api.url, **BASIC, dispatch_timeout_seconds=0.5)
    assert response.status_code == 504
    assert response.json is not None
    assert "may have been sent" in response.json["message"]
    assert "Do not send it again" in response.json["message"]
    assert len(dispatch_api.received) == 1
    assert query(clean_db, "SELECT count(*) FROM workflow_definition") == [(0,)]


def test_sending_without_dispatch_credentials_says_what_to_set(clean_db: str) -> None:
    response = send_once(clean_db, "http://127.0.0.1:9")
    assert response.status_code == 503
    assert "DISPATCH_API_KEY" in response.json["message"]  # type: ignore[index]


def test_a_workflow_sent_but_not_recorded_is_202_and_says_not_to_send_it_again(
    own_server: OwnServer, dispatch_api: StandIn, tmp_path: Path
) -> None:
    app = sender(own_server.url, dispatch_api.url, **BASIC)
    # The database goes down while Vonage accepts the workflow.
    dispatch_api.before_answer = own_server.stop
    try:
        client = app.test_client()
        response = client.post("/workflows", json=REQUEST, headers=AUTH)
        assert response.status_code == 202, response.json
        answer = response.json
        assert answer is not None and answer["recorded"] is False
        assert "do not send it again" in answer["message"]
        assert f"/workflows/{answer['dispatch_uuid']}/definition" in answer["message"]
        assert len(dispatch_api.received) == 1

        # Down before the send: 503 (retry later), and nothing is sent.
        dispatch_api.before_answer = None
        refused = client.post("/workflows", json=REQUEST, headers=AUTH)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert len(dispatch_api.received) == 1

        # Back: recorded as the answer said (once the pool has reconnected:
        # it backs off during an outage, so the first seconds may still be 503).
        own_server.start()
        path = f"/workflows/{answer['dispatch_uuid']}/definition"
        deadline = time.monotonic() + 10
        while (put := client.put(path, json=REQUEST, headers=AUTH)).status_code == 503:
            assert time.monotonic() < deadline, "the database was back 10 s and still 503"
            time.sleep(0.2)
        assert put.status_code == 201

        # The command line the same way: the id, what to do, and exit 0.
        request_file = tmp_path / "request.json"
        request_file.write_text(json.dumps(REQUEST))
        dispatch_api.before_answer = own_server.stop
        env = {"DATABASE_URL": own_server.url, "DISPATCH_API_URL": dispatch_api.url}
        env |= {"DISPATCH_API_KEY": "key", "DISPATCH_API_SECRET": "secret"}
        result = CliRunner().invoke(main, ["send", str(request_file)], env=env)
        assert result.exit_code == 0, result.output
        assert len(dispatch_api.received) == 2
        assert "do not send it again" in result.stderr
        assert result.stdout.strip() in result.stderr  # the id, in the PUT's path
    finally:
        get_db(app).close()


def test_a_database_that_takes_no_writes_sends_nothing(
    server_url: str, dispatch_api: StandIn
) -> None:
    url = fresh_database(server_url)
    migrations.migrate(url)
    set_read_only(server_url, url, True)
    response = send_once(url, dispatch_api.url, **BASIC)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert dispatch_api.received == []


def test_the_send_command(clean_db: str, dispatch_api: StandIn, tmp_path: Path) -> None:
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(REQUEST))
    env = {
        "DATABASE_URL": clean_db,
        "DISPATCH_API_URL": dispatch_api.url,
        "DISPATCH_API_KEY": "key",
        "DISPATCH_API_SECRET": "secret",
    }
    result = CliRunner().invoke(main, ["send", str(request_file)], env=env)
    assert result.exit_code == 0, result.output
    dispatch_uuid = result.stdout.strip()
    assert query(
        clean_db, "SELECT source FROM workflow_definition WHERE dispatch_uuid = %s", dispatch_uuid
    ) == [("sent",)]
    request_file.write_text(json.dumps({"template": "failover", "workflow": []}))
    refused = CliRunner().invoke(main, ["send", str(request_file)], env=env)
    assert refused.exit_code == 1
    assert "does not follow the Dispatch API reference" in refused.output


def test_the_send_command_sends_a_messages_failover_to_v1_messages(
    clean_db: str, dispatch_api: StandIn, tmp_path: Path
) -> None:
    request = payloads.messages_failover_request("rcs", "sms")
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    env = {
        "DATABASE_URL": clean_db,
        "DISPATCH_API_URL": dispatch_api.url,
        "DISPATCH_APPLICATION_ID": "app-1",
        "DISPATCH_PRIVATE_KEY": PEM,
    }
    result = CliRunner().invoke(main, ["send", str(request_file)], env=env)
    assert result.exit_code == 0, result.output
    workflow_id = result.stdout.strip()
    assert len(workflow_id) == 55
    assert dispatch_api.received[-1][1] == request  # sent as given
    assert query(
        clean_db,
        "SELECT w.api, w.source, d.api FROM workflow_definition w JOIN dispatch d USING"
        " (dispatch_uuid) WHERE dispatch_uuid = %s",
        workflow_id,
    ) == [("messages", "sent", "messages")]
    request_file.write_text(json.dumps({**request, "ttl": 5}))
    refused = CliRunner().invoke(main, ["send", str(request_file)], env=env)
    assert refused.exit_code == 1
    assert "does not follow the Messages API reference" in refused.output
    assert '"ttl"' in refused.output
    assert len(dispatch_api.received) == 1  # an invalid request is never sent


def test_a_scenario_header_reaches_the_stand_in_and_never_vonage(
    clean_db: str, dispatch_api: StandIn
) -> None:
    scenario = '{"channels": {"messenger": "fails"}}'
    headers = {**AUTH, "X-Emulator-Scenario": scenario}
    app = sender(clean_db, dispatch_api.url, **BASIC)
    try:
        sent = app.test_client().post("/workflows", json=REQUEST, headers=headers)
        assert sent.status_code == 202, sent.json
        assert dispatch_api.scenarios == [scenario]
    finally:
        get_db(app).close()
    real = sender(clean_db, "https://api.nexmo.com", **BASIC)
    try:
        refused = real.test_client().post("/workflows", json=REQUEST, headers=headers)
        assert refused.status_code == 400
        assert "nothing was sent" in refused.json["message"]  # type: ignore[index]
        assert "X-Emulator-Scenario" in refused.json["errors"]  # type: ignore[index]
    finally:
        get_db(real).close()
