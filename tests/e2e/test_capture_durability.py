"""Nothing is acknowledged before its commit: kill -9 the server, or PostgreSQL, under load.

A real gunicorn (`dispatch-ledger serve`) on a PostgreSQL of the test's own,
fed by concurrent senders. Whatever dies, every callback answered with a 2xx
is in the raw log afterwards, and once the service runs again every one of
them is applied.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests import payloads
from tests.conftest import OwnServer, query
from tests.servers import ROOT, free_port

pytestmark = pytest.mark.e2e


class Serve:
    """`dispatch-ledger serve` against a given database, started and killed at will."""

    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log, self.port = url, log, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(DATABASE_URL=self.url, WEB_CONCURRENCY="2", HOST="127.0.0.1")
        command = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)]
        with self.log.open("ab") as log:
            # With DATABASE_URL set, serve becomes gunicorn's master (exec).
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while self.get("/readyz")[0] != 200:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def kill(self) -> None:
        """kill -9 the master and its workers at once: no graceful anything."""
        assert self.process is not None
        master = psutil.Process(self.process.pid)
        for process in [master, *master.children(recursive=True)]:
            process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def get(self, path: str) -> tuple[int, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        except OSError:
            return 0, None
        finally:
            conn.close()


class Senders:
    """Threads posting unique status callbacks; each records which were acknowledged."""

    def __init__(self, port: int, threads: int = 8) -> None:
        self.port = port
        self.acknowledged: list[str] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, args=(n,), daemon=True) for n in range(threads)
        ]

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _send(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        i = 0
        while not self._stop.is_set():
            uuid = f"kill-{n}-{i}"
            i += 1
            body = json.dumps(
                payloads.status(uuid, "delivered", "2026-01-01T10:00:00Z", dispatch_uuid=f"d-{n}")
            )
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("POST", "/webhooks/status", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                # The server died under the request (perhaps mid-answer): not
                # acknowledged, as Vonage would not count it either.
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
                continue
            with self._lock:
                if 200 <= response.status < 300:
                    self.acknowledged.append(uuid)
                else:
                    self.refused += 1
        if conn is not None:
            conn.close()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[OwnServer]:
    from app.store import migrations

    server = OwnServer(tmp_path / "db")
    migrations.migrate(server.url)
    yield server
    server.handle.cleanup()


@pytest.fixture
def serve(database: OwnServer, tmp_path: Path) -> Iterator[Serve]:
    """`dispatch-ledger serve` on the test's own database, stopped at the end."""
    server = Serve(database.url, tmp_path / "serve.log")
    server.start()
    yield server
    server.stop()


def _wait_for(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _stored(url: str) -> set[str]:
    return {row[0] for row in query(url, "SELECT message_uuid FROM raw_callback")}


def test_every_acknowledged_callback_survives_a_kill_9_of_the_server(
    database: OwnServer, serve: Serve
) -> None:
    with Senders(serve.port) as senders:
        _wait_for(lambda: senders.count() >= 300, 60, "no load reached the server")
        serve.kill()
    acknowledged = set(senders.acknowledged)
    assert acknowledged <= _stored(database.url)

    # Started again, its appliers apply everything the dead one left waiting.
    serve.start()
    waiting = "SELECT count(*) FROM apply_queue"
    _wait_for(
        lambda: query(database.url, waiting) == [(0,)],
        30,
        "callbacks left waiting after the restart",
    )
    applied = {row[0] for row in query(database.url, "SELECT message_uuid FROM message")}
    assert acknowledged <= applied


def test_every_acknowledged_callback_survives_a_kill_9_of_postgresql(
    database: OwnServer, serve: Serve
) -> None:
    with Senders(serve.port) as senders:
        _wait_for(lambda: senders.count() >= 300, 60, "no load reached the server")
        pid = int((database.pgdata / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        postmaster.send_signal(signal.SIGKILL)
        postmaster.wait(10)  # reaped: a zombie would pass for a running server
        before_restart = senders.count()
        time.sleep(1)  # a second of load against a dead database: 503s, never 2xx
        database.start()  # crash recovery from the WAL
        _wait_for(
            lambda: senders.count() >= before_restart + 300,
            60,
            "the service did not take callbacks again after PostgreSQL came back",
        )
    assert senders.refused > 0  # the outage was seen by the senders
    assert set(senders.acknowledged) <= _stored(database.url)
