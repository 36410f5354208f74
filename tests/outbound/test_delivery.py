"""Webhooks out: endpoints registered, events signed and sent, retried, given up, replayed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import standardwebhooks
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.config import Settings
from app.extensions import get_db
from app.outbound import endpoints
from app.outbound.delivery import Deliverer
from tests.conftest import decide_one, query
from tests.outbound.receiver import receiving
from tests.servers import free_port

TOKEN = "owner-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def owner_app(clean_db: str) -> Iterator[Flask]:
    application = create_app(
        {
            "database_url": clean_db,
            "apply_in_web": False,
            "api_token": TOKEN,
            "endpoints_allow_http": True,
            "endpoints_allow_private": True,
        }
    )
    application.config["TESTING"] = True
    yield application
    get_db(application).close()


@pytest.fixture
def owner(owner_app: Flask) -> FlaskClient:
    return owner_app.test_client()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def move(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def deliverer(client: FlaskClient, clock: Clock | None = None, **settings: Any) -> Deliverer:
    base = {
        "database_url": "unused",
        "endpoints_allow_http": True,
        "endpoints_allow_private": True,
        **settings,
    }
    return Deliverer(
        get_db(client.application),
        Settings().with_overrides(base),
        clock=clock or (lambda: datetime.now(UTC)),
    )


def register(client: FlaskClient, url: str, **fields: Any) -> dict[str, Any]:
    answer = client.post("/endpoints", json={"url": url, **fields}, headers=AUTH)
    assert answer.status_code == 201, answer.get_json()
    document: dict[str, Any] = answer.get_json()
    return document


# --- registering -------------------------------------------------------------


def test_endpoints_are_the_owners(client: FlaskClient, owner: FlaskClient) -> None:
    # No API_TOKEN set: off, and says how to turn it on.
    answer = client.post("/endpoints", json={"url": "https://example.com/h"})
    assert answer.status_code == 403 and "API_TOKEN" in answer.get_json()["message"]
    for headers in ({}, {"Authorization": "Bearer forged"}):
        assert (
            owner.post(
                "/endpoints", json={"url": "https://x.example/"}, headers=headers
            ).status_code
            == 401
        )
        assert owner.get("/endpoints", headers=headers).status_code == 401
        assert owner.delete("/endpoints/ep_x", headers=headers).status_code == 401


def test_an_endpoint_is_registered_listed_and_removed(owner: FlaskClient) -> None:
    added = register(
        owner,
        "https://hooks.example.com/dispatch?team=ops",
        events=["workflow.decided"],
        description="tickets",
    )
    assert added["id"].startswith("ep_")
    assert added["secret"].startswith("whsec_")
    standardwebhooks.Webhook(added["secret"])  # a secret its library takes
    assert added["events"] == ["workflow.decided"]
    [listed] = owner.get("/endpoints", headers=AUTH).get_json()["endpoints"]
    assert listed["id"] == added["id"] and listed["enabled"] is True
    assert "secret" not in listed and added["secret"] not in json.dumps(listed)
    assert owner.delete(f"/endpoints/{added['id']}", headers=AUTH).status_code == 204
    assert owner.delete(f"/endpoints/{added['id']}", headers=AUTH).status_code == 404
    assert owner.get("/endpoints", headers=AUTH).get_json()["endpoints"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/"}, "url"),
        ({"url": "https://"}, "url"),
        ({"url": "https://example.com/#x"}, "url"),
        ({"url": "https://exa mple.com/"}, "url"),
        ({"url": 7}, "url"),
        ({"url": "https://example.com/", "events": ["workflow.nothing"]}, "events"),
        ({"url": "https://example.com/", "events": []}, "events"),
        ({"url": "https://example.com/", "events": ["workflow.decided"] * 2}, "events"),
        ({"url": "https://example.com/", "secret": "whsec_mine"}, "secret"),
        ({"url": "https://example.com/", "description": "x" * 501}, "description"),
        ({}, "url"),
    ],
)
def test_a_bad_registration_says_which_field(
    owner: FlaskClient, body: dict[str, Any], field: str
) -> None:
    answer = owner.post("/endpoints", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.get_json()
    assert field in answer.get_json()["errors"]


def test_http_and_internal_addresses_are_refused_unless_allowed(clean_db: str) -> None:
    application = create_app({"database_url": clean_db, "apply_in_web": False, "api_token": TOKEN})
    client = application.test_client()
    for url in (
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://10.0.0.7/hook",
        "https://localhost/hook",
    ):
        answer = client.post("/endpoints", json={"url": url}, headers=AUTH)
        assert answer.status_code == 422, url
        assert "Not allowed" in answer.get_json()["errors"]["url"][0]
    assert (
        client.post("/endpoints", json={"url": "https://93.184.215.14/h"}, headers=AUTH).status_code
        == 201
    )
    get_db(application).close()


def test_a_name_resolving_to_an_internal_address_is_not_sent_to(owner: FlaskClient) -> None:
    """Registered while allowed, then sent by a deliverer that allows no private address."""
    with receiving() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        register(owner, f"http://localhost:{port}/hooks")
        decide_one(owner, "d-1")
        done = deliverer(owner, endpoints_allow_private=False).turn()
    assert receiver.received == []
    assert done.delivered == 0 and done.failed == 2  # two events, side by side
    [listed] = owner.get("/endpoints", headers=AUTH).get_json()["endpoints"]
    assert "not a public address" in listed["last_outcome"]


# --- delivering --------------------------------------------------------------


def test_each_event_is_sent_signed_as_standard_webhooks_says(owner: FlaskClient) -> None:
    with receiving() as receiver:
        added = register(owner, receiver.url)
        decided_only = register(owner, receiver.url + "/decided", events=["workflow.decided"])
        decide_one(owner, "d-1")
        done = deliverer(owner).turn()
    assert done.delivered == 3
    feed = owner.get("/events").get_json()["events"]
    assert [e["type"] for e in feed] == ["workflow.decided", "workflow.discrepancy"]
    # Sent a few at a time: in any order (each workflow's `sequence` orders them).
    order = [e["id"] for e in feed]
    to_all = sorted(
        (r for r in receiver.received if r.path == "/hooks"),
        key=lambda r: order.index(r.headers["webhook-id"]),
    )
    assert standardwebhooks.Webhook(added["secret"]).verify(to_all[0].body, to_all[0].headers)
    # What a receiver gets is the feed's event, byte for byte the same document.
    assert [json.loads(r.body) for r in to_all] == feed
    assert [r.headers["webhook-id"] for r in to_all] == [e["id"] for e in feed]
    assert all(r.headers["Content-Type"] == "application/json" for r in to_all)
    [decided] = [r for r in receiver.received if r.path == "/hooks/decided"]
    assert json.loads(decided.body)["type"] == "workflow.decided"
    hook = standardwebhooks.Webhook(decided_only["secret"])
    assert hook.verify(decided.body, decided.headers)["id"] == feed[0]["id"]
    # Another endpoint's secret does not verify it.
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(added["secret"]).verify(decided.body, decided.headers)


def test_an_endpoint_gets_only_events_made_after_it_was_registered(owner: FlaskClient) -> None:
    decide_one(owner, "d-old")
    with receiving() as receiver:
        register(owner, receiver.url)
        decide_one(owner, "d-new", prefix="n")
        deliverer(owner).turn()
    sent = {json.loads(r.body)["data"]["dispatch_uuid"] for r in receiver.received}
    assert sent == {"d-new"}


def test_a_failed_delivery_is_retried_on_schedule_under_the_same_id(owner: FlaskClient) -> None:
    statuses = iter([500, 503, 200, 200, 200])
    clock = Clock()
    with receiving(lambda _r: (next(statuses), 0.0)) as receiver:
        added = register(owner, receiver.url, events=["workflow.decided"])
        decide_one(owner, "d-1")
        hand = deliverer(owner, clock, endpoint_retry_seconds="5,300")
        assert hand.turn().failed == 1
        clock.move(4)
        assert hand.turn().delivered == 0  # not due yet
        clock.move(1)
        assert hand.turn().failed == 1  # the second attempt, 5 s after the first
        clock.move(299)
        assert hand.turn().delivered == 0
        clock.move(1)
        assert hand.turn().delivered == 1
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert len(receiver.received) == 3 and len(ids) == 1
    receiver.verified(added["secret"])  # each attempt signed afresh, each valid
    [listed] = owner.get("/endpoints", headers=AUTH).get_json()["endpoints"]
    assert listed["last_outcome"] == "HTTP 200" and listed["pending"] == 0
    metrics = owner.get("/metrics").get_data(as_text=True)
    for outcome, count in (("delivered", 1), ("failed", 2)):
        line = f'dispatch_ledger_deliveries_total{{endpoint="{added["id"]}",outcome="{outcome}"}}'
        assert f"{line} {count:.1f}" in metrics


def test_redirects_are_not_followed(owner: FlaskClient) -> None:
    with receiving(lambda r: (302, 0.0)) as receiver:
        register(owner, receiver.url, events=["workflow.decided"])
        decide_one(owner, "d-1")
        assert deliverer(owner).turn().failed == 1
    assert [r.path for r in receiver.received] == ["/hooks"]  # /elsewhere never asked
    [listed] = owner.get("/endpoints", headers=AUTH).get_json()["endpoints"]
    assert listed["last_outcome"] == "HTTP 302"


def test_an_endpoint_failing_the_whole_schedule_is_disabled_then_enabled_and_replayed(
    owner: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    dead = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens: refused
    added = register(owner, dead, events=["workflow.decided"])
    started = clock.now
    decide_one(owner, "d-1")
    hand = deliverer(owner, clock, endpoint_retry_seconds="5,60")
    assert hand.turn().failed == 1
    clock.move(5)
    assert hand.turn().failed == 1
    clock.move(60)
    with caplog.at_level("ERROR"):
        done = hand.turn()
    assert done.gave_up == 1 and done.disabled == [added["id"]]
    assert f"endpoint {added['id']} is disabled" in caplog.text
    [listed] = owner.get("/endpoints", headers=AUTH).get_json()["endpoints"]
    assert listed["enabled"] is False and "3 attempts" in listed["disabled_reason"]
    metrics = owner.get("/metrics").get_data(as_text=True)
    assert "dispatch_ledger_endpoints_disabled 1.0" in metrics
    # Disabled: what is made meanwhile is not sent to it.
    decide_one(owner, "d-2", prefix="n")
    assert hand.turn().delivered == 0
    with receiving() as receiver:
        db = get_db(owner.application)
        url = receiver.url
        db.run(lambda conn: conn.execute("UPDATE endpoint SET url = %s", (url,)))
        endpoints.enable(db, added["id"], clock())
        decide_one(owner, "d-3", prefix="o")
        hand.turn()
        sent = [json.loads(r.body)["data"]["dispatch_uuid"] for r in receiver.received]
        assert sent == ["d-3"]  # from now on, not what it missed
        assert endpoints.replay(db, added["id"], started, clock()) == 2
        hand.turn()
        sent = [json.loads(r.body)["data"]["dispatch_uuid"] for r in receiver.received]
        assert sorted(sent) == ["d-1", "d-2", "d-3"]
    assert owner.get("/endpoints", headers=AUTH).get_json()["endpoints"][0]["enabled"] is True


def test_a_rotated_secret_and_the_previous_one_both_verify_for_a_day(owner: FlaskClient) -> None:
    with receiving() as receiver:
        added = register(owner, receiver.url, events=["workflow.decided"])
        db = get_db(owner.application)
        new = endpoints.rotate_secret(db, added["id"], datetime.now(UTC))
        decide_one(owner, "d-1")
        deliverer(owner).turn()
    [got] = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (added["secret"], new):
        standardwebhooks.Webhook(secret).verify(got.body, got.headers)


def test_a_slow_endpoint_does_not_hold_up_another(owner: FlaskClient) -> None:
    with receiving(lambda _r: (200, 3.0)) as slow, receiving() as quick:
        register(owner, slow.url)
        register(owner, quick.url)
        hand = deliverer(owner, endpoint_timeout_seconds=2.0, deliver_poll_seconds=0.05)
        stop = threading.Event()
        thread = threading.Thread(target=hand.run, args=(stop,))
        thread.start()
        try:
            slow.wait_for(0)
            decide_one(owner, "d-1")
            started = time.monotonic()
            quick.wait_for(2, timeout=5)
            assert time.monotonic() - started < 1.5  # not after the slow one's timeouts
        finally:
            stop.set()
            thread.join(20)
    assert not thread.is_alive()
    # The slow one timed out once per lane (its two events went out side by
    # side); nothing is sent to it again before the schedule's first wait.
    assert len(slow.received) == 2


def test_a_deliverer_stopped_mid_send_says_so_without_an_error(
    owner: FlaskClient, clean_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A process stopping (SIGTERM) closes its database while a slow send is still
    # out: the send's outcome cannot be recorded, which is expected, not a failure.
    with receiving(lambda _r: (200, 1.0)) as slow:
        added = register(owner, slow.url, events=["workflow.decided"])
        decide_one(owner, "d-1")
        settings = Settings().with_overrides(
            {
                "database_url": clean_db,
                "endpoints_allow_http": True,
                "endpoints_allow_private": True,
            }
        )
        own = get_db(owner.application).another("deliver", 3)
        hand = Deliverer(own, settings)
        thread = threading.Thread(target=hand.run)
        with caplog.at_level("INFO", logger="app.outbound.delivery"):
            thread.start()
            slow.wait_for(1)
            hand.stop()
            thread.join(20)
            own.close()
            time.sleep(1.5)  # the send finishes and tries to record its outcome
    assert not thread.is_alive()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", f"stopped before recording what was sent to endpoint {added['id']}") in said
    # Its own records: an emulator another test left retrying may log meanwhile.
    own_records = [r for r in caplog.records if r.name.startswith("app.outbound")]
    assert [r.getMessage() for r in own_records if r.levelno >= 30] == []
    # Given back on stopping: the next deliverer sends it at once, not after the lease.
    assert query(clean_db, "SELECT count(*) FROM endpoint_delivery WHERE leased_until > now()") == [
        (0,)
    ]


def test_deliverers_side_by_side_never_send_an_event_twice(owner: FlaskClient) -> None:
    with receiving() as receiver:
        register(owner, receiver.url)
        for n in range(15):
            decide_one(owner, f"d-{n}", prefix=f"m{n}")
        made = len(owner.get("/events?limit=1000").get_json()["events"])
        stop = threading.Event()
        hands = [deliverer(owner, deliver_poll_seconds=0.01) for _ in range(3)]
        threads = [threading.Thread(target=h.run, args=(stop,)) for h in hands]
        for thread in threads:
            thread.start()
        try:
            receiver.wait_for(made)
            time.sleep(0.3)  # room for a second sending, if one were to come
        finally:
            stop.set()
            for thread in threads:
                thread.join(20)
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(ids) == made == len(set(ids))


def test_the_command_registers_lists_and_removes(clean_db: str) -> None:
    from click.testing import CliRunner

    from app.cli import main

    env = {"DATABASE_URL": clean_db, "ENDPOINTS_ALLOW_HTTP": "false"}
    runner = CliRunner()
    refused = runner.invoke(main, ["endpoints", "add", "http://example.com/h"], env=env)
    assert refused.exit_code == 1 and "must be https" in refused.output
    added = runner.invoke(
        main, ["endpoints", "add", "https://example.com/h", "--event", "workflow.overdue"], env=env
    )
    assert added.exit_code == 0, added.output
    endpoint_id = added.stdout.split()[1]  # stdout: a log line may be on stderr
    assert "whsec_" in added.output
    listed = runner.invoke(main, ["endpoints", "list"], env=env)
    assert endpoint_id in listed.output and "events: workflow.overdue" in listed.output
    assert "whsec_" not in listed.output
    rotated = runner.invoke(main, ["endpoints", "rotate-secret", endpoint_id], env=env)
    assert rotated.exit_code == 0 and "whsec_" in rotated.output
    assert runner.invoke(main, ["endpoints", "enable", endpoint_id], env=env).exit_code == 0
    replayed = runner.invoke(
        main, ["endpoints", "replay", endpoint_id, "--since", "2026-01-01T00:00:00Z"], env=env
    )
    assert replayed.exit_code == 0 and "0 events queued" in replayed.output
    bad = runner.invoke(main, ["endpoints", "replay", endpoint_id, "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "ISO 8601" in bad.output
    status = runner.invoke(main, ["status"], env=env)
    assert f"endpoint {endpoint_id} (https://example.com/h, enabled): 0 events waiting" in (
        status.output
    )
    assert runner.invoke(main, ["endpoints", "remove", endpoint_id], env=env).exit_code == 0
    missing = runner.invoke(main, ["endpoints", "remove", endpoint_id], env=env)
    assert missing.exit_code == 1 and "no endpoint has the id" in missing.output
    assert query(clean_db, "SELECT count(*) FROM endpoint") == [(0,)]


def test_a_stopped_deliverer_gives_back_what_it_had_not_sent(owner: FlaskClient) -> None:
    with receiving() as receiver:
        register(owner, receiver.url)
        decide_one(owner, "d-1")
        first, second = deliverer(owner), deliverer(owner)
        first.queue()
        [claims] = first.claim().values()  # leased, then the process stops before sending
        assert len(claims) == 2
        assert second.turn().delivered == 0  # held by the first's lease
        first.stop()
        assert second.turn().delivered == 2  # at once, not when the lease runs out
    assert len(receiver.received) == 2


def test_the_applier_stopped_gives_back_its_deliverers_leases(
    owner: FlaskClient, clean_db: str, tmp_path: Any
) -> None:
    """`dispatch-ledger apply` with its deliverer, stopped by SIGTERM as gunicorn stops it."""
    import os
    import signal
    import subprocess
    import sys

    from tests.servers import ROOT

    with receiving(lambda _r: (200, 30.0)) as stuck:  # answers too late: in flight at the stop
        register(owner, stuck.url, events=["workflow.decided"])
        decide_one(owner, "d-1")
        env = {
            **os.environ,
            "DATABASE_URL": clean_db,
            "ENDPOINTS_ALLOW_HTTP": "true",
            "ENDPOINTS_ALLOW_PRIVATE": "true",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "apply", "--poll", "0.05"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            stuck.wait_for(1, timeout=20)
            leased = "SELECT count(*) FROM endpoint_delivery WHERE leased_until IS NOT NULL"
            assert query(clean_db, leased) == [(1,)]
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
        assert query(clean_db, leased) == [(0,)]  # given back: the next deliverer sends it now


def test_deliver_once_sends_what_is_due_and_says_so(owner: FlaskClient, clean_db: str) -> None:
    from click.testing import CliRunner

    from app.cli import main

    with receiving() as receiver:
        added = register(owner, receiver.url)
        decide_one(owner, "d-1")
        env = {
            "DATABASE_URL": clean_db,
            "ENDPOINTS_ALLOW_HTTP": "true",
            "ENDPOINTS_ALLOW_PRIVATE": "true",
        }
        done = CliRunner().invoke(main, ["deliver", "--once"], env=env)
        assert done.exit_code == 0, done.output
        assert "delivered 2, failed 0, gave up 0" in done.output
    assert len(receiver.verified(added["secret"])) == 2
