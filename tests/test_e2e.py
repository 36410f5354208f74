"""`dispatch-ledger serve` for real: embedded PostgreSQL, gunicorn, HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import payloads

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


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

    def post_json(self, path: str, payload: Any) -> tuple[int, dict[str, str], Any]:
        return self.request(
            "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(DATA_DIR=str(data_dir), WEB_CONCURRENCY="2", HOST="127.0.0.1")
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
    while True:
        try:
            if srv.request("GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError((data_dir / "serve.log").read_text())
        time.sleep(0.2)
    yield srv
    if process.poll() is None:
        process.kill()
        process.wait(10)
    log.close()


def test_samples_go_in_over_http_and_come_out_of_the_read_api(server: Server) -> None:
    report = payloads.fixture("final_report_sample.json")
    status = payloads.fixture("message_status_sample.json")
    assert server.post_json("/webhooks/final-report", report)[0] == 200
    assert server.post_json("/webhooks/message-status", status)[0] == 200
    code, _, duplicate = server.post_json("/webhooks/message-status", status)
    assert (code, duplicate["status"]) == (200, "duplicate")
    code, _, workflow = server.request("GET", "/workflows/aaaaaaaa-bbbb-cccc-dddd-0123456789ab")
    assert code == 200
    assert (workflow["status"], workflow["usage"], workflow["reported_usage"]) == (
        "completed",
        {"EUR": "0.0333"},
        {"EUR": "0.02"},
    )


def test_a_chunked_body_over_the_limit_is_refused(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        chunks = (b"x" * 65536 for _ in range(8))  # 512 KiB, no Content-Length
        conn.request(
            "POST",
            "/webhooks/message-status",
            body=chunks,
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["code"] == 413
    finally:
        conn.close()


def test_sigterm_stops_gunicorn_and_the_embedded_database(server: Server) -> None:
    pgdata = str(server.data_dir / "pgdata")
    assert any(pgdata in " ".join(p.info["cmdline"] or []) for p in _postgres())
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    assert not any(pgdata in " ".join(p.info["cmdline"] or []) for p in _postgres())


def _postgres() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "postgres"]
