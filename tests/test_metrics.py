"""GET /metrics: callbacks by kind and outcome, rejects by reason, latency, pool use."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from tests import payloads
from tests.conftest import post


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus's text format (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match[1] == name:
            got = ",".join(sorted((match[2] or "").split(","))) if match[2] else ""
            if got == wanted:
                return float(match[3])
    return 0.0


def test_metrics_count_callbacks_rejects_latency_and_the_pool(client: FlaskClient) -> None:
    before = client.get("/metrics").get_data(as_text=True)
    status = payloads.fixture("message_status_sample.json")
    post(client, "message-status", status)
    post(client, "message-status", status)
    post(client, "status", payloads.messages_status("m-1", "delivered", "2026-01-01T00:00:00Z"))
    post(client, "final-report", b"{broken")
    post(client, "final-report", {"dispatch_uuid": "d"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    after = response.get_data(as_text=True)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    callbacks = "dispatch_ledger_callbacks_total"
    assert delta(callbacks, api="dispatch", kind="message_status", outcome="accepted") == 1
    assert delta(callbacks, api="dispatch", kind="message_status", outcome="duplicate") == 1
    assert delta(callbacks, api="unknown", kind="final_report", outcome="rejected") == 2
    assert delta(callbacks, api="messages", kind="messages_status", outcome="accepted") == 1
    assert delta("dispatch_ledger_rejects_total", reason="malformed_json") == 1
    assert delta("dispatch_ledger_rejects_total", reason="schema_violation") == 1
    assert delta("dispatch_ledger_request_seconds_count", endpoint="webhooks.message_status") == 2
    assert delta("dispatch_ledger_request_seconds_count", endpoint="webhooks.status") == 1
    assert sample(after, "dispatch_ledger_db_pool_connections", state="size") >= 1
