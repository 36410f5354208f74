"""End to end: `dispatch-ledger serve` (gunicorn) against `dispatch-ledger emulate`, over HTTP.

Every failover scenario is played by the stand-in at 600x speed, signed, with
faults on demand, every callback sent to the one status URL; the ledger's own
decision must match what the stand-in played.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests import payloads
from tests.outbound.receiver import receiving
from tests.servers import Server, free_port, start, wait_until

pytestmark = pytest.mark.e2e
SECRET = "an-end-to-end-signature-secret-32b"
TOKEN = "an-end-to-end-api-token"
REQUEST = payloads.fixture("dispatch_request_failover.json")
BASIC = "Basic " + base64.b64encode(b"emulator:emulator").decode()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    folder = tmp_path_factory.mktemp("pair")
    ledger_port, emulator_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    ledger = start(
        ["serve", "--port", str(ledger_port)],
        base
        | {
            "DATA_DIR": str(folder),
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": "2",
            "VONAGE_SIGNATURE_SECRET": SECRET,
            "API_TOKEN": TOKEN,
            "DISPATCH_API_URL": f"http://127.0.0.1:{emulator_port}",
            "DISPATCH_API_KEY": "emulator",
            "DISPATCH_API_SECRET": "emulator",
            # Webhooks out go to the test's own receiver, on this machine.
            "ENDPOINTS_ALLOW_HTTP": "true",
            "ENDPOINTS_ALLOW_PRIVATE": "true",
        },
        folder / "ledger.log",
    )
    emulator = start(
        [
            "emulate",
            "--port",
            str(emulator_port),
            "--time-scale",
            "600",
            "--seed",
            "42",
            # Both kinds to one URL, as Dispatch does with an application's status URL.
            "--status-url",
            f"http://127.0.0.1:{ledger_port}/webhooks/status",
            # The Messages API's statuses as Vonage's Java SDK reads them (unit tests: both).
            "--workflow-spelling",
            "java",
        ],
        base | {"VONAGE_SIGNATURE_SECRET": SECRET},
        folder / "emulator.log",
    )
    ledger_srv = Server(ledger_port, ledger, folder)
    emulator_srv = Server(emulator_port, emulator, folder)
    wait_until(
        lambda: ledger_srv.request("GET", "/readyz")[0] == 200, ledger, folder / "ledger.log"
    )
    wait_until(
        lambda: emulator_srv.request("GET", "/_emulator/status")[0] == 200,
        emulator,
        folder / "emulator.log",
    )
    yield ledger_srv, emulator_srv
    for process in (emulator, ledger):
        process.terminate()
        process.wait(30)


def played_by(emulator: Server, path: str, request: Any, scenario: Any) -> Any:
    """Send a workflow straight to the stand-in, played by `scenario`; its 202 answer."""
    code, _, answer = emulator.request(
        "POST",
        path,
        json.dumps(request).encode(),
        {
            "Content-Type": "application/json",
            "Authorization": BASIC,
            "X-Emulator-Scenario": json.dumps(scenario),
        },
    )
    assert code == 202, (scenario, answer)
    return answer


def idle(emulator: Server) -> None:
    deadline = time.monotonic() + 60
    while emulator.request("GET", "/_emulator/status")[2]["pending"]:
        assert time.monotonic() < deadline, "the stand-in never finished delivering"
        time.sleep(0.1)


def test_a_workflow_sent_through_the_ledger_plays_out_and_is_decided(
    pair: tuple[Server, Server],
) -> None:
    ledger, emulator = pair
    code, _, answer = ledger.request(
        "POST",
        "/workflows",
        json.dumps(REQUEST).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    assert code == 202
    dispatch_uuid = answer["dispatch_uuid"]
    idle(emulator)
    _, _, played = emulator.request("GET", f"/_emulator/dispatches/{dispatch_uuid}")
    _, _, workflow = ledger.request("GET", f"/workflows/{dispatch_uuid}?wait=10")
    assert workflow["pending_callbacks"] == 0
    assert (workflow["status"], workflow["decided_by"], workflow["definition"]) == (
        played["outcome"],
        "definition",
        "sent",
    )
    assert workflow["winning_step"] == played["winning_step"] == 2
    assert all(d["code"] == 200 for d in played["delivered"])  # signed, so accepted


SCENARIOS = {
    "read at once": ({"channels": {"messenger": "read"}}, []),
    "delivered, never read": ({}, []),
    "two failures then sms": (
        {"channels": {"messenger": "fails", "viber_service_msg": "undeliverable"}},
        [],
    ),
    "everything fails": ({"default": "fails"}, []),
    "read too late": ({"channels": {"messenger": "read_late", "viber_service_msg": "fails"}}, []),
    "late delivery after the report": (
        {"channels": {"messenger": "silent", "viber_service_msg": "delivered_late"}},
        ["usage_mismatch"],
    ),
    "nothing ever happens": ({"default": "silent"}, []),
    "duplicates and reordering": (
        {"channels": {"messenger": "fails"}, "faults": {"duplicates": 0.6, "reorder": 40}},
        [],
    ),
    "report before the last statuses": (
        {
            "channels": {"messenger": "fails", "viber_service_msg": "fails"},
            "faults": {"report_first": True},
        },
        [],
    ),
    "statuses after the report": (
        {"channels": {"messenger": "fails"}, "faults": {"late_statuses": True}},
        [],
    ),
}


def test_every_failover_scenario_end_to_end(pair: tuple[Server, Server]) -> None:
    ledger, emulator = pair
    started = {}
    for name, (scenario, _) in SCENARIOS.items():
        dispatch_uuid = played_by(emulator, "/v0.1/dispatch", REQUEST, scenario)["dispatch_uuid"]
        # Recorded rather than sent: the path for workflows another system sends.
        code, _, _ = ledger.request(
            "PUT",
            f"/workflows/{dispatch_uuid}/definition",
            json.dumps(REQUEST).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        assert code == 201
        started[name] = dispatch_uuid
    idle(emulator)

    for name, dispatch_uuid in started.items():
        expected_kinds = SCENARIOS[name][1]
        _, _, played = emulator.request("GET", f"/_emulator/dispatches/{dispatch_uuid}")
        code, _, workflow = ledger.request("GET", f"/workflows/{dispatch_uuid}?wait=10")
        assert code == 200 and workflow["pending_callbacks"] == 0, name
        assert workflow["status"] == (played["outcome"] or "pending"), name
        assert workflow["decided_by"] == "definition", name
        assert workflow["winning_step"] == played["winning_step"], name
        assert workflow["reported_status"] == played["outcome"], name
        assert [d["kind"] for d in workflow["discrepancies"]] == expected_kinds, (name, workflow)
        assert all(d["code"] == 200 for d in played["delivered"]), name
        if played["outcome"] is None:
            assert workflow["current_step"]["step"] == 3


MESSAGES_REQUEST = payloads.messages_failover_request("rcs", "whatsapp", "sms")


def same_cost(a: dict[str, str], b: dict[str, str]) -> bool:
    """Equal amounts per currency (0.0150 is 0.015: the ledger keeps one spelling)."""
    return {c: Decimal(v) for c, v in a.items()} == {c: Decimal(v) for c, v in b.items()}


MESSAGES_SCENARIOS = {
    "read at once": {"channels": {"rcs": "read"}},
    "delivered, never read": {},
    "rejected twice, then sms": {"channels": {"rcs": "fails", "whatsapp": "fails"}},
    "undeliverable, then delivered late": {
        "channels": {"rcs": "undeliverable", "whatsapp": "delivered_late"}
    },
    "everything fails": {"default": "fails"},
    "nothing after submitted": {"channels": {"rcs": "fails"}, "default": "silent"},
    "read late": {"channels": {"rcs": "fails", "whatsapp": "read_late"}},
    "duplicates and reordering": {
        "channels": {"rcs": "fails", "whatsapp": "undeliverable"},
        "faults": {"duplicates": 0.6, "reorder": 40},
    },
}


def test_a_messages_failover_sent_through_the_ledger_is_decided_and_costed(
    pair: tuple[Server, Server],
) -> None:
    ledger, emulator = pair
    code, _, answer = ledger.request(
        "POST",
        "/workflows",
        json.dumps(MESSAGES_REQUEST).encode(),
        {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {TOKEN}",
        },
    )
    assert code == 202, answer
    workflow_id = answer["dispatch_uuid"]
    idle(emulator)
    _, _, played = emulator.request("GET", f"/_emulator/dispatches/{workflow_id}")
    _, _, workflow = ledger.request("GET", f"/workflows/{workflow_id}?wait=10")
    assert (workflow["api"], workflow["definition"], workflow["decided_by"]) == (
        "messages",
        "sent",
        "definition",
    )
    assert (workflow["status"], workflow["winning_step"]) == (
        played["outcome"],
        played["winning_step"],
    )
    assert same_cost(workflow["usage"], played["cost"])
    assert [s["channel"] for s in workflow["steps"]] == ["rcs", "whatsapp", "sms"]


def test_every_messages_failover_scenario_end_to_end(pair: tuple[Server, Server]) -> None:
    """Played by the stand-in and never defined here: decided from the items alone."""
    ledger, emulator = pair
    started = {}
    for name, scenario in MESSAGES_SCENARIOS.items():
        answer = played_by(emulator, "/v1/messages", MESSAGES_REQUEST, scenario)
        started[name] = answer["workflow_id"]
    idle(emulator)
    for name, workflow_id in started.items():
        _, _, played = emulator.request("GET", f"/_emulator/dispatches/{workflow_id}")
        code, _, workflow = ledger.request("GET", f"/workflows/{workflow_id}?wait=10")
        assert code == 200 and workflow["pending_callbacks"] == 0, name
        assert (workflow["api"], workflow["decided_by"]) == ("messages", "callbacks"), name
        assert workflow["status"] == (played["outcome"] or "pending"), (name, workflow)
        assert workflow["winning_step"] == played["winning_step"], name
        assert same_cost(workflow["usage"], played["cost"]), (name, workflow["usage"], played)
        assert workflow["reported_status"] is None, name
        assert workflow["discrepancies"] == [], (name, workflow)
        assert all(d["code"] == 200 for d in played["delivered"]), name
        if played["outcome"] is None:
            # Item 2 was submitted and never heard of again: awaited, with no deadline.
            assert workflow["current_step"]["step"] == 2, name
            assert workflow["awaiting_since"] is not None, name


def test_a_scenario_header_on_the_ledgers_send_reaches_the_stand_in(
    pair: tuple[Server, Server],
) -> None:
    ledger, emulator = pair
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {TOKEN}",
        "X-Emulator-Scenario": json.dumps(
            {"channels": {"messenger": "fails", "viber_service_msg": "fails"}}
        ),
    }
    code, _, answer = ledger.request("POST", "/workflows", json.dumps(REQUEST).encode(), headers)
    assert code == 202, answer
    idle(emulator)
    _, _, played = emulator.request("GET", f"/_emulator/dispatches/{answer['dispatch_uuid']}")
    _, _, workflow = ledger.request("GET", f"/workflows/{answer['dispatch_uuid']}?wait=10")
    assert played["winning_step"] == workflow["winning_step"] == 3  # the scenario was played
    # A scenario the stand-in cannot read is refused, with its reason.
    headers["X-Emulator-Scenario"] = '{"channels": {"sms": "explodes"}}'
    code, _, refused = ledger.request("POST", "/workflows", json.dumps(REQUEST).encode(), headers)
    assert code == 502
    assert "Invalid scenario" in refused["message"]


def test_every_decision_reaches_a_receiver_signed(pair: tuple[Server, Server]) -> None:
    """Workflows played by the stand-in, decided by the ledger, told to a receiver of our own
    (served by gunicorn's applier's deliverer), which checks every signature."""
    ledger, emulator = pair
    owner = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    with receiving() as receiver:
        code, _, added = ledger.request(
            "POST", "/endpoints", json.dumps({"url": receiver.url}).encode(), owner
        )
        assert code == 201, added
        started = []
        for name in ("read at once", "two failures then sms", "everything fails"):
            scenario = SCENARIOS[name][0]
            answer = played_by(emulator, "/v0.1/dispatch", REQUEST, scenario)
            code, _, _ = ledger.request(
                "PUT",
                f"/workflows/{answer['dispatch_uuid']}/definition",
                json.dumps(REQUEST).encode(),
                owner,
            )
            assert code == 201
            started.append(answer["dispatch_uuid"])
        idle(emulator)
        expected = {}
        for dispatch_uuid in started:
            _, _, workflow = ledger.request("GET", f"/workflows/{dispatch_uuid}?wait=10")
            expected[dispatch_uuid] = workflow["status"]
        assert set(expected.values()) == {"completed", "error"}

        def decided() -> dict[str, str]:
            told = {}
            for event in receiver.verified(added["secret"]):  # raises on a bad signature
                if event["type"] == "workflow.decided":
                    told[event["data"]["dispatch_uuid"]] = event["data"]["status"]
            return told

        deadline = time.monotonic() + 30
        while not expected.items() <= decided().items():
            assert time.monotonic() < deadline, (decided(), expected)
            time.sleep(0.1)
    # Each delivery was the feed's event, under its id.
    _, _, feed = ledger.request("GET", "/events?limit=1000", headers={})
    by_id = {e["id"]: e for e in feed["events"]}
    for got in receiver.received:
        assert json.loads(got.body) == by_id[got.headers["webhook-id"]]
