"""The analytics views' kept daily figures (schema daily): the views read the same as
computing every day afresh, whatever changed, in whatever order, kept or not."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.emulator.generate import workflows
from app.extensions import get_db
from app.store import daily_figures, operations
from tests import payloads
from tests.conftest import post, query

TOKEN = "daily-token"
NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
# Each view the kept figures stand behind, with the columns that order its rows.
VIEWS = {
    "channel_funnel_daily": "day, api, channel",
    "channel_cost_daily": "day, api, channel, currency",
    "failover_rate_daily": "day, api, step, channel",
    "failover_rate": "api, step, channel",
}


@pytest.fixture
def client(clean_db: str) -> Iterator[FlaskClient]:
    app: Flask = create_app({"database_url": clean_db, "api_token": TOKEN, "apply_in_web": False})
    yield app.test_client()
    get_db(app).close()


def views_on(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {
        view: conn.execute(
            f"SELECT * FROM analytics.{view} ORDER BY {order} NULLS FIRST"  # our names
        ).fetchall()
        for view, order in VIEWS.items()
    }


def read(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return views_on(conn)


def computed_afresh(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the views say with nothing kept: every day computed from the tables (rolled back)."""
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM daily.channel_funnel")
        conn.execute("DELETE FROM daily.channel_cost")
        conn.execute("DELETE FROM daily.failover_rate")
        conn.execute(
            "INSERT INTO daily.stale_day (day)"
            " SELECT day FROM (SELECT (first_event_at AT TIME ZONE 'UTC')::date FROM message"
            " UNION SELECT (first_event_at AT TIME ZONE 'UTC')::date FROM dispatch) AS t (day)"
            " WHERE day IS NOT NULL"
        )
        views = views_on(conn)
        conn.rollback()
    return views


def kept_days(url: str) -> int:
    [(days,)] = query(url, "SELECT count(DISTINCT day) FROM daily.channel_funnel")
    return int(days)


def put_definition(client: FlaskClient, dispatch_uuid: str, request: Any) -> None:
    answer = client.put(
        f"/workflows/{dispatch_uuid}/definition",
        json=request,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code in (200, 201), answer.get_json()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_views_read_as_computed_afresh_in_any_order_kept_or_not(
    client: FlaskClient, clean_db: str, seed: int
) -> None:
    rng = random.Random(seed)
    made = list(workflows(24, seed, days=6, now=NOW, mix="long", messages_share=0.3))
    deliveries = [d for _, _, ds in made for d in ds]
    definitions = [(uuid, request) for uuid, request, _ in made if "workflow" in request]
    rng.shuffle(deliveries)  # any arrival order: late callbacks land on days already kept
    db = get_db(client.application)
    kept_once = False
    for start in range(0, len(deliveries), 25):
        for kind, payload in deliveries[start : start + 25]:
            assert post(client, kind, payload).status_code == 200
        if definitions and rng.random() < 0.5:  # definitions come late, moving failover steps
            put_definition(client, *definitions.pop())
        if rng.random() < 0.6:
            kept_once = daily_figures.keep(db) is not None or kept_once
        assert read(clean_db) == computed_afresh(clean_db)
    assert kept_once
    assert daily_figures.keep(db) is not None
    assert daily_figures.stale_days(db) == 0 and kept_days(clean_db) >= 5
    everything = read(clean_db)
    assert everything == computed_afresh(clean_db)
    assert all(everything.values())  # every view has rows to compare

    # The decided workflows pruned, their days kept already: their figures go with them.
    pruned = operations.prune_state(clean_db, timedelta(seconds=1), datetime.now(UTC) + HOUR)
    assert pruned.workflows > 0
    assert query(clean_db, "SELECT count(*) FROM dispatch")[0][0] > 0  # the undecided stay
    assert read(clean_db) == computed_afresh(clean_db)
    daily_figures.keep(db)
    assert read(clean_db) == computed_afresh(clean_db)
    assert read(clean_db) != everything


def test_a_change_committed_after_a_keep_began_is_not_lost(
    client: FlaskClient, clean_db: str
) -> None:
    for kind, payload in payloads.three_message_workflow("d-1"):
        assert post(client, kind, payload).status_code == 200
    db = get_db(client.application)
    daily_figures.keep(db)
    before = read(clean_db)
    with psycopg.connect(clean_db) as changing:
        # A change not committed yet when the keep takes its snapshot.
        changing.execute("UPDATE message SET price = price + 1 WHERE price IS NOT NULL")
        assert daily_figures.keep(db) is not None
        changing.commit()
    after = read(clean_db)
    assert after == computed_afresh(clean_db)
    assert after["channel_cost_daily"] != before["channel_cost_daily"]
    assert daily_figures.stale_days(db) >= 1  # left for the next keep
    daily_figures.keep(db)
    assert daily_figures.stale_days(db) == 0
    assert read(clean_db) == after


def test_one_session_keeps_at_a_time(client: FlaskClient, clean_db: str) -> None:
    for kind, payload in payloads.three_message_workflow("d-1"):
        assert post(client, kind, payload).status_code == 200
    db = get_db(client.application)
    with psycopg.connect(clean_db) as holding:
        holding.execute("SELECT pg_advisory_xact_lock(%s)", (daily_figures.DAILY_FIGURES_LOCK,))
        assert daily_figures.keep(db) is None  # skipped, not waiting
    assert daily_figures.keep(db) == 1


def test_truncating_forgets_what_was_kept(client: FlaskClient, clean_db: str) -> None:
    for kind, payload in payloads.three_message_workflow("d-1"):
        assert post(client, kind, payload).status_code == 200
    daily_figures.keep(get_db(client.application))
    assert read(clean_db)["channel_funnel_daily"]
    with psycopg.connect(clean_db) as conn:
        conn.execute("TRUNCATE message, dispatch, workflow_definition CASCADE")
    assert read(clean_db) == {view: [] for view in VIEWS}


def test_a_definition_changed_alone_restates_its_workflows_day(
    client: FlaskClient, clean_db: str
) -> None:
    definition = payloads.fixture("dispatch_request_failover.json")
    put_definition(client, "d-1", definition)
    for kind, payload in payloads.three_message_workflow("d-1"):
        assert post(client, kind, payload).status_code == 200
    daily_figures.keep(get_db(client.application))
    before = read(clean_db)["failover_rate_daily"]
    # No workflow row changes with it (an operator's fix, say): the definition's own
    # trigger must say which day its failover steps belong to.
    with psycopg.connect(clean_db) as conn:
        conn.execute("UPDATE workflow_definition SET steps = steps - 2 WHERE dispatch_uuid = 'd-1'")
    after = read(clean_db)
    assert after == computed_afresh(clean_db)
    assert after["failover_rate_daily"] != before


def test_the_days_left_to_keep_are_a_metric(client: FlaskClient) -> None:
    def stale() -> float:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(
            as_text=True
        )
        [value] = re.findall(r"^dispatch_ledger_analytics_stale_days (\S+)$", text, re.M)
        return float(value)

    for kind, payload in payloads.three_message_workflow("d-1"):
        assert post(client, kind, payload).status_code == 200
    assert stale() >= 1
    daily_figures.keep(get_db(client.application))
    assert stale() == 0


def test_keeps_racing_appliers_leave_the_views_as_computed_afresh(
    client: FlaskClient, clean_db: str
) -> None:
    made = list(workflows(30, 7, days=4, now=NOW, mix="long", messages_share=0.3))
    deliveries = [d for _, _, ds in made for d in ds]
    random.Random(7).shuffle(deliveries)
    app = client.application
    db = get_db(app)
    lanes = [deliveries[n::3] for n in range(3)]
    done = threading.Event()
    kept: list[int | None] = []

    def post_lane(lane: list[tuple[str, Any]]) -> None:
        own = app.test_client()
        for kind, payload in lane:
            assert post(own, kind, payload).status_code == 200

    def keep_until_done() -> None:
        while not done.is_set():
            kept.append(daily_figures.keep(db))

    keeper = threading.Thread(target=keep_until_done)
    keeper.start()
    posters = [threading.Thread(target=post_lane, args=(lane,)) for lane in lanes]
    try:
        for thread in posters:
            thread.start()
        for thread in posters:
            thread.join(120)
    finally:
        done.set()
        keeper.join(30)
    assert not any(thread.is_alive() for thread in posters)
    assert sum(1 for days in kept if days) >= 3  # keeps did land between the applies
    assert read(clean_db) == computed_afresh(clean_db)
    daily_figures.keep(db)
    assert daily_figures.stale_days(db) == 0
    assert read(clean_db) == computed_afresh(clean_db)


def test_a_web_process_applier_keeps_the_figures_on_a_thread_of_its_own(clean_db: str) -> None:
    # Under a WSGI server other than gunicorn, each process applies (and keeps) itself.
    app = create_app({"database_url": clean_db, "analytics_refresh_seconds": 0.1})
    client = app.test_client()
    try:
        for kind, payload in payloads.three_message_workflow("d-1"):
            assert client.post(f"/webhooks/{kind}", json=payload).status_code == 200
        deadline = time.monotonic() + 20
        while query(clean_db, "SELECT count(*) FROM daily.stale_day") != [(0,)] or not query(
            clean_db, "SELECT count(*) FROM apply_queue"
        ) == [(0,)]:
            assert time.monotonic() < deadline, "nothing kept the analytics figures"
            time.sleep(0.05)
        assert kept_days(clean_db) == 1
    finally:
        get_db(app).close()


def test_many_stale_days_are_kept_a_few_per_transaction(
    client: FlaskClient, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daily_figures, "DAYS_AT_A_TIME", 2)
    for _, _, deliveries in workflows(30, 5, days=12, now=NOW, mix="long"):
        for kind, payload in deliveries:
            assert post(client, kind, payload).status_code == 200
    db = get_db(client.application)
    stale = daily_figures.stale_days(db)
    assert stale >= 7
    # One transaction keeps two days, the most recent first; the others stay stale.
    assert db.run(daily_figures.keep_some) == 2
    assert daily_figures.stale_days(db) == stale - 2
    newest_kept = query(clean_db, "SELECT max(day) FROM daily.channel_funnel")[0][0]
    assert (
        newest_kept
        == query(clean_db, "SELECT max((first_event_at AT TIME ZONE 'UTC')::date) FROM message")[0][
            0
        ]
    )
    assert read(clean_db) == computed_afresh(clean_db)
    assert daily_figures.keep(db) == stale - 2
    assert daily_figures.stale_days(db) == 0
    assert read(clean_db) == computed_afresh(clean_db)


def test_a_keep_has_memory_for_whole_days_in_its_own_transaction_only(
    client: FlaskClient, clean_db: str
) -> None:
    for _, _, deliveries in workflows(10, 3, days=3, now=NOW):
        for kind, payload in deliveries:
            assert post(client, kind, payload).status_code == 200
    db = get_db(client.application)

    def work_mem(conn: Any) -> str:
        return str(conn.execute("SELECT current_setting('work_mem') AS m").fetchone()["m"])

    before = db.run(work_mem)
    assert before != daily_figures.KEEP_WORK_MEM

    def keep_and_look(conn: Any) -> tuple[int | None, str]:
        return daily_figures.keep_some(conn), work_mem(conn)

    kept, during = db.run(keep_and_look)
    assert kept and kept >= 3
    assert during == daily_figures.KEEP_WORK_MEM
    # The pooled connections the requests use next keep the server's setting.
    assert [db.run(work_mem) for _ in range(4)] == [before] * 4
