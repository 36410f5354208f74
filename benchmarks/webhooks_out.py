"""Webhooks out under load: what one registered endpoint costs the captures, and how soon
each event reaches it.

    .venv/bin/python -m benchmarks.webhooks_out [--seconds 15] [--rounds 3] [--rate 300]

One run, on this machine (needs wrk: apt-get install wrk):

1. full load, side by side in interleaved rounds (the order swapped each
   round): the service on a database with no endpoint, and the service on a
   database with one endpoint registered, a receiver on this machine that
   answers 204 at once. The same wrk load and payload mix as
   benchmarks/benchmark.py. Reported: acknowledged callbacks per second, the
   median of the per-round ratios, and how long after the load every event
   made had reached the receiver;
2. moderate load (--rate callbacks a second, on a fixed schedule) with the
   endpoint: for every event, the time from when its transaction made it
   (`created_at`, taken before the commit: an upper bound) to its arrival
   at the receiver; p50, p99 and the slowest.

Also checked: every event made reached the receiver, none twice. Prints
Markdown for BENCHMARKS.md; asserts no speed (a script, not a test).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

from app.config import Settings
from app.outbound import endpoints
from app.store import embedded, migrations
from app.store.db import Database
from benchmarks.benchmark import (
    LUA,
    ROOT,
    Server,
    _database_beside,
    ensure_wrk,
    free_port,
    measure,
    sustained,
)


def receive(port: int, log: Path, niceness: int) -> None:
    """The receiver (run as its own process): answers 204, writes `id arrival` per event.

    It stands for an endpoint on another machine. During the full load it
    runs at the lowest CPU priority, so that its own work is not counted
    against the service it measures; for the delivery times at normal
    priority, so that they are the service's and not a starved receiver's.
    """
    os.nice(niceness)
    out = log.open("a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            out.write(f"{self.headers['webhook-id']} {time.time():.6f}\n")
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def start_receiver(log: Path, niceness: int) -> int:
    """A receiver process on a free port (see `receive`); its port."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.webhooks_out"]
    receiver = subprocess.Popen(
        [*command, "--receive", str(port), str(log), str(niceness)], cwd=ROOT
    )
    atexit.register(receiver.kill)
    return port


def arrivals(log: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        event_id, at = line.split()
        found.setdefault(event_id, []).append(float(at))
    return found


def made(url: str, since: datetime | None = None) -> dict[str, float]:
    """Events made (since a time): id -> created_at as a Unix time."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_id, extract(epoch FROM created_at)::float8 FROM workflow_event"
            " WHERE %s::timestamptz IS NULL OR created_at >= %s",
            (since, since),
        ).fetchall()
    return {event_id: at for event_id, at in rows}


def all_delivered(url: str, log: Path, limit: float = 120.0) -> float:
    """Seconds until every event made has arrived (or `limit`)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if made(url).keys() <= arrivals(log).keys():
            return time.monotonic() - started
        time.sleep(0.1)
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rate", type=float, default=300.0, help="the moderate load, per s")
    parser.add_argument(
        "--aa",
        action="store_true",
        help="register no endpoint on either database: the same server twice, to see how"
        " far the rounds' ratios move by noise alone (skips the moderate load)",
    )
    parser.add_argument(
        "--receive", nargs=3, metavar=("PORT", "LOG", "NICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.receive:
        receive(int(args.receive[0]), Path(args.receive[1]), int(args.receive[2]))
        return

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="dl-hooks-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    lua = work / "callbacks.lua"
    lua.write_text(LUA)
    url = embedded.start(work / "db")
    migrations.migrate(url)
    plain_url = _database_beside(url, "no_endpoint")
    hooked_url = _database_beside(url, "one_endpoint")
    for each in (plain_url, hooked_url):
        migrations.migrate(each)

    log = work / "arrivals.log"
    log.touch()
    port = start_receiver(log, 19)
    settings = Settings(database_url=hooked_url)
    db = Database(hooked_url, settings, "benchmark")
    if not args.aa:
        endpoints.add(db, f"http://127.0.0.1:{port}/hooks", None, "benchmark", datetime.now(UTC))
    db.close()

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {
        "WEB_CONCURRENCY": str(args.workers),
        "ALLOW_UNSIGNED_CALLBACKS": "true",
        "READ_API_OPEN": "true",
        "ENDPOINTS_ALLOW_HTTP": "true",
        "ENDPOINTS_ALLOW_PRIVATE": "true",
    }
    plain = Server("no endpoint", ROOT, "wsgi:app", [], url=plain_url)
    hooked = Server(
        "no endpoint either" if args.aa else "one endpoint", ROOT, "wsgi:app", [], url=hooked_url
    )
    rounds: list[dict[str, Any]] = []
    for n in range(args.rounds):
        order = (plain, hooked) if n % 2 == 0 else (hooked, plain)
        found: dict[str, Any] = {}
        for i, server in enumerate(order):
            result = measure(server, wrk, env, url, args, lua, f"{i}r{n}x{int(time.time())}")
            found[server.name] = result
            found.setdefault("left after the load (s)", 0.0)
            if server is hooked and not args.aa:
                # The server is stopped: its applier's deliverer with it. What
                # is left is sent by a deliverer of its own, as after a restart.
                deliver = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "deliver"],
                    env=env | {"DATABASE_URL": hooked_url},
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                found["left after the load (s)"] = all_delivered(hooked_url, log)
                deliver.terminate()
                deliver.wait(30)
        rounds.append(found)

    if not rounds:  # --rounds 0: the moderate load only
        moderate(args, wrk, env, hooked_url, work, log)
        return
    print()
    print(
        f"{args.connections} connections, {args.seconds} s per run, {args.rounds} rounds,"
        f" gunicorn {args.workers} workers, {os.cpu_count()} cores"
    )
    print()
    print(
        "| round | no endpoint: callbacks/s | one endpoint: callbacks/s | ratio"
        " | oldest unapplied during the load, at most (s) | applied all after (s)"
        " | every event at the endpoint after (s) | lost |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for n, found in enumerate(rounds, 1):
        a, b = found[plain.name], found[hooked.name]
        ratios.append(b.rps / a.rps)
        print(
            f"| {n} | {a.rps:,.0f} | {b.rps:,.0f} | {b.rps / a.rps:.0%}"
            f" | {a.lag_max:.2f} / {b.lag_max:.2f} | {a.drain_seconds:.1f} / {b.drain_seconds:.1f}"
            f" | {found['left after the load (s)']:.1f} | {a.lost} + {b.lost} |"
        )
    print()
    print(
        f"With one endpoint the service acknowledges {statistics.median(ratios):.0%} of its rate"
        " without one (median of the per-round ratios)."
    )

    if not args.aa:
        moderate(args, wrk, env, hooked_url, work, log)
    if any(f[plain.name].lost or f[hooked.name].lost for f in rounds):
        sys.exit("something was lost")


def moderate(
    args: argparse.Namespace, wrk: str, env: dict[str, str], hooked_url: str, work: Path, log: Path
) -> None:
    """The moderate load with the endpoint: each event's time from its transaction to it."""
    # A receiver at normal priority from now on (the endpoint moved to it).
    port = start_receiver(log, 0)
    time.sleep(1)
    with psycopg.connect(hooked_url, autocommit=True) as conn:
        conn.execute("UPDATE endpoint SET url = %s", (f"http://127.0.0.1:{port}/hooks",))
    # A workflow's ten callbacks 20 requests apart (1,000 at full load): at a
    # moderate rate each workflow ends within seconds, so the run makes events.
    paced = work / "paced.lua"
    paced.write_text(LUA.replace("local SPREAD = 1000", "local SPREAD = 20"))
    assert paced.read_text() != LUA
    since = datetime.now(UTC)
    held, _, _ = sustained(
        wrk, env | {"DATABASE_URL": hooked_url}, hooked_url, args, paced, args.rate
    )
    all_delivered(hooked_url, log)
    events = made(hooked_url, since)
    got = arrivals(log)
    delays = sorted(got[e][0] - at for e, at in events.items() if e in got)
    missing = [e for e in events if e not in got]
    every = made(hooked_url)
    twice = sum(1 for e in every if len(got.get(e, [])) > 1)
    never = sum(1 for e in every if e not in got)
    q = statistics.quantiles(delays, n=100) if len(delays) >= 2 else [0.0] * 99
    print()
    print(
        f"Moderate load: asked {args.rate:,.0f} callbacks/s, got {held.rps:,.0f}/s; {len(events):,}"
        f" events made; from the transaction that made each to its arrival at the endpoint:"
        f" p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, slowest"
        f" {max(delays, default=0) * 1000:.0f} ms; {len(missing)} not arrived."
    )
    print(
        f"Over the whole run: {len(every):,} events made, {never} never arrived,"
        f" {twice} arrived twice; lost callbacks {held.lost}."
    )
    if held.lost or never:
        sys.exit("something was lost")


if __name__ == "__main__":
    main()
