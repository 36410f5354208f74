"""READ_API_TOKEN: the read API's and /metrics' own token (test_closed_by_default: without it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.config import Settings
from app.extensions import get_db
from tests import payloads
from tests.conftest import post

READ, OWNER = "a-read-token", "an-owner-token"
SAMPLE = payloads.fixture("message_status_sample.json")
READS = [
    f"/workflows/{SAMPLE['_links']['workflow']['dispatch_uuid']}",
    f"/messages/{SAMPLE['message_uuid']}",
    "/workflows",
    "/workflows?overdue=true",
    "/metrics",
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def locked(clean_db: str) -> Iterator[FlaskClient]:
    app: Flask = create_app({"database_url": clean_db, "read_api_token": READ, "api_token": OWNER})
    yield app.test_client()
    get_db(app).close()


def test_reads_need_the_read_token_or_the_owners(locked: FlaskClient) -> None:
    # Callbacks are not reads: they keep their own checks and go in as before.
    assert post(locked, "message-status", SAMPLE).status_code == 200
    for path in READS:
        for headers in ({}, bearer("a-guess"), {"Authorization": f"Basic {READ}"}):
            refused = locked.get(path, headers=headers)
            assert refused.status_code == 401, path
            assert refused.headers["WWW-Authenticate"] == "Bearer"
            assert refused.json is not None and refused.json["code"] == 401
            assert SAMPLE["message_uuid"] not in refused.get_data(as_text=True)
        for token in (READ, OWNER):
            assert locked.get(path, headers=bearer(token)).status_code == 200, path


def test_health_and_the_api_description_stay_open(locked: FlaskClient) -> None:
    # Platforms probe health without credentials.
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert locked.get(path).status_code == 200, path


def test_the_read_token_does_not_open_definitions(locked: FlaskClient) -> None:
    # A definition holds numbers and texts: the owner's token only.
    path = "/workflows/some-workflow/definition"
    assert locked.get(path, headers=bearer(READ)).status_code == 401
    assert locked.get(path, headers=bearer(OWNER)).status_code == 404


def test_the_setting_comes_from_the_environment_and_never_shows() -> None:
    settings = Settings.from_env({"READ_API_TOKEN": "from-the-env"})
    assert settings.read_api_token == "from-the-env"
    assert "from-the-env" not in repr(settings)
