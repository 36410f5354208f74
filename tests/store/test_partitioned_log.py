"""The raw log partitioned by week of event_at: made ahead, deduplicated across boundaries,
pruned by dropping whole weeks, and reached by upgrading a log in place."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from app import create_app
from app.config import Settings
from app.extensions import get_db
from app.pipeline import rebuild
from app.pipeline.capture import Delivery, capture
from app.receive import rejects
from app.spec.intake import CallbackKind, Reason, Rejection, read
from app.store import operations, partitions
from app.store.db import Database
from app.store.migrations import MIGRATIONS_DIR, discover, migrate
from app.store.partitions import RAW_LOG, REJECTS, Partition
from tests import payloads
from tests.conftest import fresh_database, query, settle
from tests.pipeline.test_rebuild import snapshot, workload
from tests.servers import ROOT

KINDS = {"message-status": CallbackKind.MESSAGE_STATUS, "final-report": CallbackKind.FINAL_REPORT}


@pytest.fixture
def own_db(server_url: str) -> Iterator[str]:
    """A database of this test's own: these tests drop and make partitions."""
    yield migrate_fresh(server_url)


def migrate_fresh(server_url: str) -> str:
    url = fresh_database(server_url, "dl_parts")
    migrate(url)
    return url


@pytest.fixture
def own(own_db: str) -> Iterator[Database]:
    database = Database(own_db, Settings(database_url=own_db, db_pool_max_size=10))
    yield database
    database.close()


def weeks(url: str, spec: partitions.Partitioned = RAW_LOG) -> list[Partition]:
    """The table's weekly partitions, oldest first (not the open-ended ones)."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return [p for p in partitions.listed(conn, spec) if p.lower and p.upper]


def stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def send(db: Database, kind: str, payload: object, received_at: datetime) -> str:
    callback = read(KINDS[kind], json.dumps(payload).encode(), 32)
    return capture(db, Delivery(callback, "application/json", received_at)).outcome


def where(url: str, message_uuid: str) -> list[tuple[object, ...]]:
    """The partition holding each stored copy of a message's callbacks, and its deliveries."""
    return query(
        url,
        "SELECT tableoid::regclass::text, deliveries FROM raw_callback"
        " WHERE message_uuid = %s ORDER BY id",
        message_uuid,
    )


def test_the_weeks_ahead_exist_and_are_made_once(own_db: str) -> None:
    made = weeks(own_db)
    now = datetime.now(UTC)
    assert made[-1].upper is not None and made[-1].upper > now + 4 * partitions.WEEK
    assert all(p.upper == q.lower for p, q in itertools.pairwise(made))
    assert all(p.lower is not None and p.lower.weekday() == 0 for p in made)
    # Four sessions asking at once for eight more weeks make each exactly once.
    later = now + 8 * partitions.WEEK

    def ensure(_: int) -> list[str]:
        with psycopg.connect(own_db, autocommit=True, row_factory=dict_row) as conn:
            return partitions.ensure(conn, RAW_LOG, later)

    with ThreadPoolExecutor(4) as pool:
        made_now = [name for names in pool.map(ensure, range(4)) for name in names]
    assert len(made_now) == len(set(made_now)) == 8
    assert [p.name for p in weeks(own_db)] == [p.name for p in made] + sorted(made_now)


def test_with_every_week_gone_the_weeks_start_again_from_this_one(
    own: Database, own_db: str
) -> None:
    with psycopg.connect(own_db, autocommit=True) as conn:
        for week in [*weeks(own_db), "raw_callback_older"]:
            name = week if isinstance(week, str) else week.name
            conn.execute(f'DROP TABLE "{name}"')
    now = datetime.now(UTC)
    body = payloads.status("m-now", "submitted", stamp(now))
    assert send(own, "message-status", body, now) == "accepted"
    assert where(own_db, "m-now") == [("raw_callback_default", 1)]
    with psycopg.connect(own_db, autocommit=True, row_factory=dict_row) as conn:
        made = partitions.ensure(conn, RAW_LOG, now)
    assert made[0] == RAW_LOG.week(partitions.week_of(now)) and len(made) == 5
    assert where(own_db, "m-now") == [(made[0], 1)]


def test_an_applier_makes_the_weeks_ahead(own_db: str) -> None:
    newest = weeks(own_db)[-1]
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{newest.name}"')  # (empty: made ahead)
    env = {**os.environ, "DATABASE_URL": own_db}
    argv = [sys.executable, "-m", "app.cli", "apply", "--once"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert weeks(own_db)[-1] == newest


def test_how_far_ahead_the_weeks_go_is_a_metric(own_db: str) -> None:
    def ahead() -> dict[str, float]:
        app = create_app({"database_url": own_db, "apply_in_web": False})
        try:
            text = app.test_client().get("/metrics").get_data(as_text=True)
        finally:
            get_db(app).close()
        found = re.findall(
            r'^dispatch_ledger_partition_weeks_ahead\{table="(\w+)"\} (\S+)$', text, re.M
        )
        return {table: float(value) for table, value in found}

    before = ahead()
    assert set(before) == {"raw_callback", "rejected_callback"}
    assert 4 < before["raw_callback"] <= 5
    newest = weeks(own_db)[-1]
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{newest.name}"')
    assert ahead()["raw_callback"] == pytest.approx(before["raw_callback"] - 1, abs=0.01)


def test_a_redelivery_after_a_week_boundary_is_a_duplicate_in_the_first_copy_s_week(
    own: Database, own_db: str
) -> None:
    week = weeks(own_db)[1]
    assert week.lower is not None and week.upper is not None
    last_second = week.upper - timedelta(seconds=1)
    body = payloads.status("m-edge", "delivered", stamp(last_second), dispatch_uuid="d-edge")
    assert send(own, "message-status", body, last_second) == "accepted"
    # Vonage retries for 24 hours: the copies come after the boundary, one
    # of them re-serialized (other key order), and a day later still.
    reordered = dict(reversed(list(body.items())))
    assert send(own, "message-status", reordered, week.upper + timedelta(seconds=1)) == "duplicate"
    assert send(own, "message-status", body, week.upper + timedelta(hours=23)) == "duplicate"
    assert where(own_db, "m-edge") == [(week.name, 3)]
    # Its neighbour one second later is another callback, in the next week.
    later = payloads.status("m-edge", "read", stamp(week.upper), dispatch_uuid="d-edge")
    assert send(own, "message-status", later, week.upper) == "accepted"
    assert [name for name, _ in where(own_db, "m-edge")] == [week.name, weeks(own_db)[2].name]
    settle(own)
    assert query(own_db, "SELECT status FROM message WHERE message_uuid = 'm-edge'") == [("read",)]


def test_copies_delivered_at_once_across_a_boundary_store_one(own: Database, own_db: str) -> None:
    week = weeks(own_db)[1]
    assert week.upper is not None
    body = payloads.status("m-race", "delivered", stamp(week.upper - timedelta(milliseconds=1)))
    barrier = threading.Barrier(8)

    def deliver(n: int) -> str:
        barrier.wait()
        # Half of them received before the boundary, half after.
        return send(own, "message-status", body, week.upper + timedelta(seconds=n - 4))

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(deliver, range(8)))
    assert sorted(outcomes) == ["accepted"] + ["duplicate"] * 7
    assert where(own_db, "m-race") == [(week.name, 8)]
    assert query(own_db, "SELECT count(*) FROM apply_queue") == [(1,)]


def test_a_callback_dated_past_every_week_waits_in_the_default_and_moves_when_its_week_is_made(
    own: Database, own_db: str
) -> None:
    last = weeks(own_db)[-1]
    assert last.upper is not None
    far = last.upper + 3 * partitions.WEEK + timedelta(hours=5)
    body = payloads.status("m-far", "submitted", stamp(far), dispatch_uuid="d-far")
    assert send(own, "message-status", body, datetime.now(UTC)) == "accepted"
    assert where(own_db, "m-far") == [("raw_callback_default", 1)]
    with psycopg.connect(own_db, autocommit=True, row_factory=dict_row) as conn:
        partitions.ensure(conn, RAW_LOG, far)
    home = partitions.week_of(far)
    assert where(own_db, "m-far") == [(RAW_LOG.week(home), 1)]
    # Still queued once, still deduplicated, applied once.
    assert query(own_db, "SELECT count(*) FROM apply_queue") == [(1,)]
    assert send(own, "message-status", body, datetime.now(UTC)) == "duplicate"
    settle(own)
    assert query(own_db, "SELECT status FROM message WHERE message_uuid = 'm-far'") == [
        ("submitted",)
    ]
    assert query(own_db, "SELECT count(*) FROM raw_callback_default") == [(0,)]


def test_prune_raw_drops_whole_weeks_and_keeps_what_is_still_queued(
    own: Database, own_db: str
) -> None:
    first, second = weeks(own_db)[:2]
    assert first.lower is not None and first.upper is not None and second.lower is not None
    for n in range(3):
        at = first.lower + timedelta(days=n)
        body = payloads.status(f"m-old-{n}", "delivered", stamp(at), dispatch_uuid="d-old")
        assert send(own, "message-status", body, at) == "accepted"
    newer = payloads.status("m-new", "delivered", stamp(second.lower), dispatch_uuid="d-old")
    assert send(own, "message-status", newer, second.lower) == "accepted"
    settle(own)
    # One old callback failed to apply and waits for its retry: it must stay.
    with psycopg.connect(own_db) as conn:
        conn.execute(
            "INSERT INTO apply_queue (raw_callback_id, received_at, event_at, error, apply_after)"
            " SELECT id, received_at, event_at, 'a bug', 'infinity' FROM raw_callback"
            " WHERE message_uuid = 'm-old-1'"
        )
    state = query(own_db, "SELECT * FROM message ORDER BY message_uuid")

    # The cutoff is the first week's end: it goes whole (and the log from
    # before partitioning, empty here, with it); the second week stays.
    done = operations.prune_raw(own_db, timedelta(days=10), first.upper + timedelta(days=10))
    assert done.partitions == ["raw_callback_older", first.name]
    assert (done.dropped, done.deleted) == (2, 0)
    assert query(own_db, "SELECT to_regclass(%s) IS NULL", first.name) == [(True,)]
    assert where(own_db, "m-old-1") == [("raw_callback_default", 1)]
    assert where(own_db, "m-old-0") == where(own_db, "m-old-2") == []
    assert where(own_db, "m-new") == [(second.name, 1)]
    assert query(own_db, "SELECT * FROM message ORDER BY message_uuid") == state
    assert query(own_db, "SELECT deleted FROM raw_log_prune") == [(2,)]
    with pytest.raises(rebuild.RebuildRefused, match="pruned"):
        rebuild.rebuild(own_db, 32)

    # The kept callback is applied when due, from the default partition.
    with psycopg.connect(own_db) as conn:
        conn.execute("UPDATE apply_queue SET apply_after = NULL")
    settle(own)
    assert query(own_db, "SELECT count(*) FROM apply_queue") == [(0,)]
    # A callback dated in the dropped week, arriving late, is not refused.
    late = payloads.status("m-old-9", "read", stamp(first.lower), dispatch_uuid="d-old")
    assert send(own, "message-status", late, second.upper or second.lower) == "accepted"
    assert where(own_db, "m-old-9") == [("raw_callback_default", 1)]
    # A second prune has no whole week left before the cutoff: it deletes
    # the applied rows of the default partition dated before it.
    settle(own)
    again = operations.prune_raw(own_db, timedelta(days=10), first.upper + timedelta(days=10))
    assert (again.partitions, again.deleted) == ([], 2)
    assert query(own_db, "SELECT count(*) FROM raw_callback_default") == [(0,)]


# --- Upgrading a log of the previous release in place -------------------------


def release_0017(tmp_path: Path) -> Path:
    """The migrations of the release before partitioning."""
    folder = tmp_path / "migrations_0017"
    folder.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql"))[:17]:
        shutil.copy(path, folder / path.name)
    return folder


def test_an_upgrade_in_place_keeps_every_callback_and_rebuilds_the_same_state(
    server_url: str, tmp_path: Path
) -> None:
    old = fresh_database(server_url, "dl_upgrade")
    migrate(old, release_0017(tmp_path))
    assert query(old, "SELECT relkind FROM pg_class WHERE relname = 'raw_callback'") == [("r",)]
    received = datetime(2026, 1, 1, tzinfo=UTC)
    deliveries = workload_without_definitions()
    ahead = datetime.now(UTC) + timedelta(days=60)
    deliveries.append(
        ("message-status", payloads.status("m-ahead", "submitted", stamp(ahead), dispatch_uuid="x"))
    )
    database = Database(old, Settings(database_url=old, db_pool_max_size=4))
    try:
        # Captured under the old schema (the capture's statements did not
        # change); one set aside as failed, with its error.
        outcomes = [send(database, kind, body, received) for kind, body in deliveries]
        assert outcomes.count("accepted") == len(
            {json.dumps(b, sort_keys=True) for _, b in deliveries}
        )
        query(old, "SELECT 1")  # (a read between, as an operator would)
        with psycopg.connect(old) as conn:
            conn.execute(
                "UPDATE apply_queue SET attempts = 2, error = 'a bug', apply_after = 'infinity'"
                " WHERE raw_callback_id = 5"
            )
        stored = query(
            old, "SELECT id, kind, dedup_key, body, received_at FROM raw_callback ORDER BY id"
        )
        refused = [refuse(database, f'{{"bad": {n}}}'.encode(), received) for n in range(3)]
        queued = query(old, "SELECT raw_callback_id, attempts, error FROM apply_queue ORDER BY 1")

        # Captures go on while the upgrade runs: none fails, none is lost.
        stop, during = threading.Event(), []

        def keep_capturing() -> None:
            n = 0
            while not stop.is_set():
                body = payloads.status(f"m-during-{n}", "submitted", stamp(datetime.now(UTC)))
                during.append(send(database, "message-status", body, datetime.now(UTC)))
                n += 1

        capturing = threading.Thread(target=keep_capturing)
        capturing.start()
        try:
            applied = migrate(old)
        finally:
            stop.set()
            capturing.join(10)
        assert [m.version for m in applied] == list(range(18, len(discover()) + 1))
        assert during and set(during) == {"accepted"}
        assert query(old, "SELECT relkind FROM pg_class WHERE relname = 'raw_callback'") == [("p",)]
        assert query(
            old, "SELECT count(*) FROM raw_callback WHERE message_uuid LIKE 'm-during-%%'"
        ) == [(len(during),)]

        # Every callback kept, with its id, bytes and receive time; the
        # queue as it was, the failure and its error included.
        after = query(
            old,
            "SELECT id, kind, dedup_key, body, received_at FROM raw_callback"
            " WHERE message_uuid IS NULL OR message_uuid NOT LIKE 'm-during-%%' ORDER BY id",
        )
        assert after == stored
        assert (
            query(
                old,
                "SELECT raw_callback_id, attempts, error FROM apply_queue"
                " WHERE raw_callback_id <= %s ORDER BY 1",
                stored[-1][0],
            )
            == queued
        )
        assert where(old, "m-ahead") == [("raw_callback_default", 1)]
        older = query(old, "SELECT count(*) FROM raw_callback_older")[0][0]
        assert older >= len(stored) - 1
        # The refused deliveries too: kept in the older partition, counted again there.
        assert query(
            old, "SELECT id, tableoid::regclass::text, attempts FROM rejected_callback ORDER BY id"
        ) == [(n, "rejected_callback_older", 1) for n in refused]
        assert refuse(database, b'{"bad": 1}', datetime.now(UTC)) == refused[1]
        assert (refuse(database, b'{"bad": 9}', datetime.now(UTC)) or 0) > max(
            filter(None, refused)
        )
        assert query(old, "SELECT sum(attempts) FROM rejected_callback") == [(5,)]
        # New ids go on after the old ones; a redelivery of an old callback is a duplicate.
        kind, body = deliveries[0]
        assert send(database, kind, body, received) == "duplicate"
        newest = payloads.status("m-after", "submitted", stamp(received), dispatch_uuid="x")
        assert send(database, "message-status", newest, received) == "accepted"
        assert query(
            old,
            "SELECT min(id) > %s FROM raw_callback WHERE message_uuid = 'm-after'",
            stored[-1][0],
        ) == [(True,)]

        # Applied now, the state is what a rebuild of the same log gives.
        with psycopg.connect(old) as conn:
            conn.execute("UPDATE apply_queue SET apply_after = NULL")
        settle(database)
        assert query(old, "SELECT count(*) FROM apply_queue") == [(0,)]
        before = snapshot(old)
        rebuild.rebuild(old, 32)
        assert snapshot(old) == before
    finally:
        database.close()


def workload_without_definitions() -> list[payloads.Delivery]:
    """The rebuild tests' shuffled, doubled workload (definitions are not the log's business)."""

    class NoDefinitions:
        def run(self, work: object) -> None:
            return None

    return workload(NoDefinitions())  # type: ignore[arg-type]


# --- Refused deliveries, by week of first refusal --------------------------------


def refuse(db: Database, body: bytes, at: datetime, token: str | None = None) -> int | None:
    """Keep one refused delivery as the request path does (a schema violation, 422)."""
    rejection = Rejection(422, Reason.SCHEMA_VIOLATION, "it says nothing", token=token)
    kept = rejects.keep(
        db,
        CallbackKind.MESSAGE_STATUS,
        body,
        len(body),
        "application/json",
        rejection,
        at,
        budget_bytes=10_000_000,
        always_keep=True,
    )
    return kept.reject_id


def test_a_body_refused_again_weeks_later_counts_on_its_first_row(
    own: Database, own_db: str
) -> None:
    first, _, third = weeks(own_db, REJECTS)[:3]
    assert first.lower is not None and third.lower is not None
    body = b'{"message_uuid": "m-bad"}'
    kept = refuse(own, body, first.lower, token="t-1")
    assert refuse(own, body, third.lower + timedelta(hours=1), token="t-2") == kept
    assert query(
        own_db,
        "SELECT tableoid::regclass::text, attempts, first_received_at, last_received_at, tokens"
        " FROM rejected_callback",
    ) == [(first.name, 2, first.lower, third.lower + timedelta(hours=1), ["t-1", "t-2"])]


def test_one_body_refused_eight_times_at_once_is_kept_once(own: Database, own_db: str) -> None:
    start = weeks(own_db, REJECTS)[1].lower
    assert start is not None
    barrier = threading.Barrier(8)

    def refused(n: int) -> int | None:
        barrier.wait()
        # Half in the week before, half in this one.
        return refuse(own, b'{"bad": true}', start + timedelta(seconds=n - 4))

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(refused, range(8)))
    assert len(ids) == 1
    assert query(own_db, "SELECT count(*), sum(attempts) FROM rejected_callback") == [(1, 8)]


def test_prune_rejects_drops_whole_weeks_and_keeps_what_is_not_done_with(
    own: Database, own_db: str
) -> None:
    first, second = weeks(own_db, REJECTS)[:2]
    assert first.lower is not None and first.upper is not None and second.lower is not None
    resolved = refuse(own, b'{"n": 1}', first.lower)
    unresolved = refuse(own, b'{"n": 2}', first.lower)
    refused_again = refuse(own, b'{"n": 3}', first.lower)
    newer = refuse(own, b'{"n": 4}', second.lower)
    with psycopg.connect(own_db) as conn:
        conn.execute(
            "UPDATE rejected_callback SET resolved_at = %s WHERE id = ANY(%s)",
            (first.lower, [resolved, refused_again, newer]),
        )
    cutoff_now = first.upper + timedelta(days=10)
    # Refused again after the cutoff: it stays, whatever its week.
    assert refuse(own, b'{"n": 3}', first.upper + timedelta(days=5)) == refused_again

    removed = operations.prune_rejects(own_db, timedelta(days=10), cutoff_now)
    assert (removed.partitions, removed.total) == (["rejected_callback_older", first.name], 1)
    assert query(own_db, "SELECT to_regclass(%s) IS NULL", first.name) == [(True,)]
    assert query(
        own_db, "SELECT id, tableoid::regclass::text FROM rejected_callback ORDER BY id"
    ) == [
        (unresolved, "rejected_callback_default"),
        (refused_again, "rejected_callback_default"),
        (newer, second.name),
    ]
    # Asked to, the unresolved ones go too (from the default partition, one by one).
    again = operations.prune_rejects(own_db, timedelta(days=10), cutoff_now, unresolved=True)
    assert (again.partitions, again.deleted) == ([], 1)
    assert query(own_db, "SELECT id FROM rejected_callback ORDER BY id") == [
        (refused_again,),
        (newer,),
    ]
