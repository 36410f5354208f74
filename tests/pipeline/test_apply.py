"""The applier: batches, concurrent appliers, failures set aside, lag that can be waited for."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.cli import main
from app.config import Settings
from app.extensions import get_db
from app.model.state import StatusEvent
from app.pipeline import apply, rebuild
from app.pipeline.capture import Delivery, capture
from app.read import read_api
from app.spec.intake import read
from app.store.db import Database
from app.store.migrations import MIGRATIONS_DIR, migrate
from app.store.queries import sql
from tests import payloads
from tests.conftest import fresh_database, query
from tests.pipeline.test_rebuild import snapshot, workload
from tests.pipeline.test_state_in_db import KINDS
from tests.servers import ROOT

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _capture_all(db: Database, deliveries: list[payloads.Delivery]) -> None:
    """Capture only, as the request path does: nothing is applied yet."""
    for kind, payload in deliveries:
        callback = read(KINDS[kind], json.dumps(payload).encode(), 32)
        capture(db, Delivery(callback, "application/json", NOW))


def test_concurrent_appliers_apply_each_callback_once_and_reach_the_rebuilt_state(
    db: Database, clean_db: str
) -> None:
    _capture_all(db, workload(db))
    stored = query(clean_db, "SELECT count(*) FROM raw_callback")[0][0]
    barrier = threading.Barrier(4)

    def applier(batch: int) -> int:
        barrier.wait()  # together, so that their claims and locks really overlap
        return apply.apply_waiting(db, 32, batch=batch).applied

    # Small, different batches: many transactions, interleaved on shared workflows.
    with ThreadPoolExecutor(4) as pool:
        applied = list(pool.map(applier, [3, 5, 7, 11]))
    assert sum(applied) == stored  # each exactly once: none twice, none left
    assert all(applied)
    assert query(clean_db, "SELECT count(*) FROM apply_queue") == [(0,)]
    incremental = snapshot(clean_db)
    assert incremental["discrepancy"] and incremental["reconciliation"]

    # Folding everything again in one pass (a rebuild) gives exactly this state.
    rebuild.rebuild(clean_db, 32)
    assert snapshot(clean_db) == incremental


def test_a_callback_that_fails_to_apply_is_set_aside_and_the_others_are_applied(
    db: Database, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _capture_all(db, payloads.three_message_workflow("d-1"))
    real = apply.apply_status

    def buggy(message: Any, event: Any) -> Any:
        if event.message_uuid == "m-2-viber":
            raise RuntimeError("a bug in a transition")
        return real(message, event)

    monkeypatch.setattr(apply, "apply_status", buggy)
    summary = apply.apply_waiting(db, 32, clock=lambda: NOW)
    # The batch failed as a whole, then each callback alone: only the viber
    # message's two are set aside.
    assert (summary.applied, summary.failed) == (5, 2)
    failed = "SELECT error, attempts, apply_after FROM apply_queue"
    retry_at = NOW + timedelta(seconds=apply.FIRST_RETRY_SECONDS)
    assert query(clean_db, failed) == [("RuntimeError: a bug in a transition", 1, retry_at)] * 2
    viber = "SELECT submitted_at, rejected_at FROM message WHERE message_uuid = 'm-2-viber'"
    assert query(clean_db, viber) == [(None, None)]  # known from the final report only

    # Not due before its backoff; each failure doubles it.
    assert apply.apply_waiting(db, 32, clock=lambda: NOW).failed == 0
    later = NOW + timedelta(seconds=apply.FIRST_RETRY_SECONDS)
    assert apply.apply_waiting(db, 32, clock=lambda: later).failed == 2
    again = later + timedelta(seconds=2 * apply.FIRST_RETRY_SECONDS)
    assert {row[1:] for row in query(clean_db, failed)} == {(2, again)}

    # After the fix, they are applied on their next turn, and the workflow is whole.
    monkeypatch.undo()
    assert apply.apply_waiting(db, 32, clock=lambda: again).applied == 2
    assert None not in query(clean_db, viber)[0]


def test_status_lists_failed_callbacks_and_apply_retry_failed_applies_them_after_a_fix(
    db: Database, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _capture_all(db, payloads.three_message_workflow("d-1"))

    def broken(message: Any, event: Any) -> Any:
        raise ValueError("no transition today")

    monkeypatch.setattr(apply, "apply_status", broken)
    apply.apply_waiting(db, 32)
    runner = CliRunner()
    env = {"DATABASE_URL": clean_db}

    status = runner.invoke(main, ["status"], env=env)
    assert status.exit_code == 1, status.output
    assert "0 callbacks waiting to be applied, 6 failed" in status.output
    assert status.output.count("ValueError: no transition today") == 6
    assert "dispatch-ledger apply --once --retry-failed" in status.output

    monkeypatch.undo()
    # Without --retry-failed they wait for their backoff.
    assert "applied 0" in runner.invoke(main, ["apply", "--once"], env=env).output
    fixed = runner.invoke(main, ["apply", "--once", "--retry-failed"], env=env)
    assert fixed.exit_code == 0, fixed.output
    assert "applied 6, failed 0" in fixed.output
    assert runner.invoke(main, ["status"], env=env).exit_code == 0
    assert query(clean_db, "SELECT count(*) FROM message WHERE submitted_at IS NOT NULL") == [(3,)]


@pytest.fixture
def live(clean_db: str) -> Iterator[Flask]:
    """The service as deployed: its own background applier in the process."""
    app = create_app({"database_url": clean_db, "apply_in_web": True})
    yield app
    get_db(app).close()


def test_a_callback_is_answered_whether_or_not_it_can_be_applied(
    live: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(message: Any, event: Any) -> Any:
        raise RuntimeError("a bug in a transition")

    monkeypatch.setattr(apply, "apply_status", broken)
    client = live.test_client()
    delivery = payloads.status("m-1", "delivered", "2026-01-01T10:00:00Z", dispatch_uuid="d-1")
    answer = client.post("/webhooks/status", json=delivery)
    assert (answer.status_code, answer.json["status"]) == (200, "accepted")  # type: ignore[index]

    # The read waits for the applier, which sets the callback aside: it says so.
    deadline = time.monotonic() + 10
    while client.get("/readyz").json["applier"]["failed"] == 0:  # type: ignore[index]
        assert time.monotonic() < deadline, "the failure was never recorded"
    missing = client.get("/messages/m-1?wait=1")
    assert missing.status_code == 404
    assert (
        "1 callbacks naming it are captured and not applied (1 failed)"
        in (
            missing.json["message"]  # type: ignore[index]
        )
    )
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "dispatch_ledger_callbacks_failed 1.0" in metrics
    assert "dispatch_ledger_apply_failures_total" in metrics


def test_reads_wait_for_the_applier_and_say_what_is_still_waiting(
    live: Flask, clean_db: str
) -> None:
    client = live.test_client()
    submitted = payloads.status("m-1", "submitted", "2026-01-01T10:00:00Z", dispatch_uuid="d-1")
    assert client.post("/webhooks/status", json=submitted).status_code == 200
    first = client.get("/workflows/d-1?wait=10").json
    assert first is not None and first["pending_callbacks"] == 0
    assert [m["status"] for m in first["messages"]] == ["submitted"]

    with psycopg.connect(clean_db) as blocker:
        # The message's row is held: the next callback is captured, not applied.
        blocker.execute("SELECT 1 FROM message WHERE message_uuid = 'm-1' FOR UPDATE")
        delivered = dict(submitted, status="delivered", timestamp="2026-01-01T10:00:05Z")
        assert client.post("/webhooks/status", json=delivered).status_code == 200
        started = time.monotonic()
        held = client.get("/messages/m-1?wait=0.5").json
        assert time.monotonic() - started >= 0.5  # it waited, then answered what it has
        assert held is not None and (held["status"], held["pending_callbacks"]) == ("submitted", 1)
        assert client.get("/workflows/d-1").json["pending_callbacks"] == 1  # type: ignore[index]
    # Released: the same read now answers as soon as the applier is done.
    applied = client.get("/messages/m-1?wait=10").json
    assert applied is not None and (applied["status"], applied["pending_callbacks"]) == (
        "delivered",
        0,
    )
    ready = client.get("/readyz").json
    assert ready is not None and ready["applier"]["in_process"] == "running"
    assert ready["applier"]["waiting"] == 0


def test_a_waiting_reader_looks_soon_then_at_most_ten_times_a_second() -> None:
    pauses = list(itertools.islice(read_api.poll_pauses(), 200))
    assert pauses[0] == read_api.FIRST_POLL_SECONDS == 0.02
    assert pauses == sorted(pauses) and max(pauses) == read_api.LAST_POLL_SECONDS == 0.1
    # The longest wait allowed costs the database about a hundred counts, not 500.
    looks = next(i for i in range(1, 200) if sum(pauses[:i]) >= read_api.MAX_WAIT_SECONDS)
    assert 95 <= looks <= 105


@pytest.mark.parametrize("wait", ["-1", "10.5", "abc", "nan", "inf", ""])
def test_a_bad_wait_is_refused_in_the_envelope(client: FlaskClient, wait: str) -> None:
    response = client.get(f"/workflows/d-1?wait={wait}")
    assert response.status_code == 400
    assert response.json is not None and response.json["errors"] == {"wait": ["Out of range."]}


def test_a_worker_process_applies_what_web_processes_only_captured(
    db: Database, clean_db: str
) -> None:
    # As a Procfile's `worker: dispatch-ledger apply` beside `web:` with APPLY_IN_WEB=false.
    _capture_all(db, payloads.three_message_workflow("d-1"))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "apply", "--poll", "0.05"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": clean_db, "ANALYTICS_REFRESH_SECONDS": "0.2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        waiting = "SELECT count(*) FROM apply_queue"
        while query(clean_db, waiting) != [(0,)]:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            assert time.monotonic() < deadline, "the worker applied nothing"
            time.sleep(0.05)
        # And it goes on: a callback captured later is applied too.
        late = payloads.status("m-late", "delivered", "2020-01-01T15:30:00Z", dispatch_uuid="d-1")
        capture(
            db, Delivery(read(KINDS["message-status"], json.dumps(late).encode(), 32), None, NOW)
        )
        while query(clean_db, "SELECT count(*) FROM message WHERE message_uuid = 'm-late'") != [
            (1,)
        ]:
            assert time.monotonic() < deadline, "the worker stopped applying"
            time.sleep(0.05)
        # Its keeper thread keeps the analytics figures of the days that changed.
        while query(clean_db, "SELECT count(*) FROM daily.stale_day") != [(0,)]:
            assert time.monotonic() < deadline, "the worker kept no analytics figures"
            time.sleep(0.05)
        assert query(clean_db, "SELECT count(*) FROM daily.channel_funnel")[0][0] > 0
    finally:
        worker.terminate()
        worker.wait(10)
        if worker.stderr:
            worker.stderr.close()
    assert query(clean_db, "SELECT status FROM dispatch WHERE dispatch_uuid = 'd-1'") == [
        ("completed",)
    ]


def test_upgrading_to_the_apply_queue_keeps_what_was_waiting_and_queues_old_releases_captures(
    server_url: str, tmp_path: Path
) -> None:
    url = fresh_database(server_url, "dl_queue_upgrade")
    before = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, before)
    for later in before.glob("*.sql"):
        if int(later.name[:4]) >= 13:  # 0013_apply_queue and what came after it
            later.unlink()
    migrate(url, before)
    db = Database(url, Settings(database_url=url))
    try:
        # Under 0012: one callback applied, one waiting, one failed with its error.
        deliveries = [
            payloads.status(f"m-{n}", "submitted", "2026-01-01T10:00:00Z", dispatch_uuid="d-1")
            for n in range(3)
        ]
        _capture_all(db, [("message-status", d) for d in deliveries])
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE raw_callback SET applied_at = now() WHERE id = 1")
            conn.execute(
                "UPDATE raw_callback SET apply_attempts = 3, apply_error = 'a bug',"
                " apply_after = %s WHERE id = 3",
                (NOW,),
            )
        migrate(url)
        queued = "SELECT raw_callback_id, attempts, error, apply_after FROM apply_queue ORDER BY 1"
        assert query(url, queued) == [(2, 0, None, None), (3, 3, "a bug", NOW)]

        # A web process of the previous release, still answering after the
        # migration, inserts as it always did: its callback is queued too.
        late = payloads.status("m-late", "submitted", "2026-01-01T10:00:00Z", dispatch_uuid="d-1")
        _capture_all(db, [("message-status", late)])
        assert [row[0] for row in query(url, queued)] == [2, 3, 4]

        applied = apply.apply_waiting(db, 32, clock=lambda: NOW)
        assert (applied.applied, applied.failed) == (3, 0)
        assert query(url, queued) == []
        # m-0 was marked applied under 0012: not applied again.
        known = "SELECT message_uuid FROM message ORDER BY 1"
        assert query(url, known) == [("m-1",), ("m-2",), ("m-late",)]
    finally:
        db.close()


def _rows_read(plan: dict[str, Any], relation: str) -> float:
    """Rows a plan (EXPLAIN ANALYZE, JSON) read from a table, over all its loops."""
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
    read = own if plan.get("Relation Name") == relation else 0
    return read + sum(_rows_read(child, relation) for child in plan.get("Plans", []))


@pytest.mark.parametrize("before", [None, NOW + timedelta(days=1)])
def test_a_claim_reads_the_queue_not_the_applied_log(clean_db: str, before: Any) -> None:
    # A log mostly applied, with a backlog after it: a claim must not walk
    # the applied rows to find the queued ones (a join to the log once did).
    with psycopg.connect(clean_db) as conn:
        conn.execute(
            "INSERT INTO raw_callback (kind, dedup_key, body, payload, message_uuid,"
            " dispatch_uuid, event_at, received_at, last_received_at)"
            " SELECT 'message_status', sha256(g::text::bytea), '{}', '{}', 'm-' || g, 'd-' || g,"
            " %(at)s, %(at)s, %(at)s FROM generate_series(1, 30000) g",
            {"at": NOW},
        )
        conn.execute("DELETE FROM apply_queue WHERE raw_callback_id <= 20000")  # applied
        conn.execute("ANALYZE raw_callback, apply_queue")
        conn.commit()
        params = {"now": NOW, "limit": 100, "before": before}
        explained = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql("claim_callbacks"), params
        ).fetchone()
        conn.rollback()  # the claim only explained
    assert explained is not None
    plan = explained[0][0]["Plan"]
    assert _rows_read(plan, "raw_callback") <= 100  # the claimed rows' bodies, no more


def test_the_hand_off_counts_the_new_captures_of_the_last_second() -> None:
    now = [100.0]
    handoff = apply.Handoff(limit=5, clock=lambda: now[0])
    body = payloads.status("m-1", "delivered", "2026-01-01T00:00:00.000Z")
    event = read(KINDS["message-status"], json.dumps(body).encode(), 32)
    handoff.put([(1, event.event), (2, event.event)])
    now[0] = 100.5
    handoff.put([(2, event.event), (3, event.event)])  # 2 was put before: not new
    assert handoff.per_second() == 3
    now[0] = 101.0  # the first put is a second old: out of the window
    assert handoff.per_second() == 1
    handoff.put([(i, event.event) for i in range(4, 10)])  # past the limit: counted all the same
    assert (handoff.per_second(), handoff.size()) == (7, 5)
    now[0] = 102.5
    assert handoff.per_second() == 0


@pytest.mark.parametrize(
    ("per_second", "linger", "worth"),
    [
        (0, 0.02, False),
        (1, 0.02, False),  # one capture alone: applied at once
        (apply.LINGER_FROM_PER_SECOND - 1, 0.02, False),
        (apply.LINGER_FROM_PER_SECOND, 0.02, True),
        (5000, 0.02, True),
        (5000, 0.0, False),  # lingering turned off
    ],
)
def test_the_applier_lingers_only_once_captures_come_often(
    per_second: int, linger: float, worth: bool
) -> None:
    assert apply.worth_lingering(per_second, linger) is worth


def test_a_batch_writes_each_workflow_row_once(db: Database, clean_db: str) -> None:
    # Two new workflows, each whole in one batch: linked by its first status,
    # rolled up from six, reported and decided by its final report. Every
    # index of `dispatch` is written for each row version (none is HOT), so
    # each workflow gets one: its state, rollups and decision together.
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for kind, payload in payloads.three_message_workflow("d-1") + payloads.three_message_workflow(
        "d-2", prefix="n"
    ):
        callback = read(KINDS[kind], json.dumps(payload).encode(), 32)
        capture(db, Delivery(callback, "application/json", now))
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("DELETE FROM apply_queue")  # applied here, by hand

    def fold_and_count(conn: Any) -> dict[str, tuple[int, int]]:
        rows = conn.execute(
            "SELECT id, kind, body, received_at, 0 AS attempts FROM raw_callback ORDER BY id"
        ).fetchall()
        done = apply._apply_claimed(conn, rows, 32, now)
        assert done.applied == 14
        counted = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables"
            " WHERE relname IN ('dispatch', 'message')"
        ).fetchall()
        return {row["relname"]: (row["n_tup_ins"], row["n_tup_upd"]) for row in counted}

    assert db.run(fold_and_count) == {"dispatch": (2, 2), "message": (6, 6)}
    rows = query(
        clean_db,
        "SELECT dispatch_uuid, status, steps_tried, reported_status, api FROM dispatch ORDER BY 1",
    )
    assert rows == [
        ("d-1", "completed", 3, "completed", "dispatch"),
        ("d-2", "completed", 3, "completed", "dispatch"),
    ]


def test_a_messages_later_statuses_are_written_on_its_own_page(db: Database, clean_db: str) -> None:
    """Delivered and read change no indexed column of a message: with room left on its
    page (migration 0024) each is a HOT update, with no new index entry. On a page
    filled to the brim each moved elsewhere, with a new entry in every index."""
    # Enough to fill pages: a few dozen fit on one with room to spare anyway.
    messages = [f"m-room-{n:03}" for n in range(400)]

    def status_of(n: int, status: str, minute: int) -> payloads.Delivery:
        at = f"2026-01-01T10:{minute:02}:00.000Z"
        return "message-status", payloads.status(messages[n], status, at, dispatch_uuid=f"d-{n}")

    _capture_all(db, [status_of(n, "submitted", 0) for n in range(len(messages))])
    assert apply.apply_waiting(db, 32).applied == len(messages)

    def applied_alone(delivery: payloads.Delivery) -> tuple[int, int]:
        kind, payload = delivery
        event = read(KINDS[kind], json.dumps(payload).encode(), 32).event
        assert isinstance(event, StatusEvent)

        def updates(conn: Any) -> tuple[int, int]:
            # This backend's counts not yet sent to the statistics, this transaction's among them.
            row = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                " WHERE relname = 'message'"
            ).fetchone()
            return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])

        def fold(conn: Any) -> tuple[int, int]:
            before = updates(conn)
            apply.fold(conn, [apply.Captured(1, event, NOW)], events_at=None)
            after = updates(conn)
            return after[0] - before[0], after[1] - before[1]

        return db.run(fold)

    hot = {}
    for status, minute in (("delivered", 1), ("read", 2)):
        counts = [applied_alone(status_of(n, status, minute)) for n in range(len(messages))]
        assert {updated for updated, _ in counts} == {1}
        hot[status] = sum(hot_updates for _, hot_updates in counts)
    # Measured: 400 and 397 HOT; with every page filled (fillfactor 100), 366
    # and 398 (the 34 delivered that moved left room for the reads). At times
    # the room runs out before an old version can be pruned from the page.
    assert hot["delivered"] >= 396 and hot["read"] >= 390, hot
    assert query(clean_db, "SELECT count(*) FROM message WHERE status = 'read'")[0][0] == 400
