"""The webhook URLs' fast way in: the view's answers, byte for byte; everything else to Flask."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from app import create_app
from app.extensions import get_applier, get_db
from app.pipeline import applier_process
from app.receive.webhooks_fast import FastWebhooks
from tests import payloads
from tests.conftest import post, query
from tests.signing import SECRET, bearer

JSON = {"Content-Type": "application/json"}


def _status(n: int) -> dict[str, Any]:
    return payloads.status(f"m-fast-{n}", "delivered", "2020-01-01T15:00:00Z")


def _body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


class Seen:
    """Counts the requests the fast way hands to Flask."""

    def __init__(self, door: FastWebhooks) -> None:
        self.paths: list[str] = []
        inner = door.flask

        def flask(environ: dict[str, Any], start_response: Any) -> Any:
            self.paths.append(environ["PATH_INFO"])
            return inner(environ, start_response)

        door.flask = flask


@pytest.fixture
def door(app: Flask) -> FastWebhooks:
    assert isinstance(app.wsgi_app, FastWebhooks)
    return app.wsgi_app


@pytest.fixture
def seen(door: FastWebhooks) -> Seen:
    return Seen(door)


@pytest.fixture
def flask_only(clean_db: str) -> Iterator[FlaskClient]:
    """The same application without the fast way: every request through the view."""
    application = create_app({"database_url": clean_db, "apply_in_web": False})
    assert isinstance(application.wsgi_app, FastWebhooks)
    application.wsgi_app = application.wsgi_app.flask  # type: ignore[method-assign]
    yield application.test_client()
    get_db(application).close()


def test_an_accepted_callback_is_answered_here_as_the_view_answers_it(
    client: FlaskClient, flask_only: FlaskClient, seen: Seen, clean_db: str
) -> None:
    for n, path in enumerate(("status", "message-status", "final-report")):
        fast = client.post(f"/webhooks/{path}", data=_body(_status(n)), headers=JSON)
        again = client.post(f"/webhooks/{path}", data=_body(_status(n)), headers=JSON)
        slow = flask_only.post(f"/webhooks/{path}", data=_body(_status(10 + n)), headers=JSON)
        for response, outcome in ((fast, "accepted"), (again, "duplicate"), (slow, "accepted")):
            assert response.status_code == 200
            # As jsonify wrote it before the fast way existed.
            expected = {"status": outcome, "callback_id": response.json["callback_id"]}
            assert response.data == (json.dumps(expected, separators=(",", ":")) + "\n").encode()
        assert sorted(fast.headers.keys()) == sorted(slow.headers.keys())
        assert fast.headers["Content-Type"] == slow.headers["Content-Type"] == "application/json"
        assert fast.headers["Content-Length"] == str(len(fast.data))
        assert fast.json["callback_id"] == again.json["callback_id"]
    assert seen.paths == []  # none of them went through Flask
    assert query(clean_db, "SELECT count(*), sum(deliveries) FROM raw_callback") == [(6, 9)]


def test_a_signed_callback_is_answered_here_and_a_forged_one_refused_by_the_view(
    clean_db: str,
) -> None:
    app = create_app(
        {"database_url": clean_db, "apply_in_web": False, "vonage_signature_secret": SECRET}
    )
    try:
        door = app.wsgi_app
        assert isinstance(door, FastWebhooks)
        seen = Seen(door)
        client = app.test_client()
        body = _body(_status(1))
        signed = client.post("/webhooks/status", data=body, headers=JSON | bearer(body))
        assert signed.status_code == 200 and seen.paths == []
        forged = client.post("/webhooks/status", data=body, headers=JSON | bearer(body, "x" * 32))
        assert forged.status_code == 401 and seen.paths == ["/webhooks/status"]
        assert forged.headers["WWW-Authenticate"] == 'Bearer realm="dispatch-ledger"'
    finally:
        get_db(app).close()


@pytest.mark.parametrize(
    ("request_kw", "code"),
    [
        ({"data": b"{broken", "headers": JSON}, 400),
        ({"data": _body(_status(1)), "headers": {"Content-Type": "text/plain"}}, 415),
        ({"data": _body({"message_uuid": 7}), "headers": JSON}, 422),
        ({"data": b"x" * 300_000, "headers": JSON}, 413),
    ],
    ids=["malformed", "not-json", "schema", "too-large"],
)
def test_every_refusal_is_the_views_and_is_kept(
    client: FlaskClient, seen: Seen, clean_db: str, request_kw: dict[str, Any], code: int
) -> None:
    response = client.post("/webhooks/status", **request_kw)
    assert response.status_code == code
    assert set(response.json) == {"code", "status", "message", "errors"}  # the envelope
    assert seen.paths == ["/webhooks/status"]
    assert query(clean_db, "SELECT http_status FROM rejected_callback") == [(code,)]


def test_a_body_without_content_length_goes_to_the_view(client: FlaskClient, seen: Seen) -> None:
    # As gunicorn hands over a chunked body (tests/e2e/test_e2e.py sends one to gunicorn).
    response = client.post(
        "/webhooks/status",
        input_stream=io.BytesIO(_body(_status(1))),
        headers=JSON | {"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 200 and response.json["status"] == "accepted"
    assert seen.paths == ["/webhooks/status"]


def test_other_urls_and_methods_go_to_flask(client: FlaskClient, seen: Seen) -> None:
    assert client.get("/webhooks/status").status_code == 405
    assert client.post("/webhooks/status/", data=_body(_status(1)), headers=JSON).status_code in (
        308,
        404,
    )
    assert client.get("/healthz").status_code == 200
    assert seen.paths == ["/webhooks/status", "/webhooks/status/", "/healthz"]


def test_a_failed_capture_is_answered_by_the_view_from_its_error(tmp_path: Path) -> None:
    url = f"postgresql://postgres@/dispatch_ledger?host={tmp_path}&connect_timeout=1"
    app = create_app({"database_url": url, "db_pool_timeout": 1.0})  # no database there
    try:
        door = app.wsgi_app
        assert isinstance(door, FastWebhooks)
        seen = Seen(door)
        started = time.monotonic()
        response = app.test_client().post("/webhooks/status", data=_body(_status(1)), headers=JSON)
        # One wait for a connection (1 s), not a second one in the view.
        assert time.monotonic() - started < 1.9
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.json["message"] == "The database is unavailable; retry later."
        assert seen.paths == ["/webhooks/status"]
    finally:
        get_db(app).close()


def test_the_request_id_is_echoed_when_plain_and_made_otherwise(client: FlaskClient) -> None:
    def answered(given: str | None) -> str:
        headers = JSON | ({"X-Request-Id": given} if given is not None else {})
        body = _body(_status(len(given or "")))
        response = client.post("/webhooks/status", data=body, headers=headers)
        assert response.status_code == 200
        return response.headers["X-Request-Id"]

    assert answered("req-42.a:b") == "req-42.a:b"
    for hostile in ('a b"}, {"forged": "yes', "x" * 129, None):
        made = answered(hostile)
        assert made != hostile and len(made) == 36  # a fresh uuid


def test_each_answer_is_timed_under_its_endpoint(client: FlaskClient) -> None:
    def count() -> float:
        labels = {"endpoint": "webhooks.final_report"}
        return REGISTRY.get_sample_value("dispatch_ledger_request_seconds_count", labels) or 0.0

    before = count()
    assert post(client, "final-report", _status(1)).status_code == 200
    assert count() == before + 1


def test_the_first_callback_starts_the_workers_own_applier(
    clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a gunicorn worker: an applier runs beside it (woken through a pipe),
    # and its own takes only what that one leaves; started by a request.
    read_end, write_end = os.pipe()
    monkeypatch.setenv(applier_process.BESIDE, f"{os.getppid()} {write_end}")
    app = create_app({"database_url": clean_db})
    try:
        applier = get_applier(app)
        assert applier is not None and not applier.running
        response = app.test_client().post("/webhooks/status", data=_body(_status(1)), headers=JSON)
        assert response.status_code == 200
        assert os.read(read_end, 16) == b"\x01"  # the applier beside it told
        assert applier.running
    finally:
        get_db(app).close()
        os.close(read_end)
        os.close(write_end)


def test_flasks_request_hooks_are_the_ones_the_fast_way_does_itself(
    app: Flask, clean_db: str
) -> None:
    """A new hook must be done by app.receive.webhooks_fast too (or that URL left to Flask)."""
    assert [f.__qualname__ for f in app.before_request_funcs[None]] == [
        "_assign_request_id",  # the request id: logs.request_id
        "_start",  # the latency histogram: metrics.observe_latency
    ]
    assert [f.__qualname__ for f in app.after_request_funcs[None]] == [
        "_echo_request_id",
        "_finish",
    ]
    # None for the webhooks blueprint either (the dashboard's are its own).
    assert list(app.before_request_funcs) == [None, "dashboard"]
    assert list(app.after_request_funcs) == [None]
    assert app.teardown_request_funcs == {}
    assert app.url_value_preprocessors == {}
    deployed = create_app({"database_url": clean_db})
    try:
        # With the applier in the process, its start too: done by the fast way.
        assert [f.__qualname__ for f in deployed.before_request_funcs[None]] == [
            "_assign_request_id",
            "BackgroundApplier.start",
            "_start",
        ]
    finally:
        get_db(deployed).close()
