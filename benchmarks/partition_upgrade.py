"""The upgrade to the partitioned raw log, timed on a log of the previous release.

    .venv/bin/python -m benchmarks.partition_upgrade [--callbacks 1000000] [--data-dir DIR]

1. a database at migration 0017 (the release before partitioning) gets
   `--callbacks` raw callbacks, bulk loaded (a real status body each, new
   ids and uuids, dated evenly over the last 90 days), as applied long ago;
2. captures run without pause, one at a time, through the real capture code,
   while `migrate` runs 0018 (reads the whole log: validation, two index
   builds, under locks that let captures on) and then 0019 (renames and
   attaches, under ACCESS EXCLUSIVE);
3. it prints how long each migration took, how many captures went through
   during each, and the slowest capture: the time callbacks were held.

A script, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from app.config import Settings
from app.pipeline.capture import Delivery, capture
from app.spec.intake import CallbackKind, read
from app.store import embedded, migrations
from app.store.db import Database

BEFORE = 17
TEMPLATE = {
    "message_uuid": "00000000-0000-0000-0000-000000000000",
    "to": {"type": "whatsapp", "number": "447700900000"},
    "from": {"type": "whatsapp", "number": "447700900001"},
    "timestamp": "2026-01-01T00:00:00.000Z",
    "status": "delivered",
    "usage": {"currency": "EUR", "price": "0.0333"},
    "_links": {"workflow": {"dispatch_uuid": "d", "href": "/workflows/d"}},
}
# TEMPLATE's JSON with the message's uuid, time and workflow left as %s, for
# format(): far cheaper than editing a jsonb per row.
FORMAT = (
    json.dumps({**TEMPLATE, "message_uuid": "@", "timestamp": "@"}, separators=(",", ":"))
    .replace('"dispatch_uuid":"d"', '"dispatch_uuid":"@"')
    .replace("@", "%s")
)
LOAD = """
INSERT INTO raw_callback (kind, dedup_key, body, payload, content_type, message_uuid,
                          dispatch_uuid, event_at, received_at, last_received_at)
SELECT 'message_status', sha256(b.bytes), b.bytes, b.text::jsonb, 'application/json',
       b.message_uuid, b.dispatch_uuid, b.at, b.at, b.at
  FROM generate_series(%(first)s, %(last)s) i
 CROSS JOIN LATERAL (
     SELECT gen_random_uuid()::text AS message_uuid,
            gen_random_uuid()::text AS dispatch_uuid,
            %(start)s::timestamptz + (i - 1) * %(step)s * interval '1 second' AS at) u
 CROSS JOIN LATERAL (
     SELECT u.message_uuid, u.dispatch_uuid, u.at, t.text, convert_to(t.text, 'UTF8') AS bytes
       FROM (SELECT format(%(format)s, u.message_uuid,
                           to_char(u.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                           u.dispatch_uuid) AS text) t) b
"""


def bulk_load(url: str, callbacks: int, start: datetime, end: datetime) -> None:
    """`callbacks` status callbacks dated evenly from `start` to `end`, loaded on two
    connections at once, as applied long ago (the queue's trigger is off meanwhile)."""
    started = time.monotonic()
    step = (end - start).total_seconds() / callbacks
    chunk = 250_000
    chunks = [
        (first, min(first + chunk - 1, callbacks)) for first in range(1, callbacks + 1, chunk)
    ]
    done = 0
    lock = threading.Lock()

    def load(part: list[tuple[int, int]]) -> None:
        nonlocal done
        with psycopg.connect(url, autocommit=True) as conn:
            for first, last in part:
                params = {"first": first, "last": last, "start": start, "step": step}
                conn.execute(LOAD, params | {"format": FORMAT})
                with lock:
                    done += last - first + 1
                    print(f"  loaded {done:,} / {callbacks:,}", flush=True)

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE raw_callback DISABLE TRIGGER raw_callback_queued")
    try:
        loaders = [threading.Thread(target=load, args=(chunks[i::2],)) for i in range(2)]
        for loader in loaders:
            loader.start()
        for loader in loaders:
            loader.join()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE raw_callback ENABLE TRIGGER raw_callback_queued")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE raw_callback")
        row = conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid)))"
            " FROM pg_inherits WHERE inhparent = 'raw_callback'::regclass"
        ).fetchone()
        if row is None or row[0] is None:  # not partitioned yet (the release before)
            row = conn.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('raw_callback'))"
            ).fetchone()
    assert row is not None
    print(f"loaded {callbacks:,} callbacks ({row[0]}) in {time.monotonic() - started:.0f} s")


def previous_release(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(migrations.MIGRATIONS_DIR.glob("*.sql"))[:BEFORE]:
        shutil.copy(path, folder / path.name)
    return folder


class Capturing:
    """Captures one after another on their own thread, each timed."""

    def __init__(self, url: str) -> None:
        self._db = Database(url, Settings(database_url=url, db_pool_max_size=2))
        self._stop = threading.Event()
        self.timings: list[tuple[float, float]] = []  # (started, seconds)
        self.failures = 0
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Capturing:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._db.close()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            now = datetime.now(UTC)
            body = {**TEMPLATE, "message_uuid": f"during-{n}", "timestamp": now.isoformat()}
            callback = read(CallbackKind.MESSAGE_STATUS, json.dumps(body).encode(), 32)
            started = time.monotonic()
            try:
                capture(self._db, Delivery(callback, "application/json", now))
            except Exception:
                self.failures += 1
            self.timings.append((started, time.monotonic() - started))
            n += 1

    def between(self, start: float, end: float) -> list[float]:
        return [s for at, s in self.timings if start <= at + s and at <= end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, help="where the embedded PostgreSQL keeps it")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dl-upgrade-"))
    server = embedded.start(args.data_dir or work / "pg", "postgres")
    name = f"upgrade_{int(time.time())}"
    embedded.create_database(server, name)
    url = server.replace("dbname=postgres", f"dbname={name}")
    migrations.migrate(url, previous_release(work / "migrations"))
    now = datetime.now(UTC)
    bulk_load(url, args.callbacks, now - timedelta(days=90), now)
    up_to_18 = previous_release(work / "migrations_18")
    shutil.copy(sorted(migrations.MIGRATIONS_DIR.glob("0018_*.sql"))[0], up_to_18)

    phases = []
    with Capturing(url) as captures:
        time.sleep(2)
        for label, folder in (("0018 (reads the log)", up_to_18), ("0019 (attaches)", None)):
            started = time.monotonic()
            if folder is None:
                migrations.migrate(url)
            else:
                migrations.migrate(url, folder)
            ended = time.monotonic()
            phases.append((label, started, ended))
        time.sleep(2)
    steady = [s for at, s in captures.timings if at < phases[0][1]]
    print(
        f"\n{args.callbacks:,} raw callbacks; captures before: median "
        f"{statistics.median(steady) * 1000:.1f} ms, slowest {max(steady) * 1000:.1f} ms"
    )
    print("| migration | took s | captures during | slowest capture ms |")
    print("|---|---:|---:|---:|")
    for label, started, ended in phases:
        during = captures.between(started, ended)
        slowest = max(during) * 1000 if during else float("nan")
        print(f"| {label} | {ended - started:.2f} | {len(during):,} | {slowest:.0f} |")
    print(f"failed captures: {captures.failures}")


if __name__ == "__main__":
    main()
