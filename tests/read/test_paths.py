"""Any id in a path, NUL and control characters included, gets 404 or 400 in the envelope."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from app.extensions import get_db
from tests.conftest import post

TOKEN = "a-token-for-path-tests"

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DASHBOARD = {"Authorization": "Basic " + base64.b64encode(b"any:pw").decode()}
PATHS = [
    ("GET", "/workflows/{}", AUTH),
    ("GET", "/messages/{}", AUTH),
    ("GET", "/workflows/{}/definition", AUTH),
    ("PUT", "/workflows/{}/definition", AUTH),
    ("GET", "/dashboard/workflows/{}", DASHBOARD),
]


@pytest.fixture
def app(clean_db: str) -> Iterator[Flask]:
    application = create_app(
        {"database_url": clean_db, "api_token": TOKEN, "dashboard_password": "pw"}
    )
    # Answer as in production: a bug must show as a 500, not an exception.
    application.config["PROPAGATE_EXCEPTIONS"] = False
    yield application
    get_db(application).close()


@pytest.mark.parametrize("ident", ["a\x00b", "\x00", "\x01", "\x7f", "\x85", " ", "x" * 201])
@pytest.mark.parametrize(("method", "path", "headers"), PATHS)
def test_ids_no_callback_can_carry_are_not_found(
    app: Flask, ident: str, method: str, path: str, headers: dict[str, str]
) -> None:
    response = app.test_client().open(
        path.format(quote(ident, safe="")), method=method, headers=headers, json={}
    )
    assert response.status_code == 404
    if path.startswith("/dashboard"):
        assert response.mimetype == "text/html"
        assert "No workflow or message can have the id" in response.get_data(as_text=True)
    else:
        assert response.json is not None and response.json["code"] == 404
        assert set(response.json) == {"code", "status", "message", "errors"}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(ident=st.text(min_size=1, max_size=60), where=st.sampled_from(PATHS))
def test_any_id_in_any_path_is_answered_in_the_envelope_never_500(
    app: Flask, ident: str, where: tuple[str, str, dict[str, str]]
) -> None:
    method, path, headers = where
    url = path.format(quote(ident.encode("utf-8", "surrogatepass"), safe=""))
    response = app.test_client().open(url, method=method, headers=headers, json={})
    assert response.status_code in (400, 404, 422), (ident, response.status_code)
    if path.startswith("/dashboard"):  # people read it: a page, with a way back
        assert response.mimetype == "text/html"
        assert 'id="error"' in response.get_data(as_text=True)
    else:
        assert response.json is not None and response.json["code"] == response.status_code


@pytest.mark.parametrize(
    "ident", ["/0", "a/b", "a//b/", "ünï cödé ✓", "a/definition", "/definition", "a%2Fb"]
)
def test_every_id_a_callback_can_carry_is_readable(app: Flask, ident: str) -> None:
    client = app.test_client()
    status = {"message_uuid": ident, "timestamp": "2020-01-01T14:00:00Z", "status": "submitted"}
    status["_links"] = {"workflow": {"dispatch_uuid": ident}}
    assert post(client, "status", status).status_code == 200
    quoted = quote(ident, safe="")
    message = client.get(f"/messages/{quoted}").json
    assert message is not None and message["message_uuid"] == ident
    workflow = client.get(f"/workflows/{quoted}").json
    assert workflow is not None and workflow["dispatch_uuid"] == ident
    assert client.get(f"/workflows/{quoted}/definition", headers=AUTH).status_code == 404
