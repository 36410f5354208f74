"""GET /metrics: the counters of every gunicorn worker (app.metrics), and the database's
backlog, overdue workflows and partitions read at each scrape, in Prometheus's text format."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.access import require_read_access
from app.extensions import get_db, get_settings
from app.metrics import observe_pool
from app.read.overdue import overdue_counts
from app.store import backlog, daily_figures, endpoints, partitions
from app.store.db import DatabaseUnavailable
from app.store.partitions import TIME_PARTITIONED


def metrics_view() -> Response:
    """The metrics of every worker, in Prometheus's text format."""
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
        delivery = db.run(endpoints.health)
        stale = daily_figures.stale_days(db)
    except DatabaseUnavailable:
        return Response(body, mimetype=CONTENT_TYPE_LATEST)
    families = [_overdue_gauge(db), _weeks_ahead_gauge(db)]
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
        (
            "dispatch_ledger_endpoints",
            "Endpoints registered for webhooks out (disabled ones included).",
            delivery.endpoints,
        ),
        (
            "dispatch_ledger_endpoints_disabled",
            "Endpoints disabled after failing for a whole retry schedule"
            " (dispatch-ledger endpoints enable ID).",
            delivery.disabled,
        ),
        (
            "dispatch_ledger_oldest_undelivered_event_age_seconds",
            "Seconds since the oldest event an enabled endpoint has not received yet was made"
            " (0: none waits).",
            delivery.behind_seconds(datetime.now(UTC)),
        ),
        (
            "dispatch_ledger_analytics_stale_days",
            "Days the daily analytics views compute when read, for want of kept figures;"
            " the appliers keep them every ANALYTICS_REFRESH_SECONDS (rising: nobody does).",
            stale,
        ),
    ):
        families.append(GaugeMetricFamily(name, doc, value=value))
    shared = CollectorRegistry()
    shared.register(_ReadNow(families))
    return Response(body + generate_latest(shared), mimetype=CONTENT_TYPE_LATEST)


class _ReadNow(Collector):
    """The figures read from the database at this scrape. Not Gauges: under gunicorn
    (PROMETHEUS_MULTIPROC_DIR) a Gauge writes its value to the worker's file in that
    folder, and every later scrape read it back as one more series per worker pid,
    as it was when that worker last answered: stale, and summed or maxed into alerts."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _weeks_ahead_gauge(db: Any) -> GaugeMetricFamily:
    """How far ahead each time-partitioned table's weeks are made (the appliers keep four)."""
    now = datetime.now(UTC)
    ahead = db.run(
        lambda conn: {s.table: partitions.weeks_ahead(conn, s, now) for s in TIME_PARTITIONED}
    )
    gauge = GaugeMetricFamily(
        "dispatch_ledger_partition_weeks_ahead",
        "Weeks from now to the end of the last weekly partition, by table; the appliers keep"
        " about four (what falls past it waits in the default partition).",
        labels=["table"],
    )
    for table, weeks in ahead.items():
        gauge.add_metric([table], weeks)
    return gauge


OVERDUE_KINDS = ("failover_overdue", "outcome_overdue", "final_report_overdue")


def _overdue_gauge(db: Any) -> GaugeMetricFamily:
    """Overdue workflows by API and kind, as `dispatch-ledger overdue` lists them (0s included)."""
    settings = get_settings()
    counts = overdue_counts(
        db,
        datetime.now(UTC),
        settings.overdue_grace_seconds,
        settings.last_step_timeout_seconds,
    )
    totals = {(api, kind): 0 for api in ("dispatch", "messages") for kind in OVERDUE_KINDS}
    for (workflow_api, kind), count in counts.items():
        key = (workflow_api or "dispatch", kind)
        totals[key] = totals.get(key, 0) + count
    gauge = GaugeMetricFamily(
        "dispatch_ledger_workflows_overdue",
        "Workflows overdue now, by API and kind (failover_overdue, outcome_overdue,"
        " final_report_overdue), with OVERDUE_GRACE_SECONDS and LAST_STEP_TIMEOUT_SECONDS.",
        labels=["api", "kind"],
    )
    for (api, kind), count in totals.items():
        gauge.add_metric([api, kind], count)
    return gauge


def init_app(app: Flask) -> None:
    # On the application, not a blueprint: its endpoint stays `metrics`, the
    # label its requests are counted under (dispatch_ledger_request_seconds).
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
