"""View timings at scale: every example query of sql/README.md, as an analyst.

    .venv/bin/python -m benchmarks.scale [--dispatches 1000000] [--base 20000] [--data-dir DIR]

1. `--base` workflows are made by `dispatch-ledger generate --mix long` (the
   same intake and ingest code as real callbacks; about 3 messages each; 30%
   of them sent with the Messages API's failover, `--messages-share`);
2. they are copied (sql/bench/replicate.sql: new ids, times moved back by
   whole periods) until there are `--dispatches` workflows, then VACUUM ANALYZE;
3. a read-only analyst login (`dispatch-ledger analyst-role`) runs each
   example query once unmeasured, then `--runs` times; the median and the
   slowest are printed as a Markdown table for BENCHMARKS.md.

Generating every workflow through ingest would take hours here (about 120
workflows a second); copying gives the same distributions in minutes. With
`--data-dir`, a database loaded earlier is reused (views are re-applied by
`migrate` if they changed), so a change to a view can be timed again quickly.
This is a script, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.config import Settings
from app.emulator.generate import generate
from app.store import daily_figures, embedded, migrations, operations, queries
from app.store.db import Database

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "sql" / "README.md"
REPLICATE = ROOT / "sql" / "bench" / "replicate.sql"
ANALYST = "scale_analyst"
PASSWORD = "scale-analyst"


def examples() -> list[tuple[str, str]]:
    """(question, SQL) for every example in sql/README.md."""
    text = README.read_text(encoding="utf-8")
    return re.findall(r"\n([^\n`][^\n]*\?)\n\n```sql\n(.*?)```", text, re.DOTALL)


def load(
    url: str, dispatches: int, base: int, days: int, bands: int, messages_share: float
) -> None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM dispatch").fetchone()
    if row and row[0]:
        print(f"reusing the {row[0]:,} workflows already stored", flush=True)
        return
    started = time.monotonic()
    db = Database(url, Settings(database_url=url))
    try:
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            if done % 2000 < n:
                print(f"  generated {done:,} / {base:,}", flush=True)

        generate(
            db,
            base,
            seed=1,
            days=days,
            mix="long",
            progress=progress,
            messages_share=messages_share,
        )
    finally:
        db.close()
    print(f"generated {base:,} workflows in {time.monotonic() - started:.0f} s", flush=True)
    copies = -(-dispatches // base) - 1
    started = time.monotonic()
    replicate(url, copies, days, bands)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"copied {copies} times in {time.monotonic() - started:.0f} s", flush=True)
    # As `migrate` does after an upgrade: every day's analytics figures kept once, so
    # that the timings are of a ledger whose appliers keep them (not of the first keep).
    started = time.monotonic()
    kept = Database(url, Settings(database_url=url))
    try:
        days_kept = daily_figures.keep(kept)
    finally:
        kept.close()
    took = time.monotonic() - started
    print(f"kept {days_kept} days of analytics figures in {took:.0f} s", flush=True)


def replicate(url: str, copies: int, days: int, bands: int) -> None:
    """Copy every stored workflow `copies` times (sql/bench/replicate.sql), in one transaction."""
    statements = queries.parse(REPLICATE.read_text(encoding="utf-8"), str(REPLICATE))
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute(statements["copy_shifts"], {"copies": copies, "days": days, "bands": bands})
        for name in list(statements)[1:]:
            conn.execute(statements[name])


def analyst_url(url: str) -> str:
    operations.create_analyst(url, ANALYST, PASSWORD)
    params = conninfo_to_dict(url)
    params.update(user=ANALYST, password=PASSWORD)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=1_000_000)
    parser.add_argument("--base", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30, help="each band of generated data")
    parser.add_argument("--bands", type=int, default=6, help="copies spread over this many")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the database here")
    parser.add_argument(
        "--messages-share",
        type=float,
        default=0.3,
        help="of the generated workflows, this share sent with the Messages API's failover",
    )
    args = parser.parse_args()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="dl-scale-"))
    url = embedded.start(data_dir)
    migrations.migrate(url)
    load(url, args.dispatches, args.base, args.days, args.bands, args.messages_share)
    with psycopg.connect(url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM dispatch), (SELECT count(*) FROM message),"
            " (SELECT count(*) FROM analytics.disagreements),"
            " pg_size_pretty(pg_database_size(current_database())),"
            " current_setting('server_version'),"
            " current_setting('shared_buffers'), current_setting('work_mem')"
        ).fetchone()
    assert counts is not None
    print(
        f"{counts[0]:,} workflows, {counts[1]:,} messages, {counts[2]:,} disagreements,"
        f" database {counts[3]}; PostgreSQL {counts[4]}, shared_buffers {counts[5]},"
        f" work_mem {counts[6]}, {datetime.now(UTC):%Y-%m-%d}",
        flush=True,
    )

    rows = []
    with psycopg.connect(analyst_url(url), autocommit=True) as conn:
        for question, statement in examples():
            conn.execute(statement).fetchall()  # unmeasured: plans, caches
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                result = conn.execute(statement).fetchall()
                times.append(time.perf_counter() - started)
            rows.append((question, len(result), statistics.median(times), max(times)))
            print(f"  {max(times):6.2f} s  {question}", flush=True)

    print()
    print("| example question (sql/README.md) | rows | median s | slowest s |")
    print("|---|---:|---:|---:|")
    for question, n, median, slowest in rows:
        print(f"| {question} | {n:,} | {median:.2f} | {slowest:.2f} |")
    if any(slowest >= 2 for *_, slowest in rows):
        print("\nsome example took 2 s or more", file=sys.stderr)


if __name__ == "__main__":
    main()
