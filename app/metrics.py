"""GET /metrics in Prometheus format, summed over all gunicorn workers (multiprocess mode).

gunicorn's config points PROMETHEUS_MULTIPROC_DIR at a folder before the
workers start, so each worker writes its numbers there and any worker can
answer a scrape for all of them. Without it (tests, one process) the
process's own registry is served.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as PROCESS_REGISTRY

CALLBACKS = Counter(
    "dispatch_ledger_callbacks_total",
    "Callbacks received, by API (dispatch, messages; unknown for a refused one), kind"
    " (message_status, final_report, messages_status; a refused one's by its URL) and outcome"
    " (accepted, duplicate, rejected).",
    ["api", "kind", "outcome"],
)


def api_of(kind: str) -> str:
    """The API whose callback this kind is."""
    return "messages" if kind == "messages_status" else "dispatch"


REJECTS = Counter("dispatch_ledger_rejects_total", "Refused deliveries, by reason.", ["reason"])
REJECTS_DROPPED = Counter(
    "dispatch_ledger_rejects_not_kept_total",
    "Refused deliveries counted but not kept: their reason's REJECTS_KEPT_BYTES_PER_HOUR was"
    " spent.",
    ["reason"],
)
CONNECTIONS_CLOSED = Counter(
    "dispatch_ledger_connections_closed_total",
    "Connections the web server closed before answering, by reason: shed (a full worker made"
    " room for a new connection), read_timeout (a request's head or body did not arrive within"
    " GUNICORN_READ_TIMEOUT), idle_timeout (no next request within GUNICORN_KEEPALIVE).",
    ["reason"],
)
APPLIED = Counter(
    "dispatch_ledger_callbacks_applied_total",
    "Captured callbacks applied to workflows and messages by this service's appliers.",
)
APPLY_FAILURES = Counter(
    "dispatch_ledger_apply_failures_total",
    "Attempts to apply a captured callback that failed (it is set aside and retried).",
)
APPLIER_STARTS = Counter(
    "dispatch_ledger_applier_starts_total",
    "Starts of the applier gunicorn runs beside its workers: one per start of the web server,"
    " and one more each time it exited and was started again.",
)
APPLY_DELAY = Histogram(
    "dispatch_ledger_apply_delay_seconds",
    "Time from receiving a callback to committing its application to workflows and messages.",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
MESSAGES = Counter(
    "dispatch_ledger_messages_total",
    "Messages that reached an event for the first time, by API, channel (one name across the"
    " APIs) and event: sent (first seen), delivered (read implies it), read, rejected,"
    " undeliverable.",
    ["api", "channel", "event"],
)
FAILOVERS = Counter(
    "dispatch_ledger_failovers_total",
    "Steps whose message was followed by the workflow's next step (failed, or expired before its"
    " condition), by API and the channel failed over from.",
    ["api", "channel"],
)
DECIDED = Counter(
    "dispatch_ledger_workflows_decided_total",
    "Workflows decided (left pending), by API and outcome (completed, error).",
    ["api", "status"],
)
LATENCY = Histogram(
    "dispatch_ledger_request_seconds",
    "Time to answer a request, by endpoint.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25),
)
POOL = Gauge(
    "dispatch_ledger_db_pool_connections",
    "Database pool connections, by state (size: open; available: idle; waiting: requests"
    " waiting for one), summed over workers.",
    ["state"],
    multiprocess_mode="livesum",
)


def count_changes(tally: Any) -> None:
    """Count what a committed batch changed (an app.tally.Tally)."""
    for (api, channel, event), n in tally.messages.items():
        MESSAGES.labels(api, channel, event).inc(n)
    for (api, channel), n in tally.failovers.items():
        FAILOVERS.labels(api, channel).inc(n)
    for (api, status), n in tally.decided.items():
        DECIDED.labels(api, status).inc(n)


def observe_apply_delays(received: list[datetime]) -> None:
    """Count the delays of callbacks applied just now (received at these times)."""
    now = datetime.now(UTC)
    for at in received:
        APPLY_DELAY.observe(max((now - at).total_seconds(), 0.0))


def _start() -> None:
    g.metrics_started = time.perf_counter()


def _finish(response: Response) -> Response:
    started = g.get("metrics_started")
    if started is not None:
        observe_latency(request.endpoint, started)
    return response


def observe_latency(endpoint: str | None, started: float) -> None:
    """Count a request to `endpoint` that started at `started` (time.perf_counter)."""
    LATENCY.labels(endpoint or "unrouted").observe(time.perf_counter() - started)


def observe_pool(stats: dict[str, Any]) -> None:
    POOL.labels("size").set(stats.get("pool_size", 0))
    POOL.labels("available").set(stats.get("pool_available", 0))
    POOL.labels("waiting").set(stats.get("requests_waiting", 0))


def metrics_view() -> Response:
    """The metrics of every worker, in Prometheus's text format."""
    from app import backlog
    from app.access import require_read_access
    from app.db import DatabaseUnavailable
    from app.extensions import get_db

    require_read_access()

    db = get_db()
    observe_pool(db.pool_stats())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = PROCESS_REGISTRY
    body = generate_latest(registry)
    # The backlog is the database's, not a process's: read at each scrape;
    # left out while the database is unreachable, which is when the other
    # metrics matter most.
    try:
        found = backlog.summary(db)
    except DatabaseUnavailable:
        return Response(body, mimetype=CONTENT_TYPE_LATEST)
    shared = CollectorRegistry()
    _overdue_gauge(db, shared)
    for name, doc, value in (
        (
            "dispatch_ledger_callbacks_waiting",
            "Captured callbacks not applied yet (failed ones apart).",
            found.waiting,
        ),
        (
            "dispatch_ledger_callbacks_failed",
            "Captured callbacks that failed to apply and wait for a retry"
            " (dispatch-ledger status lists them).",
            found.failed,
        ),
        (
            "dispatch_ledger_oldest_unapplied_callback_age_seconds",
            "Seconds since the oldest captured callback not applied yet was received (0: none).",
            found.oldest_age(datetime.now(UTC)),
        ),
    ):
        Gauge(name, doc, registry=shared).set(value)
    return Response(body + generate_latest(shared), mimetype=CONTENT_TYPE_LATEST)


OVERDUE_KINDS = ("failover_overdue", "outcome_overdue", "final_report_overdue")


def _overdue_gauge(db: Any, registry: CollectorRegistry) -> None:
    """Overdue workflows by API and kind, as `dispatch-ledger overdue` lists them (0s included)."""
    from app import workflows
    from app.extensions import get_settings

    settings = get_settings()
    counts = workflows.overdue_counts(
        db,
        datetime.now(UTC),
        settings.overdue_grace_seconds,
        settings.last_step_timeout_seconds,
    )
    gauge = Gauge(
        "dispatch_ledger_workflows_overdue",
        "Workflows overdue now, by API and kind (failover_overdue, outcome_overdue,"
        " final_report_overdue), with OVERDUE_GRACE_SECONDS and LAST_STEP_TIMEOUT_SECONDS.",
        ["api", "kind"],
        registry=registry,
    )
    for api in ("dispatch", "messages"):
        for kind in OVERDUE_KINDS:
            gauge.labels(api, kind).set(0)
    for (workflow_api, kind), count in counts.items():
        gauge.labels(workflow_api or "dispatch", kind).inc(count)


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
