"""GET /metrics: callbacks by kind and outcome, rejects by reason, latency, pool use."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from app import create_app
from app.extensions import get_db
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
    # Each callback applied once (the duplicate was not captured again), with its delay.
    assert delta("dispatch_ledger_apply_delay_seconds_count") == 2
    assert delta("dispatch_ledger_apply_delay_seconds_bucket", le="3600.0") == 2
    assert sample(after, "dispatch_ledger_db_pool_connections", state="size") >= 1


def test_delivery_failover_outcome_and_overdue_metrics_per_channel_and_api(
    client: FlaskClient,
) -> None:
    before = client.get("/metrics").get_data(as_text=True)
    t = "2026-03-01T09:00:0{}Z"
    for body in (
        # Messages API: RCS rejected, WhatsApp read (delivered implied), workflow completed.
        payloads.messages_status(
            "r1", "submitted", t.format(0), channel="rcs", workflow=("w", 1, 2)
        ),
        payloads.messages_status(
            "r1", "rejected", t.format(1), channel="rcs", workflow=("w", 1, 2)
        ),
        payloads.messages_status(
            "r2", "read", t.format(3), channel="whatsapp", workflow=("w", 2, 2)
        ),
        # and Viber rejected with no next item: failover overdue.
        payloads.messages_status(
            "v1", "rejected", t.format(2), channel="viber_service", workflow=("w2", 1, 2)
        ),
        # A redelivery counts nothing twice.
        payloads.messages_status(
            "r1", "rejected", t.format(1), channel="rcs", workflow=("w", 1, 2)
        ),
    ):
        assert post(client, "status", body).status_code == 200
    after = client.get("/metrics").get_data(as_text=True)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    messages = "dispatch_ledger_messages_total"
    assert delta(messages, api="messages", channel="rcs", event="sent") == 1
    assert delta(messages, api="messages", channel="rcs", event="rejected") == 1
    assert delta(messages, api="messages", channel="whatsapp", event="delivered") == 1
    assert delta(messages, api="messages", channel="whatsapp", event="read") == 1
    # One name for Viber across the APIs, as in the views.
    assert delta(messages, api="messages", channel="viber_service_msg", event="rejected") == 1
    failovers = "dispatch_ledger_failovers_total"
    assert delta(failovers, api="messages", channel="rcs") == 1
    assert delta(failovers, api="messages", channel="viber_service_msg") == 1
    assert delta("dispatch_ledger_workflows_decided_total", api="messages", status="completed") == 1
    overdue = "dispatch_ledger_workflows_overdue"
    assert sample(after, overdue, api="messages", kind="failover_overdue") == 1  # long past
    assert sample(after, overdue, api="dispatch", kind="outcome_overdue") == 0  # present, as 0


def test_a_workflow_decided_by_its_definition_is_counted(clean_db: str) -> None:
    # Its message came first (nothing to decide by); the definition decides it.
    app = create_app({"database_url": clean_db, "apply_in_web": False, "api_token": "t"})
    client = app.test_client()
    try:
        before = client.get("/metrics").get_data(as_text=True)
        status = payloads.status("m-1", "delivered", "2026-03-01T09:00:00Z", dispatch_uuid="d-1")
        assert post(client, "status", status).status_code == 200
        sms = payloads.fixture("dispatch_request_failover.json")["workflow"][-1]
        definition = {"template": "failover", "workflow": [sms]}
        auth = {"Authorization": "Bearer t"}
        assert (
            client.put("/workflows/d-1/definition", json=definition, headers=auth).status_code
            == 201
        )
        after = client.get("/metrics").get_data(as_text=True)
    finally:
        get_db(app).close()
    decided = "dispatch_ledger_workflows_decided_total"
    counted = sample(after, decided, api="dispatch", status="completed")
    assert counted - sample(before, decided, api="dispatch", status="completed") == 1
