"""The webhook URLs' fast way in: a callback that passes every check is stored and answered
here, without Flask's request machinery; any other request goes on to Flask.

Flask's request context, routing, hooks and response objects cost about as
much CPU as checking and storing a callback does (BENCHMARKS.md, thirteenth
session), and at full load the CPU is what limits how many callbacks a
second are acknowledged. So this WSGI layer, in front of the Flask
application, takes a POST to a webhook URL with a Content-Length within the
limit, runs the view's checks (`webhooks.check`) and capture, and answers
with the same bytes and headers as the view.

Everything else is Flask's: another URL or method, a body without a
Content-Length or over the limit, and any check that fails go on to the view
with the body as read (it checks again, and refuses, keeps and logs as
always). A capture that fails goes on too, with its error, for the view to
answer (503 for the database, 500 and kept for a bug). So each answer but the
acknowledgement, and each rule, is written once, in `app.receive.webhooks`.

What Flask's hooks do for every request is done here too (tests/receive/test_webhooks_fast.py
fails when a hook is added that this does not know): the request id, the
latency histogram, and starting the process's applier.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from app import metrics
from app.extensions import capture_delivery, get_applier, get_credentials, get_settings
from app.logs import REQUEST_ID_HEADER, request_id
from app.pipeline.capture import Delivery
from app.receive import webhooks
from app.spec.intake import CallbackKind

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REQUEST_ID_KEY = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")


class FastWebhooks:
    """WSGI middleware: the webhook views' acknowledgements, without Flask; the rest to Flask."""

    def __init__(self, app: Flask, flask_wsgi: WsgiApp) -> None:
        self.flask = flask_wsgi  # the Flask application, for everything else
        self._app = app
        self._settings = get_settings(app)
        self._credentials = get_credentials(app)
        self._applier = get_applier(app)
        # Each webhook URL (as routed, prefix included) with its endpoint and hint.
        self._routes: dict[str, tuple[str, CallbackKind]] = {
            rule.rule: (rule.endpoint, webhooks.HINTS[rule.endpoint])
            for rule in app.url_map.iter_rules()
            if rule.endpoint in webhooks.HINTS and "POST" in (rule.methods or ())
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        route = self._routes.get(environ.get("PATH_INFO", ""))
        if route is None or environ.get("REQUEST_METHOD") != "POST":
            return self.flask(environ, start_response)
        started = time.perf_counter()
        endpoint, hint = route
        body = self._body(environ)
        if body is None:
            return self.flask(environ, start_response)
        try:
            _, callback = webhooks.check(
                hint,
                body,
                environ.get("HTTP_AUTHORIZATION"),
                environ.get("CONTENT_TYPE"),
                self._credentials,
                self._settings.max_json_depth,
            )
        except Exception:
            return self.flask(environ, start_response)  # refused there, and kept
        if self._applier is not None:
            self._applier.start()
        delivery = Delivery(callback, environ.get("CONTENT_TYPE"), webhooks.now())
        try:
            receipt = capture_delivery(delivery, self._app)
        except Exception as exc:
            environ[webhooks.CAPTURE_FAILED] = exc
            return self.flask(environ, start_response)
        answer = webhooks.answer(callback, receipt)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(answer))),
                (REQUEST_ID_HEADER, request_id(environ.get(_REQUEST_ID_KEY))),
            ],
        )
        metrics.observe_latency(endpoint, started)
        return [answer]

    def _body(self, environ: dict[str, Any]) -> bytes | None:
        """The body, when it has a Content-Length within the limit and all of it came; else None.

        What was read replaces the input, so that Flask reads the same bytes.
        """
        if environ.get("HTTP_TRANSFER_ENCODING"):
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        if not 0 <= length <= self._settings.max_body_bytes:
            return None
        body: bytes = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        return body if len(body) == length else None


def install(app: Flask) -> None:
    """Put the fast way in front of the application's WSGI callable."""
    app.wsgi_app = FastWebhooks(app, app.wsgi_app)  # type: ignore[method-assign]
