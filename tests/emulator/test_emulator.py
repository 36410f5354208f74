"""The stand-in: its plans follow each API's failover rules; its API behaves like Vonage's."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from app.config import Settings
from app.emulator import server as emulator_server
from app.emulator.plan import Behavior, Faults, Scenario, plan, plan_messages
from app.emulator.server import EmulatorConfig, create_emulator
from app.send.dispatch_client import authorization
from tests import payloads
from tests.servers import Server, free_port, start, wait_until

REQUEST = payloads.fixture(
    "dispatch_request_failover.json"
)  # messenger read/600, viber delivered/300, sms
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
B = Behavior


NO_FAULTS = Faults()


def play(channels: dict[str, Behavior], faults: Faults = NO_FAULTS, seed: int = 1) -> Any:
    return plan(REQUEST, Scenario(channels=channels, faults=faults), seed, START)


@pytest.mark.parametrize(
    ("channels", "outcome", "winner"),
    [
        ({"messenger": B.READ}, "completed", 1),
        ({"messenger": B.DELIVERED}, "completed", 2),  # delivered is not read
        ({"messenger": B.FAILS, "viber_service_msg": B.FAILS}, "completed", 3),
        ({"messenger": B.READ_LATE, "viber_service_msg": B.DELIVERED_LATE}, "completed", 3),
        (
            {"messenger": B.FAILS, "viber_service_msg": B.UNDELIVERABLE, "sms": B.FAILS},
            "error",
            None,
        ),
        ({"messenger": B.SILENT, "viber_service_msg": B.SILENT, "sms": B.SILENT}, None, None),
    ],
)
def test_plans_follow_the_failover_rules(
    channels: dict[str, Behavior], outcome: str | None, winner: int | None
) -> None:
    played = play(channels)
    assert (played.outcome, played.winning_step) == (outcome, winner)
    reports = [d for d in played.deliveries if d.kind == "final-report"]
    assert len(reports) == (1 if outcome else 0)


def test_failover_waits_for_the_expiry_unless_the_message_fails() -> None:
    slow = play({"messenger": B.DELIVERED})
    fast = play({"messenger": B.FAILS})

    def second_submission(p: Any) -> float:
        return [d.event_at for d in p.deliveries if d.payload.get("status") == "submitted"][1]

    assert second_submission(slow) == 601.0  # 600 s expiry, then the next message
    assert second_submission(fast) < 2.0


def test_a_late_delivery_is_missing_from_the_report_total() -> None:
    played = play({"messenger": B.SILENT, "viber_service_msg": B.DELIVERED_LATE})
    [report] = [d.payload for d in played.deliveries if d.kind == "final-report"]
    assert report["usage"] == {"price": "0.0333", "currency": "EUR"}  # SMS only
    late = [
        d
        for d in played.deliveries
        if d.payload.get("status") == "delivered" and d.payload["to"]["type"] == "viber_service_msg"
    ]
    assert late[0].payload["usage"]["price"] == "0.0200"
    assert late[0].event_at > played.deliveries[-1].event_at or late[0].deliver_at > max(
        d.deliver_at for d in played.deliveries if d.kind == "final-report"
    )


def test_the_seed_makes_runs_repeatable() -> None:
    assert play({}, seed=7) == play({}, seed=7)
    assert play({}, seed=7).dispatch_uuid != play({}, seed=8).dispatch_uuid


def test_faults_move_deliveries_not_events() -> None:
    clean = play({"messenger": B.FAILS}, seed=3)
    faulty = play(
        {"messenger": B.FAILS},
        Faults(duplicates=0.5, reorder=30.0, report_first=True, late_statuses=True),
        seed=3,
    )

    def events(p: Any) -> set[str]:
        return {json.dumps(d.payload, sort_keys=True) for d in p.deliveries}

    assert events(faulty) == events(clean)  # the same callbacks, only when they go differs
    assert len(faulty.deliveries) > len(clean.deliveries)  # duplicates
    order = [d.kind for d in faulty.deliveries]
    assert order.index("final-report") < len(order) - 1  # something comes after the report


def test_scenarios_are_read_from_json_and_checked() -> None:
    scenario = Scenario.from_document(
        {"channels": {"sms": "fails"}, "default": "read", "faults": {"duplicates": 0.25}}
    )
    assert scenario.behavior("sms") is B.FAILS and scenario.behavior("whatsapp") is B.READ
    assert scenario.faults.duplicates == 0.25
    for bad in ({"channels": {"sms": "explodes"}}, {"colour": "red"}, {"faults": {"x": 1}}, []):
        with pytest.raises((ValueError, TypeError)):
            Scenario.from_document(bad)  # type: ignore[arg-type]


@pytest.fixture
def emulator() -> Any:
    app = create_emulator(EmulatorConfig(webhook_base_url="http://127.0.0.1:9", time_scale=1e-6))
    return app.test_client()


BASIC = {"Authorization": "Basic " + base64.b64encode(b"emulator:emulator").decode()}


def test_the_api_answers_202_with_a_dispatch_uuid(emulator: Any) -> None:
    response = emulator.post("/v0.1/dispatch", json=REQUEST, headers=BASIC)
    assert response.status_code == 202
    dispatch_uuid = response.json["dispatch_uuid"]
    played = emulator.get(f"/_emulator/dispatches/{dispatch_uuid}").json
    assert (played["outcome"], played["winning_step"]) == ("completed", 2)


def first_ids(seed: int, count: int = 3) -> list[str]:
    config = EmulatorConfig(webhook_base_url="http://127.0.0.1:9", seed=seed, time_scale=1e-6)
    client = create_emulator(config).test_client()
    return [
        client.post("/v0.1/dispatch", json=REQUEST, headers=BASIC).json["dispatch_uuid"]
        for _ in range(count)
    ]


def test_a_run_is_repeated_by_its_seed_and_runs_with_nearby_seeds_share_no_workflow() -> None:
    assert first_ids(5) == first_ids(5)
    assert not set(first_ids(5)) & set(first_ids(6))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"emulator:wrong").decode()},
        {"Authorization": "Bearer not-a-jwt"},
    ],
)
def test_the_api_refuses_bad_credentials_like_dispatch(
    emulator: Any, headers: dict[str, str]
) -> None:
    response = emulator.post("/v0.1/dispatch", json=REQUEST, headers=headers)
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    assert response.json["title"] == "Invalid credentials supplied"


def test_the_api_refuses_invalid_requests_with_every_parameter_named(emulator: Any) -> None:
    bad = json.loads(json.dumps(REQUEST))
    bad["workflow"][0]["failover"]["expiry_time"] = 5
    bad["workflow"][2]["to"]["number"] = "+44"
    response = emulator.post("/v0.1/dispatch", json=bad, headers=BASIC)
    assert response.status_code == 422
    names = {p["name"] for p in response.json["invalid_parameters"]}
    assert names == {"workflow.0.failover.expiry_time", "workflow.2.to.number"}


@pytest.mark.e2e
def test_each_run_of_the_command_has_ids_of_its_own_unless_seeded(tmp_path: Path) -> None:
    # Restarting the stand-in against the same ledger must not hand out the
    # ids of workflows the ledger already has.
    def run(*seed: str) -> tuple[str, str]:
        port = free_port()
        log = tmp_path / f"emulator-{port}.log"
        args = ["emulate", "--port", str(port), "--webhook-base-url", "http://127.0.0.1:9"]
        process = start([*args, *seed], dict(os.environ), log)
        try:
            stand_in = Server(port, process, tmp_path)
            wait_until(lambda: stand_in.request("GET", "/_emulator/status")[0] == 200, process, log)
            body = json.dumps(REQUEST).encode()
            headers = {"Content-Type": "application/json", **BASIC}
            code, _, answer = stand_in.request("POST", "/v0.1/dispatch", body, headers)
            assert code == 202
        finally:
            process.terminate()
            process.wait(30)
        printed = re.search(r"--seed (\d+) repeats this run", log.read_text())
        assert printed is not None
        return answer["dispatch_uuid"], printed.group(1)

    (first, seed), (second, _) = run(), run()
    assert first != second
    assert run("--seed", seed) == (first, seed)


class FlakyReceiver:
    """A webhook receiver that fails each callback's first `failures` deliveries with 503."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[tuple[bytes, str]] = []  # (body, Authorization) of every attempt
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.seen.append((body, self.headers.get("Authorization", "")))
                tries = sum(1 for seen, _ in receiver.seen if seen == body)
                self.send_response(503 if tries <= receiver.failures else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def play_against(receiver: FlakyReceiver, secret: str) -> dict[str, Any]:
    config = EmulatorConfig(
        webhook_base_url=receiver.url, seed=3, time_scale=1e6, signature_secret=secret
    )
    client = create_emulator(config).test_client()
    dispatch_uuid = client.post("/v0.1/dispatch", json=REQUEST, headers=BASIC).json["dispatch_uuid"]
    deadline = time.monotonic() + 30
    while client.get("/_emulator/status").json["pending"]:
        assert time.monotonic() < deadline, "the stand-in never finished delivering"
        time.sleep(0.02)
    played: dict[str, Any] = client.get(f"/_emulator/dispatches/{dispatch_uuid}").json
    return played


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real backoff is 0.2 s to 8 s between attempts; the rule is the same.
    monkeypatch.setattr(emulator_server, "RETRY_DELAYS", (0.01,) * 6)


def test_a_delivery_without_a_2xx_is_retried_signed_afresh(quick_retries: None) -> None:
    receiver = FlakyReceiver(failures=2)
    played = play_against(receiver, "a-signature-secret-of-32-bytes!!")
    assert played["planned"] == len(played["delivered"]) > 0
    assert {(d["code"], d["attempts"]) for d in played["delivered"]} == {(200, 3)}
    # Every callback came three times, the same body each time, each with a token of its own.
    bodies = [body for body, _ in receiver.seen]
    assert len(bodies) == 3 * played["planned"]
    assert all(bodies.count(body) == 3 for body in bodies)
    tokens = [auth for _, auth in receiver.seen]
    assert all(t.startswith("Bearer ") for t in tokens) and len(set(tokens)) == len(tokens)


def test_a_delivery_that_never_gets_a_2xx_is_given_up_after_seven_attempts(
    quick_retries: None,
) -> None:
    receiver = FlakyReceiver(failures=100)
    played = play_against(receiver, "a-signature-secret-of-32-bytes!!")
    assert {(d["code"], d["attempts"]) for d in played["delivered"]} == {(503, 7)}
    assert len(receiver.seen) == 7 * played["planned"]


def test_the_api_takes_the_ledgers_jwt_checked_against_the_applications_key() -> None:
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    pems = [
        k.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode() for k in keys
    ]
    public = keys[0].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    config = EmulatorConfig(
        webhook_base_url="http://127.0.0.1:9", time_scale=1e-6, public_key=public.decode()
    )
    client = create_emulator(config).test_client()

    def answer(pem: str, application_id: str = "an-application") -> int:
        settings = Settings(dispatch_application_id=application_id, dispatch_private_key=pem)
        headers = {"Authorization": authorization(settings, time.time())}
        status: int = client.post("/v0.1/dispatch", json=REQUEST, headers=headers).status_code
        return status

    assert answer(pems[0]) == 202  # signed with the application's key, as the ledger signs
    assert answer(pems[1]) == 401  # another key


# --- the Messages API's failover -------------------------------------------------

MESSAGES_REQUEST = payloads.messages_failover_request("rcs", "whatsapp", "sms")


@pytest.mark.parametrize(
    ("channels", "outcome", "winner", "items"),
    [
        ({"rcs": B.READ}, "completed", 1, 1),
        ({"rcs": B.FAILS, "whatsapp": B.DELIVERED_LATE}, "completed", 2, 2),
        ({"rcs": B.UNDELIVERABLE, "whatsapp": B.FAILS}, "completed", 3, 3),
        ({"rcs": B.FAILS, "whatsapp": B.FAILS, "sms": B.UNDELIVERABLE}, "error", None, 3),
        ({"rcs": B.FAILS, "whatsapp": B.SILENT}, None, None, 2),
    ],
)
def test_messages_plans_fail_over_on_failure_only(
    channels: dict[str, Behavior], outcome: str | None, winner: int | None, items: int
) -> None:
    played = plan_messages(MESSAGES_REQUEST, Scenario(channels=channels), 1, START)
    assert (played.outcome, played.winning_step) == (outcome, winner)
    assert {d.kind for d in played.deliveries} == {"message-status"}  # no final report
    places = {d.payload["workflow"]["items_number"] for d in played.deliveries}
    assert places == {str(n) for n in range(1, items + 1)}
    assert {d.payload["workflow"]["items_total"] for d in played.deliveries} == {"3"}
    assert len(played.dispatch_uuid) == 55


def test_messages_statuses_are_valid_and_spelled_as_asked() -> None:
    from app.spec.intake import CallbackKind, read

    scenario = Scenario(channels={"rcs": B.FAILS}, faults=Faults(duplicates=0.5, reorder=5))
    for spelling, names in (
        ("net", ("workflow_id", "items_number")),
        ("java", ("id", "item_number")),
    ):
        played = plan_messages(MESSAGES_REQUEST, scenario, 3, START, spelling)
        for d in played.deliveries:
            assert set(names) <= set(d.payload["workflow"])
            event = read(CallbackKind.MESSAGE_STATUS, json.dumps(d.payload).encode(), 32).event
            assert event.dispatch_uuid == played.dispatch_uuid  # type: ignore[union-attr]


def test_the_messages_api_answers_202_with_a_workflow_id_or_names_every_problem(
    emulator: Any,
) -> None:
    response = emulator.post("/v1/messages", json=MESSAGES_REQUEST, headers=BASIC)
    assert response.status_code == 202
    workflow_id = response.json["workflow_id"]
    assert response.json["message_uuid"]
    played = emulator.get(f"/_emulator/dispatches/{workflow_id}").json
    assert (played["outcome"], played["winning_step"], played["cost"]) == (
        "completed",
        1,
        {"EUR": "0.0150"},
    )
    bad = {**MESSAGES_REQUEST, "channel": "fax", "failover": []}
    refused = emulator.post("/v1/messages", json=bad, headers=BASIC)
    assert refused.status_code == 422
    assert {p["name"] for p in refused.json["invalid_parameters"]} == {"channel", "failover"}
    assert emulator.post("/v1/messages", json=MESSAGES_REQUEST).status_code == 401


def test_sms_is_never_read_only_delivered() -> None:
    played = play({"messenger": B.FAILS, "viber_service_msg": B.FAILS, "sms": B.READ})
    sms = [d.payload["status"] for d in played.deliveries if d.kind == "message-status"][-2:]
    assert sms == ["submitted", "delivered"]
    late = play({"messenger": B.FAILS, "viber_service_msg": B.FAILS, "sms": B.READ_LATE})
    assert "read" not in {d.payload.get("status") for d in late.deliveries}


@pytest.mark.parametrize("time_scale", [1.0, 600.0])
@pytest.mark.parametrize("faults", [NO_FAULTS, Faults(reorder=40, report_first=True)])
def test_no_event_is_sent_before_it_happened(time_scale: float, faults: Faults) -> None:
    from app.emulator.plan import started_for

    channels = {"messenger": B.READ_LATE, "viber_service_msg": B.DELIVERED_LATE}
    now = START
    first = play(channels, faults)
    played = plan(
        REQUEST, Scenario(channels=channels, faults=faults), 1, started_for(first, now, time_scale)
    )
    assert [d.deliver_at for d in played.deliveries] == [d.deliver_at for d in first.deliveries]
    for d in played.deliveries:
        sent = now + timedelta(seconds=d.deliver_at / time_scale)
        happened = datetime.fromisoformat(d.payload["timestamp"].replace("Z", "+00:00"))
        assert happened <= sent, (d.kind, happened, sent)
    if time_scale > 1:  # and not further back than it must
        assert started_for(first, now, time_scale) < now
