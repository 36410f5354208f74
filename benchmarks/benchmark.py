"""Throughput benchmark: the service against a bare ceiling and a hand-written durable receiver.

    .venv/bin/python -m benchmarks.benchmark [--seconds 15] [--rounds 3] [--connections 16]
        [--against COMMIT --no-sustained] [--keep]

One run, on this machine, with the same gunicorn settings, payload mix and
load generator (wrk, from Debian's packages) for every server, in
interleaved rounds (the machine's speed drifts by phases, so each round
compares servers measured minutes apart, and the median of the per-round
ratios is kept):

1. ceiling: a bare endpoint that only parses the JSON body;
2. a hand-written durable receiver: parse, insert the body as jsonb into a
   one-index table, commit per request; the best of gunicorn's sync and
   gthread workers (the same number of processes);
3. the service as deployed (capture in the workers, and the applier gunicorn
   runs beside them at a lower CPU priority; its CPU is counted);
4. the service capturing alone (APPLY_IN_WEB=false), its callbacks applied
   after the load by `dispatch-ledger apply --once`: what the web processes
   take when the applier runs on another machine.

For the service it reports acknowledged callbacks per second, p50 and p99,
CPU per callback, the applier's lag during the load (the age of the oldest
unapplied callback, sampled every 0.25 s), the time after the load stops
until every acknowledged callback is applied, and lost callbacks
(acknowledged but not stored, or never applied: checked in the database,
must be 0). Then sustained runs at fixed rates (10% and 70% of the
receiver's; wrk sends on a fixed schedule, over four times the connections)
sample the same lag, which should stay under 1 s, and read the service's
captured-to-applied histogram.
Each run also reports the longest time no connection got an answer and the
slowest commit of a probe committing every 20 ms on the same PostgreSQL: wrk
corrects its percentiles for coordinated omission, so a single stall of the
disk under the WAL, which every durable server waits for, moves p99 on its own.
With --against COMMIT the service at that commit (a git worktree, on a
database of its own migrated by that checkout) runs in every round too, so
that a change is measured side by side with what it changes. Prints
Markdown for BENCHMARKS.md. A script, not a test: numbers depend on the
machine, so nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from app.store import embedded, migrations

ROOT = Path(__file__).resolve().parent.parent
WRK_THREADS = 2

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
    -- A rate asked for: this thread's requests go out on a fixed schedule, one
    -- every `interval` ms, whenever the answers come (0: as fast as it goes).
    local interval = 0
    local next_at = nil
    local ffi = require("ffi")
    ffi.cdef[[
      typedef struct { long tv_sec; long tv_nsec; } dl_timespec;
      int clock_gettime(int clk_id, dl_timespec *tp);
    ]]
    local clock = ffi.new("dl_timespec")
    local function now_ms()
      ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
      return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
    end
    local statuses = {"submitted", "delivered", "read"}
    local threads = {}

    function setup(thread)
      thread:set("tid", #threads + 1)
      table.insert(threads, thread)
    end

    function init(args)
      prefix = string.format("%s-%d", args[1], tid)
      math.randomseed(tid * 7919 + os.time())
      local rate = tonumber(args[2] or "0")  -- requests a second for this thread
      if rate > 0 then interval = 1000 / rate end
    end

    local SPREAD = 1000
    -- true: each id begins with 8 random hex digits, so that a run's new
    -- workflows and messages land all over the indexes, as Vonage's random
    -- uuids do (the rest keeps ids unique); false: ids sort together.
    local RANDOM_KEYS = false
    local leads, leads_block = {}, -1
    local function lead(d, m)  -- m = 0: the workflow's
      if not RANDOM_KEYS then return "" end
      local block = math.floor(d / SPREAD)
      if block ~= leads_block then leads, leads_block = {}, block end  -- those are done
      local found = leads[d]
      if found == nil then
        found = {}
        for i = 0, 3 do
          found[i] = string.format("%04x%04x-", math.random(0, 65535), math.random(0, 65535))
        end
        leads[d] = found
      end
      return found[m]
    end

    local function status_body(d, m, s, n)
      return string.format(
        '{"message_uuid":"%s%s-%d-%d","to":{"type":"sms","number":"447700900000"},' ..
        '"from":{"type":"sms","number":"447700900001"},' ..
        '"timestamp":"2026-03-01T09:%02d:%02d.000Z","status":"%s",' ..
        '"usage":{"currency":"EUR","price":"0.0333"},' ..
        '"_links":{"workflow":{"dispatch_uuid":"%s%s-%d","href":"/workflows/x"}}}',
        lead(d, m), prefix, d, m, m, s * 5, statuses[s], lead(d, 0), prefix, d)
    end

    local function report_body(d)
      local listed = {}
      for m = 1, 3 do
        table.insert(listed, string.format(
          '{"message_uuid":"%s%s-%d-%d","channel":"sms","status":"read",' ..
          '"usage":{"currency":"EUR","price":"0.0333"}}', lead(d, m), prefix, d, m))
      end
      return string.format(
        '{"dispatch_uuid":"%s%s-%d","template":"failover","status":"completed",' ..
        '"timestamp":"2026-03-01T09:10:00.000Z","usage":{"price":"0.0999","currency":"EUR"},' ..
        '"_links":{"messages":[%s]}}', lead(d, 0), prefix, d, table.concat(listed, ","))
    end

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

    -- Answers per 10 ms of wall-clock time (CLOCK_REALTIME: both threads agree),
    -- merged in done() to find the longest time no connection got an answer.
    answered = {}
    response = function(status, headers, body)
      if status >= 200 and status < 300 then ok = ok + 1 end
      ffi.C.clock_gettime(0, clock)
      local slot = math.floor(tonumber(clock.tv_sec) * 100 + tonumber(clock.tv_nsec) / 1e7)
      answered[slot] = true
    end

    -- Called before each request of every connection: the wait until the
    -- thread's next free slot. Slots missed while every connection waited
    -- for an answer are sent as soon as one is free, as a sender that does
    -- not slow down for us would.
    function delay()
      if interval == 0 then return 0 end
      local now = now_ms()
      if next_at == nil then next_at = now end
      local slot = next_at
      next_at = next_at + interval
      if slot > now then return slot - now end
      return 0
    end

    done = function(summary, latency, requests)
      local total = 0
      for _, thread in ipairs(threads) do total = total + thread:get("ok") end
      io.write(string.format("ACKNOWLEDGED %d\\n", total))
      local slots, first, last = {}, nil, nil
      for _, thread in ipairs(threads) do
        for slot in pairs(thread:get("answered")) do
          slots[slot] = true
          if first == nil or slot < first then first = slot end
          if last == nil or slot > last then last = slot end
        end
      end
      local longest, run = 0, 0
      for slot = first or 0, last or -1 do
        if slots[slot] then run = 0 else run = run + 1 end
        if run > longest then longest = run end
      end
      io.write(string.format("PAUSE %d\\n", longest * 10))
    end
    """
)

# The day the load's callbacks are dated (every body names it).
LOAD_DAY = "2026-03-01"


def load_dated(day: str, random_keys: bool = False) -> str:
    """The load (LUA) with its callbacks dated `day` (YYYY-MM-DD) instead of LOAD_DAY, and
    with `random_keys` its workflows' and messages' ids beginning at random (see `stored`)."""
    dated = LUA.replace(LOAD_DAY, day)
    if random_keys:
        dated = dated.replace("local RANDOM_KEYS = false", "local RANDOM_KEYS = true")
        assert "local RANDOM_KEYS = true" in dated
    return dated


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


# The receiver a user would write by hand in an afternoon: durable, nothing more.
RECEIVER_APP = textwrap.dedent(
    """
    import os

    from flask import Flask, jsonify, request
    from psycopg.types.json import Jsonb
    from psycopg_pool import ConnectionPool

    app = Flask(__name__)
    pool = None

    def connection():
        global pool
        if pool is None:  # opened in each worker, after the fork
            pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=4, max_size=4)
        return pool.connection()

    @app.post("/webhooks/<kind>")
    def receive(kind):
        body = request.get_json()
        with connection() as conn:
            row = conn.execute(
                "INSERT INTO hand_received (body) VALUES (%s) RETURNING id", (Jsonb(body),)
            ).fetchone()
        return jsonify(status="accepted", callback_id=row[0])
    """
)
RECEIVER_TABLE = (
    "CREATE TABLE IF NOT EXISTS hand_received (id bigserial PRIMARY KEY, body jsonb NOT NULL)"
)


@dataclass
class Load:
    """What wrk saw of one run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    acknowledged: int
    non_2xx: int
    # The longest time in which no connection got an answer (10 ms steps). wrk corrects
    # its percentiles for coordinated omission (each connection is counted as having
    # sent at its usual pace while it waited), so one pause of a few hundred ms adds
    # hundreds of slow samples: enough on its own to move p99 past 50 ms.
    pause_ms: int


@dataclass
class Result(Load):
    """One server's run: what wrk saw, and what the benchmark found in the database."""

    name: str
    lost: int | None = None
    in_flight: int | None = None  # stored, but answered after wrk stopped listening
    drain_seconds: float | None = None  # after the load, until every callback is applied
    lag_max: float | None = None  # the oldest unapplied callback's age, at most, during the load
    # CPU time per request of the measured run, from /proc (milliseconds).
    server_cpu_ms: float = 0.0
    database_cpu_ms: float = 0.0
    wrk_cpu_ms: float = 0.0
    slowest_commit_ms: float = 0.0  # the commit probe's, during the run (see CommitProbe)

    @classmethod
    def of(cls, name: str, load: Load, probe: CommitProbe) -> Result:
        return cls(**dataclasses.asdict(load), name=name, slowest_commit_ms=probe.slowest_ms)


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
    module_dir: Path,
    target: str,
    env: dict[str, str],
    port: int,
    extra: list[str],
    root: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """Start a server from `root`, the checkout whose `app` (and gunicorn settings) it runs."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:app.gunicorn_conf",
        "--chdir",
        str(module_dir),
        *extra,
        target,
    ]
    process = subprocess.Popen(
        command,
        env=env
        | {"PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warning", "PYTHONPATH": str(root)},
        # `python -m` puts the working directory first on sys.path: the same checkout.
        cwd=root,
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
    wrk: str,
    port: int,
    seconds: int,
    connections: int,
    run_id: str,
    lua: Path,
    rate: float = 0.0,
) -> Load:
    """Load a server; `rate` > 0 asks for that many requests a second in all, on a schedule."""
    output = subprocess.run(
        [
            wrk,
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}",
            "--",
            run_id,
            str(rate / WRK_THREADS),
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

    def number(pattern: str) -> str:
        match = re.search(pattern, output)
        assert match, output
        return match[1]

    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Load(
        rps=float(number(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        requests=int(number(r"(\d+) requests in")),
        acknowledged=int(number(r"ACKNOWLEDGED (\d+)")),
        non_2xx=int(non_2xx_match[1]) if non_2xx_match else 0,
        pause_ms=int(number(r"PAUSE (\d+)")),
    )


class CommitProbe:
    """Commits a transaction of its own on the benchmark's PostgreSQL every 20 ms while in
    its block, and keeps the slowest commit's time (ms).

    A commit waits for the WAL to reach the disk; while the disk stalls, every commit
    of every server on it waits, and no durable receiver can answer. The probe sees a
    stall whoever else is committing: PostgreSQL's own statement log does not time an
    autocommit statement's commit (the service's captures), which happens at the
    protocol's Sync after the statement is logged."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)
        self.slowest_ms = 0.0

    def _probe(self) -> None:
        with psycopg.connect(self._url) as conn:
            while not self._stop.is_set():
                # A transaction id makes the commit write a commit record and flush it.
                conn.execute("SELECT pg_current_xact_id()")
                started = time.monotonic()
                conn.commit()
                self.slowest_ms = max(self.slowest_ms, (time.monotonic() - started) * 1000)
                self._stop.wait(0.02)

    def __enter__(self) -> CommitProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@functools.cache
def _queued(url: str) -> bool:
    """Whether the database has the apply queue (0013 on); an --against checkout from before
    marks a waiting callback with applied_at NULL instead. Asked once per database."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('apply_queue') IS NOT NULL").fetchone()
    return row is not None and bool(row[0])


def _waiting(url: str) -> str:
    """Which raw callbacks are not applied yet, as a condition on raw_callback."""
    if _queued(url):
        return "id IN (SELECT raw_callback_id FROM apply_queue)"
    return "applied_at IS NULL"


def stored(url: str, run_id: str, since: datetime) -> tuple[int, int]:
    """Deliveries of a run received since `since` stored, and of those the callbacks not
    applied yet.

    Through the received_at index: the ids alone read the whole raw log, 6.3 s
    a round on the growth benchmark's 18 million callbacks (24 GB), pushing
    the grown state it had read into memory out of the OS cache each round."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(deliveries), 0),"
            f" count(*) FILTER (WHERE {_waiting(url)})"
            " FROM raw_callback WHERE received_at >= %s"
            " AND coalesce(message_uuid, dispatch_uuid) LIKE ANY(%s)",
            # Ids begin with the run's, or with RANDOM_KEYS's 8 hex digits and a dash.
            (since, [f"{run_id}-%", f"_________{run_id}-%"]),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def waiting_age(url: str, conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, float]:
    """Callbacks not applied yet, and the age in seconds of the oldest.

    From the queue alone where there is one, as the service's own backlog query reads
    it: joined to raw_callback, the count scanned the whole log, 40-110 ms a sample
    (four a second) taken from the database the service was being measured on."""
    source = "apply_queue" if _queued(url) else "raw_callback WHERE applied_at IS NULL"
    query = (
        f"SELECT count(*), coalesce(extract(epoch FROM now() - min(received_at)), 0) FROM {source}"
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


APPLY_DELAY = re.compile(
    r'^dispatch_ledger_apply_delay_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M
)


def apply_delays(port: int) -> list[tuple[float, float]]:
    """The service's apply-delay histogram (summed over its workers): (upper bound s, count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [(float(le), float(n)) for le, n in APPLY_DELAY.findall(text)]


def delay_quantiles(
    before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> tuple[float, float, float]:
    """p50 and p99 of the apply delays counted between two scrapes (ms, interpolated within
    a bucket, as Prometheus's histogram_quantile does), and the bucket bound all were under."""
    earlier = dict(before)
    counts = [(le, n - earlier.get(le, 0.0)) for le, n in after]
    total = counts[-1][1]

    def quantile(q: float) -> float:
        lower = 0.0
        below = 0.0
        for le, n in counts:
            if n >= q * total:
                if le == float("inf"):
                    return lower * 1000
                return 1000 * (lower + (le - lower) * (q * total - below) / max(n - below, 1.0))
            lower, below = le, n
        return lower * 1000

    bound = next(le for le, n in counts if n >= total)
    return quantile(0.5), quantile(0.99), bound * 1000


class LagSampler:
    """Samples the age of the oldest unapplied callback every 0.25 s while in its block."""

    def __init__(self, url: str | None) -> None:
        self._url = url  # None: nothing to sample (not the service)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.ages: list[float] = []

    def _sample(self) -> None:
        assert self._url is not None
        # One connection for all samples: a new one each time is a new server process.
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.is_set():
                self.ages.append(waiting_age(self._url, conn)[1])
                self._stop.wait(0.25)

    @property
    def most(self) -> float | None:
        return max(self.ages, default=0.0) if self._url is not None else None

    def __enter__(self) -> LagSampler:
        if self._url is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._url is not None:
            self._thread.join()


def drain(url: str, limit: float = 300.0) -> float:
    """Seconds until no callback waits to be applied."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while waiting_age(url, conn)[0]:
            if time.monotonic() - started > limit:
                sys.exit("the appliers did not catch up in 5 minutes")
            time.sleep(0.05)
    return time.monotonic() - started


@dataclass
class Server:
    name: str
    folder: Path
    target: str
    extra: list[str]
    root: Path = ROOT  # the checkout it runs (another with --against)
    # Its own database (--against: migrated by its checkout), else the shared one.
    # The service, capturing alone and --against each have one, so that their
    # tables grow alike from round to round (a larger one is slower to insert into).
    url: str | None = None
    # APPLY_IN_WEB=false: the web processes only capture; a separate applier
    # (`dispatch-ledger apply --once`) applies after the load, as one on its
    # own machine would during it.
    capture_only: bool = False


def measure(
    server: Server,
    wrk: str,
    env: dict[str, str],
    url: str,
    args: argparse.Namespace,
    lua: Path,
    tag: str,
) -> Result:
    port = free_port()
    if server.capture_only:
        env = env | {"APPLY_IN_WEB": "false"}
    if server.url is not None:
        url = server.url
        env = env | {"DATABASE_URL": url}
    process = gunicorn(server.folder, server.target, env, port, server.extra, server.root)
    service = server.target == "wsgi:app"

    def apply_elsewhere() -> None:
        if server.capture_only:
            command = [sys.executable, "-m", "app.cli", "apply", "--once"]
            subprocess.run(command, env=env, cwd=server.root, check=True, capture_output=True)

    try:
        if args.warmup:
            # Fill the pools, prepare statements and warm caches, unmeasured.
            run_wrk(wrk, port, args.warmup, args.connections, f"w{tag}", lua)
            if service:
                apply_elsewhere()
                drain(url)
        run_id = f"b{tag}"
        print(f"running: {server.name} ...", flush=True)
        began = datetime.now(UTC) - timedelta(seconds=1)
        before = process_cpu(process.pid)
        wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with LagSampler(url if service else None) as lags, CommitProbe(url) as probe:
            load = run_wrk(wrk, port, args.seconds, args.connections, run_id, lua)
        wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if server.capture_only:
            # The CPU of capturing alone; the applying runs after, elsewhere.
            used = cpu_used(before, process_cpu(process.pid))
            started = time.monotonic()
            apply_elsewhere()
            drained: float | None = time.monotonic() - started + drain(url)
        else:
            drained = drain(url) if service else None
            used = cpu_used(before, process_cpu(process.pid))
    finally:
        process.terminate()
        process.wait(30)
    result = Result.of(server.name, load, probe)
    requests = load.requests
    wrk_seconds = (wrk_after.ru_utime + wrk_after.ru_stime) - (
        wrk_before.ru_utime + wrk_before.ru_stime
    )
    # CPU per callback includes the applying after the load (drained above),
    # except for capture alone.
    result.server_cpu_ms = used["server"] * 1000 / requests
    result.database_cpu_ms = used["database"] * 1000 / requests
    result.wrk_cpu_ms = wrk_seconds * 1000 / requests
    if service:
        # Every acknowledged callback must be stored and applied; more may be
        # stored than acknowledged (answered after wrk stopped counting).
        found, unapplied = stored(url, run_id, began)
        result.lost = max(0, load.acknowledged - found) + unapplied
        result.in_flight = max(0, found - load.acknowledged)
        result.drain_seconds = drained
        result.lag_max = lags.most
    return result


def sustained(
    wrk: str,
    env: dict[str, str],
    url: str,
    args: argparse.Namespace,
    lua: Path,
    rate: float,
) -> tuple[Result, float, tuple[float, float, float]]:
    """The service at a fixed rate: the result, the applier's largest lag seen (s), and
    p50 and p99 of each callback's time from capture to apply (ms, from the service's
    histogram) with the histogram bound that all of them were under."""
    port = free_port()
    process = gunicorn(ROOT, "wsgi:app", env, port, [])
    try:
        # The requests go out on a fixed schedule (see delay() in LUA): the
        # rate asked for is the rate sent, unless every connection is waiting
        # for an answer. Four times the usual connections, so that a slow
        # answer (an applier's batch holds a worker's loop for a few ms) does
        # not hold up the schedule. After an unmeasured warm-up (a fresh
        # server's first requests are slow).
        run_wrk(wrk, port, args.warmup or 1, args.connections, f"w{int(time.time())}", lua)
        drain(url)
        connections = args.connections * 4
        run_id = f"s{int(time.time())}"
        began = datetime.now(UTC) - timedelta(seconds=1)
        print(
            f"running: the service at {rate:,.0f} callbacks/s ({connections} connections) ...",
            flush=True,
        )
        delays = apply_delays(port)
        with LagSampler(url) as sampled, CommitProbe(url) as probe:
            done = run_wrk(wrk, port, args.seconds, connections, run_id, lua, rate)
        drain(url)
        applied = delay_quantiles(delays, apply_delays(port))
    finally:
        process.terminate()
        process.wait(30)
    result = Result.of("the service, sustained", done, probe)
    found, unapplied = stored(url, run_id, began)
    result.lost = max(0, done.acknowledged - found) + unapplied
    return result, sampled.most or 0.0, applied


def _database_beside(url: str, name: str) -> str:
    """A database of this name on the server of `url` (created if missing): its conninfo."""
    embedded.create_database(url, name)
    return psycopg.conninfo.make_conninfo(url, dbname=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--warmup", type=int, default=3, help="unmeasured seconds of load before each run"
    )
    parser.add_argument(
        "--against",
        metavar="COMMIT",
        help="also run the service at this commit in every round (side by side with this"
        " checkout), on a database of its own migrated by that checkout",
    )
    parser.add_argument(
        "--no-sustained", action="store_true", help="skip the paced runs (comparisons)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases and logs (removed by default)"
    )
    args = parser.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="dl-bench-"))
    if args.keep:
        print(f"keeping {work}: the databases and PostgreSQL's log (pgdata/log)", flush=True)
    else:
        # A run leaves about 1.6 GB there. Registered before the embedded server
        # registers its own stop, so that it runs after it (atexit runs last first).
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    lua = work / "callbacks.lua"
    lua.write_text(LUA)
    (work / "bare.py").write_text(BARE_APP)
    (work / "receiver.py").write_text(RECEIVER_APP)
    url = embedded.start(work / "db")
    migrations.migrate(url)
    with psycopg.connect(url) as conn:
        setting = conn.execute("SHOW synchronous_commit").fetchone()
        conn.execute(RECEIVER_TABLE)
    assert setting == ("on",), setting
    capture_url = _database_beside(url, "capture_alone")
    migrations.migrate(capture_url)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"WEB_CONCURRENCY": str(args.workers), "DATABASE_URL": url}
    # Unsigned callbacks, as every run before: a deployment opened on purpose
    # (closed by default since 2026-12; a JWT check is not what is measured).
    env |= {"ALLOW_UNSIGNED_CALLBACKS": "true", "READ_API_OPEN": "true"}

    bare = Server("bare ceiling (parse JSON only)", work, "bare:app", [])
    receivers = [
        Server("hand-written receiver, sync", work, "receiver:app", ["--worker-class", "sync"]),
        Server(
            "hand-written receiver, gthread x 4",
            work,
            "receiver:app",
            ["--worker-class", "gthread", "--threads", "4"],
        ),
    ]
    servers = [
        bare,
        *receivers,
        Server("dispatch-ledger", ROOT, "wsgi:app", []),
        Server(
            "dispatch-ledger, capture alone (APPLY_IN_WEB=false, applied after)",
            ROOT,
            "wsgi:app",
            [],
            url=capture_url,
            capture_only=True,
        ),
    ]
    if args.against:
        other = work / "against"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", str(other), args.against], check=True)
        # Its own database on the same server, in its own layout (the migrations may differ).
        against_url = _database_beside(url, "against")
        migrate = [sys.executable, "-m", "app.cli", "migrate"]
        subprocess.run(
            migrate,
            cwd=other,
            env=env | {"DATABASE_URL": against_url, "PYTHONPATH": str(other)},
            check=True,
            capture_output=True,
        )
        name = f"dispatch-ledger at {args.against}"
        servers.append(Server(name, other, "wsgi:app", [], root=other, url=against_url))
    rounds: list[list[Result]] = []
    try:
        for n in range(args.rounds):
            tag = f"{n}x{int(time.time())}"
            found = [
                measure(s, wrk, env, url, args, lua, f"{i}r{tag}") for i, s in enumerate(servers)
            ]
            rounds.append(found)
    finally:
        if args.against:
            subprocess.run([*git, "worktree", "remove", "--force", str(other)], check=False)

    print()
    print(
        f"{args.connections} connections, {args.seconds} s per run, {args.rounds} rounds,"
        f" gunicorn {args.workers} workers (gevent unless said), {os.cpu_count()} cores"
    )
    print()
    print(
        "| round | server | callbacks/s | p50 ms | p99 ms | 2xx | non-2xx | lost"
        " | oldest unapplied during the load, at most (s) | applied all after (s)"
        " | CPU ms/callback (gunicorn + PostgreSQL)"
        " | longest pause in answers / slowest probe commit (ms) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, found in enumerate(rounds, 1):
        for r in found:
            lost = "-" if r.lost is None else str(r.lost)
            drained = "-" if r.drain_seconds is None else f"{r.drain_seconds:.1f}"
            lag = "-" if r.lag_max is None else f"{r.lag_max:.2f}"
            print(
                f"| {n} | {r.name} | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f}"
                f" | {r.acknowledged:,} | {r.non_2xx} | {lost} | {lag} | {drained}"
                f" | {r.server_cpu_ms:.2f} + {r.database_cpu_ms:.2f}"
                f" | {r.pause_ms} / {r.slowest_commit_ms:.0f} |"
            )
    # Servers by their place in each round: [bare, sync, gthread, service, alone, against].
    receiver_rates = [max(found[1].rps, found[2].rps) for found in rounds]

    def median_ratio(index: int, to: list[float]) -> float:
        """The median over the rounds of one server's rate against another rate of its round."""
        return statistics.median(f[index].rps / rate for f, rate in zip(rounds, to, strict=True))

    of_receiver = median_ratio(3, receiver_rates)
    of_ceiling = median_ratio(3, [found[0].rps for found in rounds])
    print()
    print(
        f"Median of the per-round ratios: the service acknowledges {of_receiver:.0%} of the"
        f" receiver's rate (best of sync and gthread) and {of_ceiling:.0%} of the ceiling."
    )
    alone = median_ratio(4, receiver_rates)
    print(
        f"Capturing alone (the web processes of a deployment whose applier runs elsewhere):"
        f" {alone:.0%} of the receiver's rate."
    )
    if args.against:
        then = median_ratio(5, receiver_rates)
        print(f"At {args.against}, in the same rounds: {then:.0%} of the receiver's rate.")
        # Pair by pair: the change itself, measured minutes apart at most.
        pairs = [found[3].rps / found[5].rps - 1 for found in rounds]
        print(
            f"The service against {args.against}, round by round: "
            + ", ".join(f"{p:+.0%}" for p in pairs)
            + f" (median {statistics.median(pairs):+.0%})."
        )

    receiver_rate = statistics.median(receiver_rates)
    held_runs = []
    print()
    for share in () if args.no_sustained else (0.1, 0.7):
        rate = share * receiver_rate
        held, lag, (p50, p99, worst) = sustained(wrk, env, url, args, lua, rate)
        held_runs.append(held)
        print(
            f"Sustained: asked {rate:,.0f}/s ({share:.0%} of the receiver's median), got"
            f" {held.rps:,.0f}/s ({held.rps / receiver_rate:.0%}), p50 {held.p50_ms:.1f} ms,"
            f" p99 {held.p99_ms:.1f} ms (longest pause {held.pause_ms} ms, slowest probe commit"
            f" {held.slowest_commit_ms:.0f} ms);"
            f" the oldest unapplied callback at most {lag:.2f} s old;"
            f" captured to applied: p50 {p50:.0f} ms, p99 {p99:.0f} ms, all under {worst:.0f} ms;"
            f" lost {held.lost}."
        )
    print(json.dumps([[r.__dict__ for r in found] for found in rounds]), file=sys.stderr)
    if any(r.lost for found in rounds for r in found) or any(h.lost for h in held_runs):
        sys.exit("callbacks were lost")


if __name__ == "__main__":
    main()
