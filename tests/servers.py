"""Servers for the tests that run the real thing: `dispatch-ledger serve` (gunicorn on an
embedded PostgreSQL), commands in subprocesses, and a free port of loopback for each."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The checkout: commands run from here, as a user runs them.
ROOT = Path(__file__).resolve().parent.parent
MAX_LAG = 3  # APPLY_MAX_LAG_SECONDS of the servers `serving` starts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, port: int, process: subprocess.Popen[bytes], data_dir: Path) -> None:
        self.port, self.process, self.data_dir = port, process, data_dir

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            return response.status, dict(response.getheaders()), json.loads(raw) if raw else None
        finally:
            conn.close()

    def metrics(self) -> str:
        """GET /metrics, as whichever worker answers gives it (Prometheus's text format)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        assert response.status == 200
        return text

    def post_json(self, path: str, payload: Any) -> tuple[int, dict[str, str], Any]:
        return self.request(
            "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )


@contextmanager
def serving(data_dir: Path, **settings: str) -> Iterator[Server]:
    """`dispatch-ledger serve` on a free port of loopback, ready; stopped as a platform stops it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(DATA_DIR=str(data_dir), WEB_CONCURRENCY="2", HOST="127.0.0.1")
    env.update(APPLY_MAX_LAG_SECONDS=str(MAX_LAG), **settings)
    log = (data_dir / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    srv = Server(port, process, data_dir)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if srv.request("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(10)
                raise RuntimeError((data_dir / "serve.log").read_text())
            time.sleep(0.2)
        yield srv
    finally:
        if process.poll() is None:
            # As a platform stops it: SIGKILL would orphan gunicorn (serve's child).
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        log.close()


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the log's descriptor; ours is closed at once.
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until(ready: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(log.read_text())
        time.sleep(0.2)
