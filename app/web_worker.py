"""gunicorn's gevent worker, with deadlines on reading a request and shedding of idle connections.

A connection costs a greenlet, so thousands of slow or idle ones cost little
memory; but each worker holds at most GUNICORN_WORKER_CONNECTIONS, and once
its pool was full the worker stopped accepting: 2,000 idle keep-alive
connections, or as many that sent half a request line, left every callback
unanswered. Here:

- a new connection must send its first request's head within
  GUNICORN_READ_TIMEOUT (10 s), and every request's body within as long once
  its head is in (the body is read before the application sees it, up to
  MAX_BODY_BYTES and one byte more);
- between requests a connection may stay idle GUNICORN_KEEPALIVE (100 s), longer
  than the Heroku router's 90 s (app/gunicorn_conf.py says why);
- when a worker holds nine in ten of its connections, each new one sheds the
  connection that has waited longest for a request or its body: idle and
  incomplete connections go first, never one whose request is being answered.

Imported by gunicorn's master to find the class: it imports nothing of the
service (app.metrics, Flask) until a worker has forked and patched.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, cast

import gevent
from gunicorn.workers.ggevent import GeventWorker

from app.config import Settings


class Shed(Exception):
    """Raised in a waiting connection's greenlet to close it and make room."""


class ReadTimeout(Exception):
    """A request's head or body did not arrive within its deadline."""


class IdleTimeout(Exception):
    """A kept-alive connection sent no next request in time."""


# The share of a worker's connections above which new ones shed waiting ones.
SHED_ABOVE = 0.9


if TYPE_CHECKING:
    Connection = gevent.Greenlet[Any, Any]


def _me() -> Connection:
    """The connection being served: the pool runs each in a gevent Greenlet of its own."""
    return cast("Connection", gevent.getcurrent())


def read_timeout() -> float:
    return float(os.environ.get("GUNICORN_READ_TIMEOUT", "10"))


class SheddingGeventWorker(GeventWorker):  # type: ignore[misc]
    """GeventWorker, with read deadlines and idle connections shed first when full."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout()
        self.max_body = Settings.from_env().max_body_bytes
        self.shed_above = max(int(self.worker_connections * SHED_ABOVE), 1)
        self.open = 0
        # Greenlets of connections waiting for a request or its body, longest first.
        self.waiting: OrderedDict[Connection, None] = OrderedDict()
        # Requests each open connection has been answered, to tell its first.
        self.served: dict[Connection, int] = {}

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        me = _me()
        self.open += 1
        self.served[me] = 0
        self._wait(me)
        try:
            self._make_room()
            super().handle(listener, client, addr)
        finally:
            self.open -= 1
            self.waiting.pop(me, None)
            self.served.pop(me, None)

    def _wait(self, me: Connection) -> None:
        self.waiting.pop(me, None)
        self.waiting[me] = None

    def _make_room(self) -> None:
        while self.open > self.shed_above and self.waiting:
            oldest, _ = self.waiting.popitem(last=False)
            if oldest is not _me():
                _count("shed")
                oldest.kill(Shed, block=False)

    def timeout_ctx(self) -> gevent.Timeout:
        """How long `next(parser)` may take: the first request's head, or the next request."""
        if self.served.get(_me(), 0):
            return gevent.Timeout(self.cfg.keepalive, IdleTimeout)
        return gevent.Timeout(self.read_timeout, ReadTimeout)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        me = _me()
        self._wait(me)  # until its body is in, it waits like a new connection
        self._read_body(req, sock)
        self.waiting.pop(me, None)
        try:
            handled: bool = super().handle_request(listener_name, req, sock, addr)
            return handled
        finally:
            if me in self.served:
                self.served[me] += 1
                self._wait(me)

    def _read_body(self, req: Any, sock: Any) -> None:
        """Read the body (up to max_body + 1 bytes) within the deadline, for the app to read.

        Beyond that the application refuses it (413) unread, and the
        connection closes after the answer: the rest is never read.
        """
        if req._expected_100_continue:
            sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            req._expected_100_continue = False
        declared = next((v for k, v in req.headers if k == "CONTENT-LENGTH"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            body = b""  # refused by its header alone
            req.must_close = True
        else:
            with gevent.Timeout(self.read_timeout, ReadTimeout):
                body = req.body.read(self.max_body + 1)
            req.must_close = req.must_close or len(body) > self.max_body
        req.body = io.BytesIO(body)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, Shed):
            return  # counted when shed; the socket is closed by handle()
        if isinstance(exc, ReadTimeout | IdleTimeout):
            _count("read_timeout" if isinstance(exc, ReadTimeout) else "idle_timeout")
            return
        super().handle_error(req, client, addr, exc)


def _count(reason: str) -> None:
    # Imported here: the module is loaded in the master, before any fork.
    from app import metrics

    metrics.CONNECTIONS_CLOSED.labels(reason).inc()
