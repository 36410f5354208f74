"""dispatch-ledger: the webhook service for Vonage Dispatch and the Messages API's failover.

The path of a callback, one package a step (each __init__ says what it holds
and what it may import; tests/test_layout.py checks it):

    receive   the webhook URLs: checks, then capture           (app/receive)
    pipeline  capture, apply in batches, decide                (app/pipeline)
    store     PostgreSQL: pool, named SQL, rows, migrations    (app/store)
    read      read API, dashboard, /openapi.json, /metrics     (app/read)
    send      definitions recorded or sent to Vonage           (app/send)
    spec      the API reference's shapes, checked              (app/spec)
    model     the pure state machine and failover rules        (app/model)
    cli, emulator   the commands; the local stand-in

Here at the top: create_app, and what every part shares (config, locations,
extensions, errors, access, metrics, logs, paths, and gunicorn's settings and
worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application; settings come from the environment unless given."""
    # Imported here, not at the top: gunicorn's master imports this package to
    # read app.gunicorn_conf, and a gevent worker patches the standard library
    # only after it forks. What the master had imported would keep unpatched
    # threads and sockets; so importing the package itself loads nothing.
    from flask import Flask

    from app import errors, extensions, logs, paths
    from app.config import Settings

    settings = Settings.from_env()
    if test_config:
        settings = settings.with_overrides(test_config)

    app = Flask(__name__)
    # Before anything logs: Flask adds its own plain handler to a logger that has none.
    logs.init_app(app)
    app.config.update(
        # Werkzeug stops a chunked body at this length *without* an error, so
        # it may read one byte more than allowed: a body that long is too large.
        MAX_CONTENT_LENGTH=settings.max_body_bytes + 1,
        RETRY_AFTER_SECONDS=settings.retry_after_seconds,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    extensions.init_app(app, settings)
    errors.init_app(app)
    paths.init_app(app)
    # Also late: app.gunicorn_conf must set PROMETHEUS_MULTIPROC_DIR before
    # prometheus_client is first imported.
    from app import metrics

    metrics.init_app(app)

    from app.outbound import endpoint_api
    from app.read import dashboard, feed, metrics_view, openapi, read_api
    from app.receive import webhooks
    from app.send import workflow_api

    metrics_view.init_app(app)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(read_api.bp)
    app.register_blueprint(feed.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(workflow_api.bp)
    app.register_blueprint(endpoint_api.bp)
    app.register_blueprint(dashboard.bp)
    errors.answer_with_pages(app, "/dashboard", dashboard.error_page)
    from app.receive import webhooks_fast

    webhooks_fast.install(app)
    return app
