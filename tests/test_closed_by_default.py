"""Closed by default: a deployment takes no one's callbacks and shows no one its reads until
its owner says so; the embedded quick start stays open, for local use, and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.config import ConfigError, Settings
from app.extensions import get_db
from tests import payloads
from tests.conftest import post, settle
from tests.servers import ROOT
from tests.signing import SECRET, bearer

SAMPLE = payloads.fixture("message_status_sample.json")
WORKFLOW = f"/workflows/{SAMPLE['_links']['workflow']['dispatch_uuid']}"
READS = [WORKFLOW, f"/messages/{SAMPLE['message_uuid']}", "/workflows", "/metrics"]
# What a deployment's operator sets, and nothing that opens it.
DEPLOYED = {"allow_unsigned_callbacks": False, "read_api_open": False}
REFUSAL = "refusing to serve: DATABASE_URL is set but callbacks cannot be authenticated"


def closed_env() -> dict[str, str]:
    """The test process's environment without what the suite sets to stay open."""
    opened = {"ALLOW_UNSIGNED_CALLBACKS", "READ_API_OPEN", "VONAGE_SIGNATURE_SECRET"}
    return {k: v for k, v in os.environ.items() if k not in opened}


@pytest.mark.parametrize(
    "given",
    [
        {"vonage_signature_secret": SECRET},
        {"webhook_basic_user": "vonage", "webhook_basic_password": "a-password"},
        {"allow_unsigned_callbacks": True},
        {"embedded_database": True},
    ],
)
def test_a_deployment_serves_once_callbacks_can_be_authenticated_or_are_opened(
    given: dict[str, Any],
) -> None:
    Settings(database_url="postgresql:///x", **given).refuse_to_serve_open()


def test_a_deployment_without_a_way_to_authenticate_refuses_to_serve(clean_db: str) -> None:
    with pytest.raises(ConfigError, match=REFUSAL):
        Settings(database_url=clean_db).refuse_to_serve_open()
    # Under any WSGI server: the application itself refuses.
    with pytest.raises(ConfigError, match=REFUSAL):
        create_app({"database_url": clean_db, **DEPLOYED})


@pytest.mark.parametrize(
    "argv",
    [
        # The Procfile's web: process, and the command.
        [sys.executable, "-m", "gunicorn", "--config", "python:app.gunicorn_conf", "wsgi:app"],
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"],
    ],
    ids=["procfile-web", "serve"],
)
def test_the_web_process_says_in_one_line_why_it_does_not_start(argv: list[str]) -> None:
    env = {**closed_env(), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "PORT": "1"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(said) == 1 and REFUSAL in said[0], said
    assert "VONAGE_SIGNATURE_SECRET" in said[0] and "ALLOW_UNSIGNED_CALLBACKS=true" in said[0]


def make(clean_db: str, **settings: Any) -> Flask:
    return create_app({"database_url": clean_db, "apply_in_web": False, **DEPLOYED, **settings})


@pytest.fixture
def deployed(clean_db: str) -> Iterator[FlaskClient]:
    """A deployment that set its signature secret and nothing else."""
    app = make(clean_db, vonage_signature_secret=SECRET)
    yield app.test_client()
    get_db(app).close()


def signed(client: FlaskClient) -> None:
    body = json.dumps(SAMPLE).encode()
    headers = {**bearer(body), "Content-Type": "application/json"}
    assert client.post("/webhooks/status", data=body, headers=headers).status_code == 200
    settle(get_db(client.application))


def test_a_deployment_with_no_read_token_shows_nothing(deployed: FlaskClient) -> None:
    signed(deployed)
    for path in READS:
        answer = deployed.get(path)
        assert answer.status_code == 403, path
        assert answer.json is not None and "READ_API_TOKEN" in answer.json["message"]
        assert SAMPLE["message_uuid"] not in answer.get_data(as_text=True)


def test_its_owners_token_opens_the_reads_when_no_read_token_is_set(clean_db: str) -> None:
    app = make(clean_db, vonage_signature_secret=SECRET, api_token="the-owners-token")
    client = app.test_client()
    try:
        signed(client)
        for path in READS:
            assert client.get(path).status_code == 401, path
            answer = client.get(path, headers={"Authorization": "Bearer the-owners-token"})
            assert answer.status_code == 200, path
    finally:
        get_db(app).close()


def test_read_api_open_opens_the_reads_on_purpose(clean_db: str) -> None:
    app = make(clean_db, vonage_signature_secret=SECRET, read_api_open=True)
    client = app.test_client()
    try:
        signed(client)
        for path in READS:
            assert client.get(path).status_code == 200, path
    finally:
        get_db(app).close()


def test_readiness_stays_open_and_shows_its_backlog_only_to_readers(clean_db: str) -> None:
    app = make(clean_db, vonage_signature_secret=SECRET, read_api_token="a-read-token")
    client = app.test_client()
    try:
        anyone = client.get("/readyz")
        assert anyone.status_code == 200
        assert anyone.json == {"status": "ok", "database": "ok", "applier": {"in_process": "off"}}
        reader = client.get("/readyz", headers={"Authorization": "Bearer a-read-token"})
        assert reader.json is not None and reader.json["applier"]["waiting"] == 0
    finally:
        get_db(app).close()


def test_the_quick_start_is_open_and_says_it_is_for_local_use(
    clean_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make(clean_db, embedded_database=True)
    client = app.test_client()
    try:
        assert post(client, "status", SAMPLE).status_code == 200
        for path in READS:
            assert client.get(path).status_code == 200, path
    finally:
        get_db(app).close()
    said = caplog.text
    assert "CALLBACKS ARE NOT AUTHENTICATED" in said
    assert "read API (/workflows, /messages, /metrics) is open to anyone: a local service" in said
