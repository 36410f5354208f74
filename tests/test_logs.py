"""Structured logs with a request id, echoed to the caller."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient


def test_a_request_id_is_made_or_kept_and_echoed(client: FlaskClient) -> None:
    made = client.get("/healthz").headers["X-Request-Id"]
    assert len(made) == 36  # a UUID
    assert (
        client.get("/healthz", headers={"X-Request-Id": "router-abc.123"}).headers["X-Request-Id"]
        == "router-abc.123"
    )
    hostile = client.get("/healthz", headers={"X-Request-Id": 'x" injected\\n{'})
    assert hostile.headers["X-Request-Id"] != 'x" injected\\n{'


def test_log_lines_are_json_with_the_request_id(
    client: FlaskClient, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    client.post(
        "/webhooks/message-status",
        data=b"{}",
        headers={"Content-Type": "text/plain", "X-Request-Id": "req-42"},
    )
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    assert lines, "nothing was logged"
    assert all(set(line) >= {"time", "level", "logger", "message", "request_id"} for line in lines)
    assert any(line["request_id"] == "req-42" for line in lines)
