"""Throughput benchmark: the real ingest path against a bare Flask+gunicorn ceiling.

    .venv/bin/python -m tests.benchmark [--seconds 20] [--connections 16] [--preload 1000000]

One run, on this machine, with the same gunicorn settings, payload mix and
load generator (wrk, from Debian's packages) for every server:

1. ceiling: a bare endpoint that only parses the JSON body;
2. the real service on a fresh embedded PostgreSQL (synchronous_commit on);
3. the real service again after `--preload` callbacks are already stored.

After each run against the real service, every callback acknowledged with a
2xx is looked up in the database: the number lost must be zero. Prints a
Markdown table for BENCHMARKS.md. This is a script, not a test: numbers
depend on the machine, so nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg

from app import embedded, migrations

ROOT = Path(__file__).resolve().parent.parent

# Each workflow gets ten callbacks: three messages, each submitted/delivered/
# read (with a price), then its final report. Consecutive requests go to
# different workflows (a stride of SPREAD), as real traffic spreads one
# workflow's callbacks over time; ids are unique per thread and run, so no
# callback is a duplicate.
LUA = textwrap.dedent(
    """
    local counter = 0
    ok = 0  -- global: done() reads it from each thread with thread:get
    local prefix = ""
    local statuses = {"submitted", "delivered", "read"}
    local threads = {}

    function setup(thread)
      thread:set("tid", #threads + 1)
      table.insert(threads, thread)
    end

    function init(args)
      prefix = string.format("%s-%d", args[1], tid)
    end

    local function status_body(d, m, s, n)
      return string.format(
        '{"message_uuid":"%s-%d-%d","to":{"type":"sms","number":"447700900000"},' ..
        '"from":{"type":"sms","number":"447700900001"},' ..
        '"timestamp":"2026-03-01T09:%02d:%02d.000Z","status":"%s",' ..
        '"usage":{"currency":"EUR","price":"0.0333"},' ..
        '"_links":{"workflow":{"dispatch_uuid":"%s-%d","href":"/workflows/x"}}}',
        prefix, d, m, m, s * 5, statuses[s], prefix, d)
    end

    local function report_body(d)
      local listed = {}
      for m = 1, 3 do
        table.insert(listed, string.format(
          '{"message_uuid":"%s-%d-%d","channel":"sms","status":"read",' ..
          '"usage":{"currency":"EUR","price":"0.0333"}}', prefix, d, m))
      end
      return string.format(
        '{"dispatch_uuid":"%s-%d","template":"failover","status":"completed",' ..
        '"timestamp":"2026-03-01T09:10:00.000Z","usage":{"price":"0.0999","currency":"EUR"},' ..
        '"_links":{"messages":[%s]}}', prefix, d, table.concat(listed, ","))
    end

    local SPREAD = 1000
    request = function()
      local n = counter
      counter = counter + 1
      local block = math.floor(n / (SPREAD * 10))
      local d = block * SPREAD + n % SPREAD
      local k = math.floor(n / SPREAD) % 10
      local headers = {["Content-Type"] = "application/json"}
      if k == 9 then
        return wrk.format("POST", "/webhooks/final-report", headers, report_body(d))
      end
      local m, s = math.floor(k / 3) + 1, (k % 3) + 1
      return wrk.format("POST", "/webhooks/message-status", headers, status_body(d, m, s, n))
    end

    response = function(status, headers, body)
      if status >= 200 and status < 300 then ok = ok + 1 end
    end

    done = function(summary, latency, requests)
      local total = 0
      for _, thread in ipairs(threads) do total = total + thread:get("ok") end
      io.write(string.format("ACKNOWLEDGED %d\\n", total))
    end
    """
)

# The ceiling: the same Flask and gunicorn, doing nothing but parse the body.
BARE_APP = textwrap.dedent(
    """
    from flask import Flask, jsonify, request

    app = Flask(__name__)

    @app.post("/webhooks/<kind>")
    def receive(kind):
        request.get_json()
        return jsonify(status="accepted", callback_id=0)
    """
)


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    acknowledged: int
    non_2xx: int
    lost: int | None = None
    in_flight: int | None = None  # stored, but answered after wrk stopped listening
    # CPU time per request of the measured run, from /proc (milliseconds).
    server_cpu_ms: float = 0.0
    database_cpu_ms: float = 0.0
    wrk_cpu_ms: float = 0.0


def process_cpu(server_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of gunicorn (master and workers) and of PostgreSQL's processes."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        pid = int(text.split(" ", 1)[0])
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        ppid, seconds = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
        if pid == server_pid or ppid == server_pid:
            found[pid] = ("server", seconds)
        elif comm.startswith("postgres"):
            found[pid] = ("database", seconds)
    return found


def cpu_used(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per group between two snapshots (processes started in between count from 0)."""
    used: dict[str, float] = {"server": 0.0, "database": 0.0}
    for pid, (group, seconds) in after.items():
        used[group] += seconds - before.get(pid, (group, 0.0))[1]
    return used


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0:
        print("installing wrk from Debian's packages ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: apt-get install wrk")
    return found


def gunicorn(
    module_dir: Path, target: str, env: dict[str, str], port: int, extra: list[str]
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:app.gunicorn_conf",
        "--chdir",
        str(module_dir),
        "--access-logfile",
        "/dev/null",
        *extra,
        target,
    ]
    process = subprocess.Popen(
        command,
        env=env
        | {"PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except urllib.error.HTTPError:
            return process  # answering (the bare app has no /healthz)
        except OSError:
            time.sleep(0.2)
    process.kill()
    sys.exit(f"{target} did not start")


def run_wrk(
    wrk: str, port: int, seconds: int, connections: int, run_id: str, lua: Path
) -> tuple[float, float, float, int, int, int]:
    output = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}",
            "--",
            run_id,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert match, output
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    acknowledged = int(re.search(r"ACKNOWLEDGED (\d+)", output)[1])  # type: ignore[index]
    return (
        rps,
        latency("50"),
        latency("99"),
        requests,
        acknowledged,
        int(non_2xx_match[1]) if non_2xx_match else 0,
    )


def stored(url: str, run_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(deliveries), 0) FROM raw_callback"
            " WHERE coalesce(message_uuid, dispatch_uuid) LIKE %s",
            (f"{run_id}-%",),
        ).fetchone()
    return int(row[0]) if row else 0


def preload(url: str, count: int) -> None:
    """Store `count` callbacks (raw rows with their message and workflow rows) in bulk."""
    print(f"preloading {count:,} stored callbacks ...", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO dispatch (dispatch_uuid, status, first_received_at, updated_at)
            SELECT 'pre-' || d, 'completed', now(), now() FROM generate_series(1, %(n)s / 9) d
            """,
            {"n": count},
        )
        conn.execute(
            """
            INSERT INTO message (message_uuid, dispatch_uuid, channel, status, submitted_at,
                                 delivered_at, read_at, price, currency,
                                 first_received_at, updated_at)
            SELECT 'pre-' || m, 'pre-' || (1 + (m - 1) / 3), 'sms', 'read', now(), now(), now(),
                   0.0333, 'EUR', now(), now()
              FROM generate_series(1, %(n)s / 9 * 3) m
            """,
            {"n": count},
        )
        conn.execute(
            """
            INSERT INTO raw_callback (kind, dedup_key, body, payload, message_uuid, dispatch_uuid,
                                      event_at, received_at, last_received_at)
            SELECT 'message_status', sha256(('pre-' || c)::bytea), convert_to(p::text, 'UTF8'), p,
                   'pre-' || (1 + (c - 1) / 3), 'pre-' || (1 + (c - 1) / 9), now(), now(), now()
              FROM generate_series(1, %(n)s) c,
                   LATERAL (SELECT jsonb_build_object('message_uuid', 'pre-' || c,
                                                      'status', 'read') AS p) payload
            """,
            {"n": count},
        )
        conn.execute("VACUUM ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--preload", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--warmup", type=int, default=3, help="unmeasured seconds of load before each run"
    )
    parser.add_argument(
        "--compare-gthread",
        action="store_true",
        help="also run the service with gunicorn's gthread workers (4 threads), as before gevent",
    )
    args = parser.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="dl-bench-"))
    lua = work / "callbacks.lua"
    lua.write_text(LUA)
    (work / "bare.py").write_text(BARE_APP)
    url = embedded.start(work / "db")
    migrations.migrate(url)
    with psycopg.connect(url) as conn:
        setting = conn.execute("SHOW synchronous_commit").fetchone()
    assert setting == ("on",), setting
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"WEB_CONCURRENCY": str(args.workers), "DATABASE_URL": url}

    results: list[Result] = []
    gthread = ["--worker-class", "gthread", "--threads", "4"]
    plan: list[tuple[str, Path, str, int | None, list[str]]] = [
        ("bare ceiling (parse JSON only)", work, "bare:app", None, []),
        ("dispatch-ledger, empty database", ROOT, "wsgi:app", None, []),
    ]
    if args.compare_gthread:
        plan.append(
            ("dispatch-ledger, gthread x 4, empty database", ROOT, "wsgi:app", None, gthread)
        )
    if args.preload:
        plan.append(
            (
                f"dispatch-ledger, {args.preload:,} callbacks stored",
                ROOT,
                "wsgi:app",
                args.preload,
                [],
            )
        )
    for index, (name, folder, target, to_preload, extra) in enumerate(plan):
        if to_preload:
            preload(url, to_preload)
        port = free_port()
        server = gunicorn(folder, target, env, port, extra)
        try:
            if args.warmup:
                # Fill the pool, prepare statements and warm caches, unmeasured.
                run_wrk(
                    wrk, port, args.warmup, args.connections, f"w{index}x{int(time.time())}", lua
                )
            run_id = f"b{index}x{int(time.time())}"
            print(f"running: {name} ...", flush=True)
            before, wrk_before = (
                process_cpu(server.pid),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
            rps, p50, p99, requests, acknowledged, non_2xx = run_wrk(
                wrk, port, args.seconds, args.connections, run_id, lua
            )
            used, wrk_after = (
                cpu_used(before, process_cpu(server.pid)),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        finally:
            server.terminate()
            server.wait(30)
        result = Result(name, rps, p50, p99, requests, acknowledged, non_2xx)
        wrk_seconds = (wrk_after.ru_utime + wrk_after.ru_stime) - (
            wrk_before.ru_utime + wrk_before.ru_stime
        )
        result.server_cpu_ms = used["server"] * 1000 / requests
        result.database_cpu_ms = used["database"] * 1000 / requests
        result.wrk_cpu_ms = wrk_seconds * 1000 / requests
        if target == "wsgi:app":
            # Every acknowledged callback must be stored; more may be stored
            # than acknowledged (answered after wrk stopped counting).
            found = stored(url, run_id)
            result.lost = max(0, acknowledged - found)
            result.in_flight = max(0, found - acknowledged)
        results.append(result)

    ceiling = results[0].rps
    print()
    print(
        f"{args.connections} connections, {args.seconds} s each, gunicorn {args.workers} workers"
        f" (gevent unless said), {os.cpu_count()} cores"
    )
    print()
    print("| server | requests/s | of ceiling | p50 ms | p99 ms | 2xx | non-2xx | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        lost = "-" if r.lost is None else str(r.lost)
        print(
            f"| {r.name} | {r.rps:,.0f} | {r.rps / ceiling:.0%} | {r.p50_ms:.1f} | {r.p99_ms:.1f}"
            f" | {r.acknowledged:,} | {r.non_2xx} | {lost} |"
        )
    # Where the 2 cores went: CPU time per request, and what that allows at most.
    cores = os.cpu_count() or 1
    print()
    print(
        "| server | gunicorn CPU ms/request | PostgreSQL CPU ms/request | wrk CPU ms/request"
        " | cores busy | at most, if the cores were all ours (requests/s) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        per_request = r.server_cpu_ms + r.database_cpu_ms + r.wrk_cpu_ms
        print(
            f"| {r.name} | {r.server_cpu_ms:.2f} | {r.database_cpu_ms:.2f} | {r.wrk_cpu_ms:.2f}"
            f" | {per_request * r.rps / 1000:.2f} of {cores}"
            f" | {cores * 1000 / per_request:,.0f} |"
        )
    print(json.dumps([r.__dict__ for r in results]), file=sys.stderr)
    if any(r.lost for r in results):
        sys.exit("callbacks were lost")


if __name__ == "__main__":
    main()
