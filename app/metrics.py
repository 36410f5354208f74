"""The service's Prometheus metrics, summed over all gunicorn workers (multiprocess mode);
served by app.read.metrics_view.

gunicorn's config points PROMETHEUS_MULTIPROC_DIR at a folder before the
workers start, so each worker writes its numbers there and any worker can
answer a scrape for all of them. Without it (tests, one process) the
process's own registry is served.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)

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
DELIVERIES = Counter(
    "dispatch_ledger_deliveries_total",
    "Attempts to send an event to an endpoint, by endpoint and outcome: delivered (2xx),"
    " failed (tried again later), gave_up (its retry schedule is spent).",
    ["endpoint", "outcome"],
)
ENDPOINTS_DISABLED = Counter(
    "dispatch_ledger_endpoint_disablings_total",
    "Endpoints disabled by a deliverer after failing for a whole retry schedule.",
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
    """Count what a committed batch changed (an app.pipeline.tally.Tally)."""
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


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
