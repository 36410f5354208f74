"""Analyst views, the read-only analyst role, and pruning raw callbacks."""

from __future__ import annotations

import itertools
import json
import random
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from app import create_app
from app.cli import main
from app.config import Settings
from app.emulator.generate import KINDS, generate, workflows
from app.extensions import get_db
from app.pipeline import decide
from app.spec.definitions import load_definition
from app.spec.intake import read
from app.store import migrations, operations, storage
from app.store.db import Database
from app.store.migrations import VIEWS_DIR, apply_views
from benchmarks import scale
from tests import payloads
from tests.conftest import deliver, fresh_database, post, query
from tests.servers import ROOT

README = ROOT / "sql" / "README.md"
VIEWS = [
    "dispatch_summary",
    "channel_funnel_daily",
    "failover_rate",
    "channel_cost_daily",
    "disagreements",
    "failover_rate_daily",
    "failover_steps",
]
TOKEN = "analytics-token"


@pytest.fixture
def loaded(clean_db: str) -> Iterator[FlaskClient]:
    """The three-message workflow, with its definition, and a second one that fails."""
    app: Flask = create_app({"database_url": clean_db, "api_token": TOKEN})
    client = app.test_client()
    definition = payloads.fixture("dispatch_request_failover.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.put("/workflows/d-1/definition", json=definition, headers=auth).status_code == 201
    for kind, payload in payloads.three_message_workflow("d-1"):
        assert post(client, kind, payload).status_code == 200
    post(
        client,
        "message-status",
        payloads.status(
            "x-1", "rejected", "2020-01-02T10:00:00Z", channel="messenger", dispatch_uuid="d-2"
        ),
    )
    yield client
    get_db(app).close()


def test_every_view_exists_and_every_column_is_documented(clean_db: str) -> None:
    rows = query(
        clean_db,
        "SELECT c.relname, a.attname, col_description(c.oid, a.attnum)"
        "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
        " WHERE n.nspname = 'analytics' AND c.relkind = 'v'",
    )
    assert {view for view, _, _ in rows} == set(VIEWS)
    undocumented = [(view, column) for view, column, comment in rows if not comment]
    assert undocumented == []


def test_the_views_answer_from_the_callbacks(loaded: FlaskClient, clean_db: str) -> None:
    [summary] = query(
        clean_db,
        "SELECT status, decided_by, steps_tried, winning_step, winning_channel, computed_cost,"
        " cost_currency, reported_cost, seconds_to_success"
        " FROM analytics.dispatch_summary WHERE dispatch_uuid = 'd-1'",
    )
    # Messenger delivered but never read: expired; Viber rejected; SMS delivered.
    assert summary == (
        "completed",
        "definition",
        3,
        3,
        "sms",
        Decimal("0.0433"),
        "EUR",
        Decimal("0.02"),
        Decimal("609.000000"),
    )
    funnel = query(
        clean_db,
        "SELECT day::text, channel, sent, delivered, read, failed, delivery_rate"
        " FROM analytics.channel_funnel_daily ORDER BY day, channel",
    )
    assert funnel == [
        ("2020-01-01", "messenger", 1, 1, 0, 0, Decimal("1.0000")),
        ("2020-01-01", "sms", 1, 1, 0, 0, Decimal("1.0000")),
        ("2020-01-01", "viber_service_msg", 1, 0, 0, 1, Decimal("0.0000")),
        ("2020-01-02", "messenger", 1, 0, 0, 1, Decimal("0.0000")),
    ]
    # Each message that could fail over, and whether it did; both failover views add these up.
    assert query(
        clean_db,
        "SELECT dispatch_uuid, day::text, step, channel, failed_over FROM analytics.failover_steps"
        " ORDER BY dispatch_uuid, step",
    ) == [
        ("d-1", "2020-01-01", 1, "messenger", True),
        ("d-1", "2020-01-01", 2, "viber_service_msg", True),
        ("d-2", "2020-01-02", 1, "messenger", False),
    ]
    assert query(
        clean_db,
        "SELECT step, channel, messages, failed_over FROM analytics.failover_rate"
        " ORDER BY step, channel",
    ) == [(1, "messenger", 2, 1), (2, "viber_service_msg", 1, 1)]  # d-1's last step (sms) left out
    # The same, per day each workflow began: d-1 on 2020-01-01, the other on 01-02.
    assert query(
        clean_db,
        "SELECT day::text, step, channel, messages, failed_over FROM analytics.failover_rate_daily"
        " ORDER BY day, step, channel",
    ) == [
        ("2020-01-01", 1, "messenger", 1, 1),
        ("2020-01-01", 2, "viber_service_msg", 1, 1),
        ("2020-01-02", 1, "messenger", 1, 0),
    ]
    assert query(
        clean_db,
        "SELECT channel, priced_messages, cost FROM analytics.channel_cost_daily ORDER BY channel",
    ) == [("messenger", 1, Decimal("0.01")), ("sms", 1, Decimal("0.0333"))]
    assert query(clean_db, "SELECT dispatch_uuid, source, kind FROM analytics.disagreements") == [
        ("d-1", "final_report", "usage_mismatch")
    ]


def test_views_are_re_applied_when_a_file_changes(server_url: str, tmp_path: Path) -> None:
    url = fresh_database(server_url, "dl_views")
    migrations.migrate(url)
    folder = tmp_path / "views"
    shutil.copytree(VIEWS_DIR, folder)
    with psycopg.connect(url, autocommit=True) as conn:
        assert apply_views(conn, folder) is False  # same files: nothing to do
        path = folder / "01_dispatch_summary.sql"
        path.write_text(
            path.read_text().replace(
                "d.updated_at\n  FROM dispatch d",
                "d.updated_at,\n       d.due_at\n  FROM dispatch d",
            )
        )
        assert apply_views(conn, folder) is True
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'analytics' AND table_name = 'dispatch_summary'"
        ).fetchall()
    assert ("due_at",) in columns


@pytest.fixture
def analyst(clean_db: str) -> Iterator[str]:
    name = f"analyst_{uuid.uuid4().hex[:8]}"
    operations.create_analyst(clean_db, name, None)
    yield make_conninfo(clean_db, user=name)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(name)))
        conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


def test_the_analyst_reads_the_views_and_nothing_else(loaded: FlaskClient, analyst: str) -> None:
    with psycopg.connect(analyst, autocommit=True) as conn:
        for view in VIEWS:
            conn.execute(pgsql.SQL("SELECT * FROM {}").format(pgsql.Identifier("analytics", view)))
        for table in ("message", "dispatch", "raw_callback", "rejected_callback"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(pgsql.SQL("SELECT 1 FROM {}").format(pgsql.Identifier(table)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.mine (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE dispatch SET status = 'error'")


def test_the_analyst_keeps_access_when_the_views_are_re_created(
    loaded: FlaskClient, analyst: str, clean_db: str
) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("UPDATE schema_views SET checksum = 'stale'")
        assert apply_views(conn) is True
    with psycopg.connect(analyst) as conn:
        assert conn.execute("SELECT count(*) FROM analytics.dispatch_summary").fetchone() == (2,)


def test_every_documented_example_runs_as_the_analyst(loaded: FlaskClient, analyst: str) -> None:
    # Read as the scale script reads them, so that every one it times is run
    # here; and every SQL block must come with its question, or it would time none.
    examples = [statement for _, statement in scale.examples()]
    assert len(examples) >= 5
    assert len(examples) == README.read_text().count("```sql")
    with psycopg.connect(analyst, autocommit=True) as conn:
        for example in examples:
            conn.execute(example).fetchall()  # type: ignore[arg-type]


def test_pruning_old_raw_callbacks_keeps_the_state(clean_db: str) -> None:
    app = create_app({"database_url": clean_db})
    try:
        client = app.test_client()
        # Dated 2020-01-01 (their own timestamps), whenever they arrive.
        deliveries = payloads.three_message_workflow("d-1")
        for kind, payload in deliveries:
            post(client, kind, payload)
        # One old callback is still queued (it failed to apply, and is not
        # due again before the end of the test): it stays.
        with psycopg.connect(clean_db) as conn:
            conn.execute(
                "INSERT INTO apply_queue"
                " (raw_callback_id, received_at, event_at, error, apply_after)"
                " SELECT id, received_at, event_at, 'a bug', 'infinity'"
                " FROM raw_callback WHERE id = 2"
            )
        before = client.get("/workflows/d-1").json
        assert before is not None and before["failed_callbacks"] == 1
        done = operations.prune_raw(
            clean_db, timedelta(days=30), datetime(2020, 3, 2, tzinfo=UTC), batch=2
        )
        assert (done.partitions, done.deleted) == ([], 6)
        kept = "SELECT id FROM raw_callback ORDER BY id"
        assert query(clean_db, kept) == [(2,)]
        assert client.get("/workflows/d-1").json == before
    finally:
        get_db(app).close()


def test_analyst_names_are_checked(clean_db: str) -> None:
    for bad in ("Robert'); DROP TABLE message;--", "", "x" * 64, "UPPER"):
        with pytest.raises(ValueError):
            operations.create_analyst(clean_db, bad, None)


# What the rollups on each workflow's row must equal: the messages, aggregated afresh.
FRESH_ROLLUPS = """
SELECT d.dispatch_uuid, coalesce(r.steps_tried, 0), coalesce(r.channels, '{}'), r.cost,
       r.currency, r.first_event_at
  FROM dispatch d
  LEFT JOIN (SELECT dispatch_uuid, count(*)::integer AS steps_tried,
                    array_agg(channel ORDER BY least(submitted_at, delivered_at, read_at,
                                                     rejected_at, undeliverable_at) NULLS LAST,
                              message_uuid) FILTER (WHERE channel IS NOT NULL) AS channels,
                    sum(price) AS cost,
                    CASE WHEN count(DISTINCT currency) > 1 THEN 'MIXED' ELSE min(currency) END
                        AS currency,
                    min(least(submitted_at, delivered_at, read_at, rejected_at,
                              undeliverable_at)) AS first_event_at
               FROM message GROUP BY dispatch_uuid) r USING (dispatch_uuid)
 ORDER BY 1
"""
KEPT_ROLLUPS = """
SELECT dispatch_uuid, steps_tried, message_channels, computed_cost, cost_currency, first_event_at
  FROM dispatch ORDER BY 1
"""


def test_rollups_equal_the_messages_in_any_arrival_order(db: Database, clean_db: str) -> None:
    rng = random.Random(77)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    callbacks: list[tuple[str, dict[str, Any]]] = []
    for mix in ("typical", "long"):
        for dispatch_uuid, request, deliveries in workflows(30, rng.randrange(1000), 2, now, mix):
            # Recorded as `send` records them, so workflows are decided by their definition.
            db.run(
                lambda conn, u=dispatch_uuid, r=request: decide.record_definition(
                    conn, u, r, load_definition(r), "recorded", now
                )
            )
            callbacks.extend(deliveries)
    for kind, payload in callbacks:
        # Some statuses arrive without their workflow link, as the spec allows.
        if kind == "message-status" and rng.random() < 0.3:
            payload.pop("_links", None)
    # Final reports that claim another workflow's message (a conflict): one of
    # the two ids wins its conflict, whichever way the winner is chosen.
    reports = [p for k, p in callbacks if k == "final-report" and p["_links"]["messages"]]
    for n, thief_uuid in enumerate(("0000-thief", "zzzz-thief")):
        thief = json.loads(json.dumps(reports[n]))
        thief["dispatch_uuid"] = thief_uuid
        thief["_links"]["messages"] = reports[n + 2]["_links"]["messages"][:1]
        callbacks.append(("final-report", thief))
    rng.shuffle(callbacks)
    for kind, payload in callbacks:
        deliver(db, read(KINDS[kind], json.dumps(payload).encode(), 32), None, now)
    kept = query(clean_db, KEPT_ROLLUPS)
    assert kept == query(clean_db, FRESH_ROLLUPS)
    assert_decisions_are_current(db, clean_db, now)
    linked = query(clean_db, "SELECT count(*) FROM message WHERE dispatch_uuid IS NOT NULL")
    assert sum(steps for _, steps, *_ in kept) == linked[0][0]
    assert any(len(channels) >= 3 for _, _, channels, *_ in kept)


@pytest.mark.parametrize("thief", ["0000-thief", "zzzz-thief"])
def test_a_message_claimed_by_two_workflows_is_counted_once_in_any_order(
    db: Database, clean_db: str, thief: str
) -> None:
    # The status links the message to its workflow; another workflow's final
    # report claims it too. Whichever link wins the conflict, the message is
    # counted in the winner's rollups only, and both workflows are decided
    # from that, whatever the order the three deliveries arrive in.
    owner = "5555-owner"
    message = {"message_uuid": "m-1", "href": "m-1", "channel": "sms", "status": "delivered"}
    deliveries = [
        ("message-status", payloads.status("m-1", "submitted", "2026-02-01T10:00:00Z")),
        (
            "message-status",
            payloads.status(
                "m-1", "delivered", "2026-02-01T10:00:05Z", dispatch_uuid=owner, price="0.01"
            ),
        ),
        (
            "final-report",
            payloads.final_report(thief, "completed", "2026-02-01T10:01:00Z", [message]),
        ),
    ]
    winner = min(owner, thief)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    # The owner was sent through `send`: one SMS step, so losing the message
    # changes its decision as well as its rollups.
    request = payloads.fixture("dispatch_request_failover.json")
    request["workflow"] = request["workflow"][-1:]
    for order in itertools.permutations(deliveries):
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute("TRUNCATE dispatch, message, raw_callback, discrepancy CASCADE")
        db.run(
            lambda conn: decide.record_definition(
                conn, owner, request, load_definition(request), "recorded", now
            )
        )
        for kind, payload in order:
            deliver(db, read(KINDS[kind], json.dumps(payload).encode(), 32), None, now)
        kept = query(clean_db, KEPT_ROLLUPS)
        assert kept == query(clean_db, FRESH_ROLLUPS)
        assert {u: steps for u, steps, *_ in kept if steps} == {winner: 1}
        assert_decisions_are_current(db, clean_db, now)


def assert_decisions_are_current(db: Database, clean_db: str, now: datetime) -> None:
    """Deciding every workflow again from what is stored changes nothing."""
    rows = "SELECT * FROM dispatch ORDER BY dispatch_uuid"
    before = query(clean_db, rows)
    for (dispatch_uuid,) in query(clean_db, "SELECT dispatch_uuid FROM dispatch"):

        def again(conn: Any, u: str = dispatch_uuid) -> None:
            locked = storage.lock_dispatch(conn, u, now)
            decide.workflows_changed(conn, [decide.Changed(locked, locked.state, now)])

        db.run(again)
    assert query(clean_db, rows) == before


def test_migration_0004_fills_the_rollups_of_existing_workflows(
    server_url: str, tmp_path: Path
) -> None:
    url = fresh_database(server_url, "dl_rollups")
    for path in sorted(migrations.MIGRATIONS_DIR.glob("000[123]_*.sql")):
        shutil.copy(path, tmp_path)
    migrations.migrate(url, tmp_path)
    with psycopg.connect(url) as conn:
        conn.execute(
            """
            INSERT INTO dispatch (dispatch_uuid, status, decided_by, winning_step,
                                  first_received_at, updated_at)
            VALUES ('a', 'completed', 'definition', 2, now(), now()),
                   ('b', 'pending', NULL, NULL, now(), now()),
                   ('c', 'pending', NULL, NULL, now(), now());
            INSERT INTO workflow_definition (dispatch_uuid, source, request, steps, recorded_at)
            VALUES ('a', 'recorded', '{}',
                    '[{"channel": "whatsapp"}, {"channel": "sms"}]', now());
            INSERT INTO message (message_uuid, dispatch_uuid, channel, status, submitted_at,
                                 delivered_at, price, currency, first_received_at, updated_at)
            VALUES ('a2', 'a', 'sms', 'delivered', '2026-03-01 10:05Z', '2026-03-01 10:06Z',
                    0.0333, 'EUR', now(), now()),
                   ('a1', 'a', 'whatsapp', 'submitted', '2026-03-01 10:00Z', NULL, 0.01, 'USD',
                    now(), now()),
                   ('b1', 'b', NULL, 'submitted', '2026-03-02 10:00Z', NULL, NULL, NULL,
                    now(), now());
            """
        )
    migrations.migrate(url)
    assert query(url, KEPT_ROLLUPS) == query(url, FRESH_ROLLUPS)
    assert query(url, KEPT_ROLLUPS)[0][1:] == (
        2,
        ["whatsapp", "sms"],
        Decimal("0.0433"),
        "MIXED",
        datetime(2026, 3, 1, 10, tzinfo=UTC),
    )
    assert query(
        url,
        "SELECT dispatch_uuid, winning_channel, steps_tried FROM analytics.dispatch_summary"
        " ORDER BY 1",
    ) == [("a", "sms", 2), ("b", None, 1), ("c", None, 0)]


def test_pruning_rejects_keeps_unrecovered_ones_unless_asked(clean_db: str) -> None:
    app = create_app({"database_url": clean_db})
    try:
        client = app.test_client()
        with freeze_time("2026-01-01T00:00:00Z"):
            for n in range(3):
                assert post(client, "message-status", {"junk": n}).status_code == 422
        with freeze_time("2026-11-20T00:00:00Z"):
            assert post(client, "message-status", {"junk": "recent"}).status_code == 422
    finally:
        get_db(app).close()
    # One old reject was recovered (as reprocess-rejects marks it).
    with psycopg.connect(clean_db) as conn:
        conn.execute(
            "UPDATE rejected_callback SET resolved_at = now()"
            " WHERE id = (SELECT min(id) FROM rejected_callback)"
        )

    def run(*args: str) -> str:
        result = CliRunner().invoke(
            main,
            ["prune-rejects", "--older-than-days", "30", *args],
            env={"DATABASE_URL": clean_db},
        )
        assert result.exit_code == 0, result.output
        return result.output

    assert "removed 1 recovered rejects" in run()
    assert query(clean_db, "SELECT count(*) FROM rejected_callback") == [(3,)]
    assert "removed 2 rejects" in run("--unresolved")
    # The recent one stays, whatever was asked.
    assert query(clean_db, "SELECT count(*) FROM rejected_callback") == [(1,)]


def test_the_views_and_the_read_api_give_each_message_the_same_answer(
    clean_db: str, db: Database
) -> None:
    """One rule, one place: the funnel counts what GET /messages says, by the same first day."""
    from app.emulator.generate import generate

    generate(db, 40, seed=11, days=5, now=datetime(2026, 3, 10, tzinfo=UTC))
    app = create_app({"database_url": clean_db})
    client = app.test_client()
    try:
        # Rejected by callback, but the final report lists it delivered: the
        # read API says delivered (a success stands), and so must the views.
        at = "2026-03-09T10:00:00Z"
        post(client, "status", payloads.status("t-1", "rejected", at, dispatch_uuid="t"))
        report = payloads.final_report(
            "t",
            "completed",
            "2026-03-09T10:05:00Z",
            [{"message_uuid": "t-1", "channel": "sms", "status": "delivered"}],
        )
        assert post(client, "status", report).status_code == 200
        assert client.get("/messages/t-1").json["status"] == "delivered"  # type: ignore[index]

        expected: dict[tuple[Any, str], dict[str, int]] = {}
        stored = query(clean_db, "SELECT message_uuid FROM message WHERE channel IS NOT NULL")
        for (uuid_,) in stored:
            message = client.get(f"/messages/{uuid_}").json
            assert message is not None
            first = min(datetime.fromisoformat(t) for t in message["statuses"].values())
            counts = expected.setdefault(
                (first.astimezone(UTC).date(), message["channel"]),
                {"sent": 0, "delivered": 0, "read": 0, "failed": 0},
            )
            counts["sent"] += 1
            counts["delivered"] += message["status"] in ("delivered", "read")
            counts["read"] += message["status"] == "read"
            counts["failed"] += message["status"] in ("rejected", "undeliverable")
        rows = query(
            clean_db,
            "SELECT day, channel, sent, delivered, read, failed"
            " FROM analytics.channel_funnel_daily",
        )
        funnel = {
            (day, channel): {"sent": s, "delivered": d, "read": r, "failed": f}
            for day, channel, s, d, r, f in rows
        }
        assert funnel == expected
        assert sum(c["failed"] for c in expected.values()) > 0  # the data has every outcome
        assert sum(c["read"] for c in expected.values()) > 0
    finally:
        get_db(app).close()


def test_metrics_and_views_name_channels_alike(clean_db: str) -> None:
    """The one-name mapping stands in SQL (the views) and in app/pipeline/tally.py (the metrics)."""
    from app.model.state import Channel
    from app.pipeline.tally import channel_name

    for channel in Channel:
        assert query(clean_db, "SELECT analytics.channel_name(%s)", channel.value) == [
            (channel_name(channel),)
        ], channel


def test_the_scale_copies_keep_every_column(clean_db: str) -> None:
    """sql/bench/replicate.sql copies whole rows: with no time shift, a copy differs from
    its original by its ids alone (a column left out of a copy's list would be null)."""
    db = Database(clean_db, Settings(database_url=clean_db))
    try:
        generate(db, 12, seed=3, mix="long", messages_share=0.5)
    finally:
        db.close()
    scale.replicate(clean_db, copies=1, days=0, bands=1)
    for table in ("dispatch", "message", "workflow_definition"):
        columns = [
            name
            for (name,) in query(
                clean_db,
                "SELECT column_name FROM information_schema.columns"
                f" WHERE table_schema = 'public' AND table_name = '{table}'",
            )
            if name not in ("dispatch_uuid", "message_uuid")  # new ids in a copy
        ]
        rows = query(clean_db, f"SELECT {', '.join(columns)} FROM {table}")
        assert len(rows) >= 24, table
        # Each original and its copy: every row stands exactly twice.
        assert {count % 2 for count in Counter(map(repr, rows)).values()} == {0}, table
    apis = query(clean_db, "SELECT DISTINCT api FROM dispatch ORDER BY api")
    assert apis == [("dispatch",), ("messages",)]
