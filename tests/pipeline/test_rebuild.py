"""`dispatch-ledger rebuild`: the derived state recomputed from the raw log and the definitions."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from app import create_app
from app.emulator.generate import workflows
from app.extensions import get_db
from app.model import state
from app.pipeline import decide, rebuild
from app.spec.definitions import load_definition
from app.spec.messages_request import load_failover_request
from app.store import operations
from app.store.db import Database
from tests import payloads
from tests.conftest import query
from tests.pipeline.test_state_in_db import _deliver_all
from tests.servers import ROOT

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# Everything derived, row by row. Receive times are included: a rebuild
# applies each raw callback at the time it was received.
STATE = {
    "dispatch": "SELECT * FROM dispatch ORDER BY dispatch_uuid",
    "message": "SELECT * FROM message ORDER BY message_uuid",
    "workflow_definition": "SELECT * FROM workflow_definition ORDER BY dispatch_uuid",
    # Its surrogate id is renumbered; the rows are the same.
    "reconciliation": "SELECT dispatch_uuid, kind, detail, recorded_at FROM reconciliation"
    " ORDER BY 1, 2, 3",
    # Which callback first found a disagreement depends on the order they
    # were applied in, which concurrency leaves open; what was found does not.
    "discrepancy": "SELECT subject, subject_id, kind, detail FROM discrepancy ORDER BY 1, 2, 3, 4",
    "views": "SELECT * FROM analytics.dispatch_summary ORDER BY dispatch_uuid",
    "funnel": "SELECT * FROM analytics.channel_funnel_daily ORDER BY day, channel",
}


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {name: query(url, statement) for name, statement in STATE.items()}


def workload(db: Database) -> list[payloads.Delivery]:
    """Generated workflows (half with definitions, recorded here), conflicts, shuffled, doubled."""
    deliveries: list[payloads.Delivery] = []
    for n, (dispatch_uuid, request, items) in enumerate(workflows(30, 7, 3, NOW)):
        if n % 2:
            definition = load_definition(request)
            db.run(
                lambda c, u=dispatch_uuid, r=request, d=definition: decide.record_definition(
                    c, u, r, d, "recorded", NOW
                )
            )
        deliveries.extend(items)
    deliveries += payloads.three_message_workflow("d-conflicts")
    # Messages API failover workflows beside them: one with its definition, two without.
    request = payloads.messages_failover_request("rcs", "whatsapp", "sms")
    db.run(
        lambda c: decide.record_definition(
            c, "wf-0", request, load_failover_request(request), "recorded", NOW
        )
    )
    for n, outcomes in enumerate(
        [("rejected", "rejected", "delivered"), ("rejected", "read"), ("rejected",)]
    ):
        for item, (status, channel) in enumerate(
            zip(outcomes, ("rcs", "whatsapp", "sms"), strict=False), start=1
        ):
            at = f"2020-01-01T15:00:{10 * item:02d}Z"
            for said in ("submitted", status):
                body = payloads.messages_status(
                    f"wf-{n}-{item}",
                    said,
                    at,
                    channel=channel,
                    workflow=(f"wf-{n}", item, 3),
                    price="0.01" if said in ("delivered", "read") else None,
                )
                deliveries.append(("message-status", body))
    # The same message claimed by another workflow's final report.
    deliveries.append(
        (
            "final-report",
            payloads.final_report(
                "d-other",
                "error",
                "2020-01-01T16:00:00Z",
                [{"message_uuid": "m-1-messenger", "status": "rejected"}],
            ),
        )
    )
    rng = random.Random(3)
    deliveries += rng.sample(deliveries, len(deliveries) // 5)
    rng.shuffle(deliveries)
    return deliveries


def _workload(db: Database) -> None:
    """The workload, captured and applied by six concurrent senders."""
    _deliver_all(db, workload(db), threads=6)


def test_a_rebuild_gives_exactly_the_state_incremental_application_gave(
    db: Database, clean_db: str
) -> None:
    _workload(db)
    before = snapshot(clean_db)
    assert len(before["dispatch"]) > 30 and before["discrepancy"] and before["reconciliation"]

    summary = rebuild.rebuild(clean_db, 32)
    assert summary.definitions == 16  # 15 Dispatch, 1 Messages API
    assert summary.callbacks == query(clean_db, "SELECT count(*) FROM raw_callback")[0][0]
    assert snapshot(clean_db) == before


def test_a_fixed_rule_reaches_old_data_through_a_rebuild(
    db: Database, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliveries = payloads.three_message_workflow("d-1")
    # Delivered, then rejected later: today the success stands.
    deliveries.append(
        ("message-status", payloads.status("m-3-sms", "rejected", "2020-01-01T14:30:00Z"))
    )
    _deliver_all(db, deliveries, threads=1)
    statuses = "SELECT message_uuid, status FROM message ORDER BY 1"
    assert ("m-3-sms", "delivered") in query(clean_db, statuses)
    before = snapshot(clean_db)

    # A release changes the rule (a failure after a success now stands): a
    # rebuild brings the callbacks stored long ago under it.
    ranks = {**state.PRECEDENCE, state.MessageStatus.REJECTED: 4}
    monkeypatch.setattr(state, "PRECEDENCE", ranks)
    rebuild.rebuild(clean_db, 32)
    assert ("m-3-sms", "rejected") in query(clean_db, statuses)
    assert snapshot(clean_db)["funnel"] != before["funnel"]

    # And back: the same log, the old rule, the old state exactly.
    monkeypatch.undo()
    rebuild.rebuild(clean_db, 32)
    assert snapshot(clean_db) == before


def test_a_rebuild_refuses_once_raw_callbacks_were_pruned(db: Database, clean_db: str) -> None:
    _deliver_all(db, payloads.three_message_workflow("d-1"), threads=1)
    before = snapshot(clean_db)
    assert operations.prune_raw(clean_db, timedelta(days=1), NOW + timedelta(days=2)).total == 7
    with pytest.raises(rebuild.RebuildRefused, match="pruned"):
        rebuild.rebuild(clean_db, 32)
    assert snapshot(clean_db) == before


def _wait_for_a_blocked_delete(url: str) -> None:
    """Until a session waits on a row lock in a `DELETE FROM` a raw log partition."""
    for _ in range(1000):
        if query(
            url,
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'DELETE FROM \"raw_callback%%'",
        ):
            return
        time.sleep(0.01)
    raise AssertionError("the prune never reached the held row")


def test_a_rebuild_refuses_while_a_prune_is_half_way_and_nothing_is_lost(
    db: Database, clean_db: str
) -> None:
    _workload(db)
    before = snapshot(clean_db)
    ids = [row[0] for row in query(clean_db, "SELECT id FROM raw_callback ORDER BY id")]
    pruned: list[int] = []
    # A reader holds a row of the prune's second batch, as the hostile run did:
    # the prune has deleted its first batch and waits mid-way.
    with psycopg.connect(clean_db) as holder:
        holder.execute("SELECT FROM raw_callback WHERE id = %s FOR UPDATE", (ids[15],))
        pruning = threading.Thread(
            target=lambda: pruned.append(
                operations.prune_raw(clean_db, timedelta(days=1), NOW + timedelta(days=2), 10).total
            )
        )
        pruning.start()
        _wait_for_a_blocked_delete(clean_db)
        assert query(clean_db, "SELECT count(*) FROM raw_callback")[0][0] == len(ids) - 10
        with pytest.raises(rebuild.RebuildRefused, match="prune-raw is running"):
            rebuild.rebuild(clean_db, 32)
        assert snapshot(clean_db) == before
        holder.rollback()
    pruning.join(30)
    assert pruned == [len(ids)]
    # Once it is done, a rebuild refuses for the pruned log, and the state stays whole.
    with pytest.raises(rebuild.RebuildRefused, match="pruned"):
        rebuild.rebuild(clean_db, 32)
    assert snapshot(clean_db) == before


@contextmanager
def rebuild_paused(clean_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A rebuild in a thread, held after it has emptied the state (in its transaction, holding
    its locks) until the block ends; then it goes on, and is waited for."""
    paused, release = threading.Event(), threading.Event()
    real = rebuild._apply_callbacks

    def slow(*args: Any) -> None:
        paused.set()
        assert release.wait(10)
        real(*args)

    monkeypatch.setattr(rebuild, "_apply_callbacks", slow)
    worker = threading.Thread(target=rebuild.rebuild, args=(clean_db, 32))
    worker.start()
    try:
        assert paused.wait(10)
        yield
    finally:
        release.set()
        worker.join(10)


def test_a_prune_refuses_while_a_rebuild_runs(
    db: Database, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deliver_all(db, payloads.three_message_workflow("d-1"), threads=1)
    before = snapshot(clean_db)
    with rebuild_paused(clean_db, monkeypatch):
        with pytest.raises(operations.RawLogBusy):
            operations.prune_raw(clean_db, timedelta(days=1), NOW + timedelta(days=2))
        assert query(clean_db, "SELECT count(*) FROM raw_callback")[0][0] == 7
        assert query(clean_db, "SELECT count(*) FROM raw_log_prune")[0][0] == 0
    assert snapshot(clean_db) == before
    # Afterwards the prune goes ahead.
    assert operations.prune_raw(clean_db, timedelta(days=1), NOW + timedelta(days=2)).total == 7


def test_a_prune_stopped_after_its_first_batch_is_recorded(db: Database, clean_db: str) -> None:
    _deliver_all(db, payloads.three_message_workflow("d-1"), threads=1)
    # The second batch fails (a held row and a lock timeout stand for a kill).
    with psycopg.connect(clean_db) as holder:
        ids = [row[0] for row in query(clean_db, "SELECT id FROM raw_callback ORDER BY id")]
        holder.execute("SELECT FROM raw_callback WHERE id = %s FOR UPDATE", (ids[3],))
        timeout_url = make_conninfo(clean_db, options="-c lock_timeout=200")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            operations.prune_raw(timeout_url, timedelta(days=1), NOW + timedelta(days=2), 3)
    assert query(clean_db, "SELECT count(*) FROM raw_callback")[0][0] == 4
    assert query(clean_db, "SELECT deleted FROM raw_log_prune") == [(3,)]
    with pytest.raises(rebuild.RebuildRefused, match="pruned"):
        rebuild.rebuild(clean_db, 32)


def test_a_callback_that_arrives_during_a_rebuild_is_answered_and_applied_on_top(
    clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app({"database_url": clean_db, "apply_in_web": True})
    client = app.test_client()
    try:
        for kind, payload in payloads.three_message_workflow("d-1"):
            assert client.post(f"/webhooks/{kind}", json=payload).status_code == 200
        before = client.get("/workflows/d-1?wait=10").json
        assert before is not None and before["pending_callbacks"] == 0
        with rebuild_paused(clean_db, monkeypatch):
            # Mid-rebuild: the callback is captured and answered at once; readers
            # see the state as it was (not the emptied tables), and that it waits.
            late = payloads.status(
                "m-late", "delivered", "2020-01-01T15:30:00Z", dispatch_uuid="d-1"
            )
            assert client.post("/webhooks/status", json=late).status_code == 200
            during = client.get("/workflows/d-1").json
            assert during is not None and during["pending_callbacks"] == 1
            assert {**during, "pending_callbacks": 0} == before
        workflow = client.get("/workflows/d-1?wait=10").json
        assert workflow is not None and workflow["pending_callbacks"] == 0
        assert "m-late" in [m["message_uuid"] for m in workflow["messages"]]
    finally:
        get_db(app).close()


def test_a_long_rebuild_tells_how_far_it_is(
    db: Database, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deliver_all(db, payloads.three_message_workflow("d-1"), threads=1)
    ids = [row[0] for row in query(clean_db, "SELECT id FROM raw_callback ORDER BY id")]
    assert len(ids) == 7
    before = snapshot(clean_db)
    monkeypatch.setattr(rebuild, "PAGE", 2)
    told: list[rebuild.RebuildProgress] = []

    summary = rebuild.rebuild(clean_db, 32, progress=told.append, every=0)

    # A workflow's callbacks split over pages make the same state.
    assert snapshot(clean_db) == before

    # After each page of two, by the share of the log's ids gone through; then once at the end.
    span = ids[-1] - ids[0] + 1
    assert [t.callbacks for t in told] == [2, 4, 6, 7, 7]
    assert [t.share for t in told] == [(ids[n] - ids[0] + 1) / span for n in (1, 3, 5, 6)] + [1.0]
    assert [t.finished for t in told] == [False, False, False, False, True]
    assert summary.callbacks == 7
    seconds = [t.seconds for t in told]
    assert seconds == sorted(seconds)
    left = told[0].seconds_left
    assert left is not None and left == pytest.approx(told[0].seconds * (1 - 2 / 7) / (2 / 7))


def test_a_quick_rebuild_tells_only_that_it_is_done(db: Database, clean_db: str) -> None:
    _deliver_all(db, payloads.three_message_workflow("d-1"), threads=1)
    told: list[rebuild.RebuildProgress] = []
    rebuild.rebuild(clean_db, 32, progress=told.append, every=3600)
    assert [(t.callbacks, t.share, t.finished) for t in told] == [(7, 1.0, True)]


def test_the_command_reports_what_it_rebuilt(db: Database, clean_db: str) -> None:
    def command() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": clean_db}
        argv = [sys.executable, "-m", "app.cli", "rebuild"]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)

    _deliver_all(db, payloads.three_message_workflow("d-1"), threads=1)
    done = command()
    assert done.returncode == 0, done.stderr
    assert "rebuilt from 7 raw callbacks and 0 definitions" in done.stdout
    # Told on stderr, as it goes (every 30 s; here only at the end).
    assert "rebuilding: the whole raw log applied again (7 callbacks)" in done.stderr
    operations.prune_raw(clean_db, timedelta(days=1), NOW + timedelta(days=2))
    refused = command()
    assert refused.returncode == 1
    assert "not rebuilt: raw callbacks received before" in refused.stderr
    assert "Traceback" not in refused.stderr
