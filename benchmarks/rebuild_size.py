"""Rebuilding at size: `rebuild` timed on raw logs of millions of callbacks.

    .venv/bin/python -m benchmarks.rebuild_size [--callbacks 1000000,5000000]
        [--weeks 52] [--data-dir DIR]

The log is the one benchmarks/benchmark.py's load sends: per workflow three
SMS messages, each submitted, delivered and read, then Dispatch's final
report (ten callbacks), a thousand workflows' callbacks interleaved as they
would arrive; bulk loaded (as benchmarks/growth.py loads its year) into the
weekly partitions of the last `--weeks` weeks, dated evenly over them, with
no state yet: a ledger whose derived tables are to be made again. For each
size in turn the log is topped up to that many callbacks and
`app.pipeline.rebuild.rebuild` (the command's own code) replays all of it:
seconds, callbacks a second, minutes per million, WAL written, the state made.

A rebuild is one transaction: for as long as it runs, appliers wait (captures
go on), so its time at a ledger's size is how long the state stands still.
Prints Markdown for BENCHMARKS.md; asserts no speed (a script, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from app.pipeline.rebuild import rebuild
from app.store import embedded, migrations
from benchmarks.benchmark import _database_beside
from benchmarks.growth import make_weeks, wal

MAX_DEPTH = 32
# Workflows whose callbacks interleave (the load's SPREAD).
SPREAD = 1000
# The load's bodies (benchmarks/benchmark.py), uuids and times left as %s for format().
STATUS = json.dumps(
    {
        "message_uuid": "@",
        "to": {"type": "sms", "number": "447700900000"},
        "from": {"type": "sms", "number": "447700900001"},
        "timestamp": "@",
        "status": "@",
        "usage": {"currency": "EUR", "price": "0.0333"},
        "_links": {"workflow": {"dispatch_uuid": "@", "href": "/workflows/x"}},
    },
    separators=(",", ":"),
).replace("@", "%s")
REPORT = json.dumps(
    {
        "dispatch_uuid": "@",
        "template": "failover",
        "status": "completed",
        "timestamp": "@",
        "usage": {"price": "0.0999", "currency": "EUR"},
        "_links": {
            "messages": [
                {
                    "message_uuid": "@",
                    "channel": "sms",
                    "status": "read",
                    "usage": {"currency": "EUR", "price": "0.0333"},
                }
            ]
            * 3
        },
    },
    separators=(",", ":"),
).replace("@", "%s")
# Callback n (from 0) is callback k of workflow d: the load's order. Its uuids
# are md5s of the workflow's and message's numbers, so that topping up a log
# goes on where it stopped. Inserted in n order, so that ids follow it.
LOAD = """
INSERT INTO raw_callback (kind, dedup_key, body, payload, content_type, message_uuid,
                          dispatch_uuid, event_at, received_at, last_received_at)
SELECT c.kind, sha256(c.bytes), c.bytes, c.text::jsonb, 'application/json', u.message_uuid,
       u.dispatch_uuid, s.at, s.at, s.at
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) n
 CROSS JOIN LATERAL (
     SELECT (n / (%(spread)s * 10)) * %(spread)s + n %% %(spread)s AS d,
            (n / %(spread)s) %% 10 AS k,
            %(start)s::timestamptz + n * %(step)s * interval '1 second' AS at) s
 CROSS JOIN LATERAL (
     SELECT md5('w' || s.d)::uuid::text AS dispatch_uuid,
            CASE WHEN s.k < 9 THEN md5('m' || s.d || '-' || s.k / 3)::uuid::text END
                AS message_uuid,
            to_char(s.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS ts) u
 CROSS JOIN LATERAL (
     SELECT t.kind, t.text, convert_to(t.text, 'UTF8') AS bytes
       FROM (SELECT CASE WHEN s.k = 9 THEN 'final_report' ELSE 'message_status' END AS kind,
                    CASE WHEN s.k = 9
                         THEN format(%(report)s, u.dispatch_uuid, u.ts,
                                     md5('m' || s.d || '-0')::uuid::text,
                                     md5('m' || s.d || '-1')::uuid::text,
                                     md5('m' || s.d || '-2')::uuid::text)
                         ELSE format(%(status)s, u.message_uuid, u.ts,
                                     (ARRAY['submitted', 'delivered', 'read'])[s.k %% 3 + 1],
                                     u.dispatch_uuid)
                    END AS text) t) c
 ORDER BY n
"""


def top_up(url: str, callbacks: int, first_week: datetime, span_end: datetime, total: int) -> int:
    """Load callbacks until the log holds `callbacks` of the `total` planned; returns how many."""
    step = (span_end - first_week).total_seconds() / total
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute("SELECT count(*) AS n FROM raw_callback").fetchone()
        assert row is not None
        have = int(row["n"])
        conn.execute("ALTER TABLE raw_callback DISABLE TRIGGER raw_callback_queued")
        try:
            # Chunks of 250,000, each a transaction: the log grows as it would.
            for first in range(have, callbacks, 250_000):
                last = min(first + 250_000, callbacks) - 1
                params = {
                    "first": first,
                    "last": last,
                    "spread": SPREAD,
                    "start": first_week,
                    "step": step,
                    "status": STATUS,
                    "report": REPORT,
                }
                conn.execute(LOAD, params)
                print(f"  loaded {last + 1:,} / {callbacks:,}", flush=True)
        finally:
            conn.execute("ALTER TABLE raw_callback ENABLE TRIGGER raw_callback_queued")
        conn.execute("VACUUM ANALYZE raw_callback")
    return callbacks


def timed_rebuild(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        before = wal(conn)
    done = rebuild(url, MAX_DEPTH)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint AS wal,"
            " (SELECT count(*) FROM dispatch) AS workflows,"
            " (SELECT count(*) FROM message) AS messages,"
            " (SELECT count(*) FROM dispatch WHERE status = 'completed') AS completed,"
            " pg_total_relation_size('dispatch') + pg_total_relation_size('message') AS state",
            (before,),
        ).fetchone()
    assert row is not None
    # The process's peak so far: a page of callbacks and their events, held at once.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"callbacks": done.callbacks, "seconds": done.seconds, "peak": peak, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--callbacks", default="1000000,5000000", help="log sizes to rebuild, comma-separated"
    )
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the database here")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.callbacks.split(","))

    work = Path(tempfile.mkdtemp(prefix="dl-rebuild-"))
    server = embedded.start(args.data_dir or work / "db")
    url = _database_beside(server, "rebuilt")
    migrations.migrate(url)
    first_week = make_weeks(url, args.weeks)
    # One span for every size: a smaller log is the first months of a larger one.
    span_end = datetime.now(UTC)
    results = []
    for size in sizes:
        top_up(url, size, first_week, span_end, sizes[-1])
        print(f"rebuilding {size:,} callbacks ...", flush=True)
        results.append(timed_rebuild(url))
        print(f"  {results[-1]}", flush=True)

    with psycopg.connect(url, row_factory=dict_row) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    assert version is not None
    print()
    print(
        f"PostgreSQL {version['server_version']}, {os.cpu_count()} cores,"
        f" {datetime.now(UTC):%Y-%m-%d}; the load's log (ten callbacks a workflow)"
    )
    print()
    print(
        "| callbacks | workflows made | took | callbacks/s | minutes per million"
        " | WAL per million | state after | peak memory |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        million = r["callbacks"] / 1e6
        print(
            f"| {r['callbacks']:,} | {r['workflows']:,} | {r['seconds'] / 60:.1f} min"
            f" | {r['callbacks'] / r['seconds']:,.0f} | {r['seconds'] / 60 / million:.1f}"
            f" | {r['wal'] / 1e9 / million:.2f} GB | {r['state'] / 1e9:.2f} GB"
            f" | {r['peak'] / 1e6:.0f} MB |"
        )


if __name__ == "__main__":
    main()
