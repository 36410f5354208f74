"""Slow clients (slowloris): 50 connections trickling headers or bodies must not starve callbacks.

Runs `dispatch-ledger serve` (the real gunicorn, as deployed) and measures a
normal callback's answer while the slow connections are open.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests import payloads
from tests.e2e.test_e2e import server  # noqa: F401 - the module's server fixture
from tests.servers import Server

pytestmark = pytest.mark.e2e
SLOW_CONNECTIONS = 50


class Trickle:
    """Connections that send a request a byte at a time, and never finish it."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets: list[socket.socket] = []
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 2:
                # A body promised and trickled.
                sock.sendall(
                    b"POST /webhooks/status HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"
                )
            else:
                # Headers that never end.
                sock.sendall(b"POST /webhooks/status HTTP/1.1\r\nHost: x\r\n")
            self.sockets.append(sock)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            for n, sock in enumerate(self.sockets):
                try:
                    sock.sendall(b" " if n % 2 else b"X")
                except OSError:
                    pass  # closed by the server: that is allowed

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def trickle(server: Server) -> Iterator[Trickle]:  # noqa: F811
    slow = Trickle(server.port, SLOW_CONNECTIONS)
    yield slow
    slow.close()


def test_callbacks_are_answered_within_a_second_while_slow_clients_hold_connections(
    server: Server,  # noqa: F811
    trickle: Trickle,
) -> None:
    time.sleep(1.0)  # let every slow connection be accepted and stall
    answered = []
    for n in range(10):
        payload = payloads.status(f"m-slow-{n}", "submitted", "2020-01-01T14:00:00Z")
        started = time.monotonic()
        code = server.post_json("/webhooks/status", payload)[0]
        answered.append((code, time.monotonic() - started))
        time.sleep(0.3)
    assert [code for code, _ in answered] == [200] * 10
    slowest = max(seconds for _, seconds in answered)
    assert slowest < 1.0, answered
