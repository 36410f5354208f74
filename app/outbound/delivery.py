"""Where events are sent to endpoints: queued from the feed, signed, retried, given up on.

A deliverer runs beside the applier (`dispatch-ledger apply`, and so in every
web dyno) or as `dispatch-ledger deliver`; any number of them share the work:

- each enabled endpoint has a feed position up to which its deliveries are
  queued; a deliverer moves it on under the endpoint's row lock (another
  skips that endpoint meanwhile), queueing a delivery per event of its types.
  The feed is in commit order, so no event is ever left behind the position;
- a deliverer claims an endpoint's due deliveries by leasing them (others
  skip them until the lease ends: if it dies mid-send, another sends them
  again later: at least once, never twice at once; one that is stopped
  gives back what it had not recorded), sends them four at a time over
  kept-alive connections, and records each outcome;
- a failure is tried again on ENDPOINT_RETRY_SECONDS' schedule under the
  same webhook-id; one failing for the whole schedule is given up on, and
  its endpoint disabled unless another delivery to it succeeded since;
- each endpoint is sent to by its own thread of a pool, so a slow or dead
  one holds up only itself; after a refused connection or a timeout the
  rest of its claim waits for the schedule's first step instead of each
  waiting out its own timeout.

Nothing here runs in the web processes: captures and the applier never
wait for an endpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from app.config import Settings
from app.outbound import addresses, signing
from app.pipeline import overdue_events
from app.pipeline.process_thread import repeat_until
from app.store import events
from app.store.db import Database, DatabaseUnavailable
from app.store.queries import sql

log = logging.getLogger(__name__)

# Events queued per endpoint per turn, and deliveries an endpoint's thread takes at once.
QUEUE_BATCH = 1000
CLAIM_PER_ENDPOINT = 20
# Endpoints sent to at once by one deliverer, and deliveries in flight to each.
THREADS = 8
LANES_PER_ENDPOINT = 4
# How often a deliverer looks for newly overdue workflows.
SWEEP_SECONDS = 5.0
# What is read of an endpoint's answer (and thrown away): enough to keep the connection.
ANSWER_BYTES = 64 * 1024


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _user_agent() -> str:
    try:
        return f"dispatch-ledger/{metadata.version('dispatch-ledger')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "dispatch-ledger"


@dataclass(frozen=True)
class Claimed:
    """A delivery this deliverer leased: the event, and where and how to send it."""

    endpoint_id: str
    position: int
    attempts: int  # before this one
    url: str
    secrets: list[str]
    event_id: str
    created_at: datetime
    body: bytes


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    said: str  # "HTTP 204", "timeout", ...: what the endpoint's health shows
    # The endpoint could not be reached at all: the rest of its claim waits.
    unreachable: bool = False


class Sender:
    """POSTs to endpoints over kept-alive connections, to the address just resolved."""

    def __init__(self, timeout: float, allow_private: bool) -> None:
        self._timeout = urllib3.Timeout(total=timeout)
        self._allow_private = allow_private
        self._pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()
        self._agent = _user_agent()

    def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        try:
            target = addresses.resolve(url, allow_private=self._allow_private)
        except addresses.NotAllowed as exc:
            return Outcome(False, f"not sent: {exc}", unreachable=True)
        pool = self._pool(target)
        try:
            answer = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers={
                    **headers,
                    "Host": target.host_header,
                    "Content-Type": "application/json",
                    "User-Agent": self._agent,
                },
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,
            )
            try:
                answer.read(ANSWER_BYTES)
            finally:
                answer.release_conn()
        except (ConnectTimeoutError, ReadTimeoutError):
            return Outcome(False, "timeout", unreachable=True)
        except NewConnectionError:
            return Outcome(False, "connection refused", unreachable=True)
        except SSLError as exc:
            return Outcome(False, f"TLS failed: {exc}", unreachable=True)
        except (ProtocolError, HTTPError) as exc:
            return Outcome(False, f"connection failed: {type(exc).__name__}", unreachable=True)
        status = answer.status
        return Outcome(200 <= status < 300, f"HTTP {status}")

    def _pool(self, target: addresses.Target) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, target.address, target.port, target.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) >= 256:  # addresses change; forget the old ones
                    for old in self._pools.values():
                        old.close()
                    self._pools.clear()
                if target.scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(
                        target.address,
                        target.port,
                        timeout=self._timeout,
                        maxsize=LANES_PER_ENDPOINT,
                        server_hostname=target.host,
                        assert_hostname=target.host,
                    )
                else:
                    pool = urllib3.HTTPConnectionPool(
                        target.address,
                        target.port,
                        timeout=self._timeout,
                        maxsize=LANES_PER_ENDPOINT,
                    )
                self._pools[key] = pool
            return pool

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


@dataclass
class TurnSummary:
    queued: int = 0
    delivered: int = 0
    failed: int = 0
    gave_up: int = 0
    disabled: list[str] = field(default_factory=list)
    overdue: int = 0

    def add(self, other: TurnSummary) -> None:
        self.queued += other.queued
        self.delivered += other.delivered
        self.failed += other.failed
        self.gave_up += other.gave_up
        self.disabled += other.disabled
        self.overdue += other.overdue


class Deliverer:
    """Sends events to endpoints; `run` until stopped, or a `turn` at a time."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        sender: Sender | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._db = db
        self._settings = settings
        self._schedule = settings.retry_schedule()
        self._timeout = settings.endpoint_timeout_seconds
        self._sender = sender or Sender(
            settings.endpoint_timeout_seconds, settings.endpoints_allow_private
        )
        self._clock = clock
        self._busy: set[str] = set()
        self._sweeper = overdue_events.Sweeper()
        self._busy_lock = threading.Lock()
        # What this deliverer leased and has not recorded yet: given back when it stops.
        self._held: dict[tuple[str, int], datetime] = {}
        self._held_lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Stop `run` and give back what it leased and did not record (another sends it now,
        not once the lease ends; one in flight may then arrive twice: at least once)."""
        self.stopping.set()
        self.wake.set()
        self.release()

    def release(self) -> int:
        with self._held_lock:
            held, self._held = self._held, {}
        if not held:
            return 0
        keys = sorted(held)
        params = {
            "endpoint_id": [k[0] for k in keys],
            "position": [k[1] for k in keys],
            "until": [held[k] for k in keys],
        }
        try:
            self._db.run(lambda conn: conn.execute(sql("release_deliveries"), params))
        except DatabaseUnavailable:
            return 0  # their leases run out instead
        return len(keys)

    def sweep_overdue(self) -> int:
        return self._sweeper.sweep(
            self._db,
            self._clock(),
            self._settings.overdue_grace_seconds,
            self._settings.last_step_timeout_seconds,
        )

    def turn(self) -> TurnSummary:
        """Sweep, queue, and send every due delivery, waiting for them all (tests, --once)."""
        summary = TurnSummary(overdue=self.sweep_overdue())
        summary.queued = self.queue()
        while claimed := self.claim():
            for endpoint_claims in claimed.values():
                summary.add(self.send_all(endpoint_claims))
        return summary

    def queue(self) -> int:
        """Queue each enabled endpoint's deliveries of the events made since its position."""
        params = {"now": self._clock(), "limit": QUEUE_BATCH}
        total = 0
        while True:
            row = self._db.run(
                lambda conn: conn.execute(sql("queue_deliveries"), params).fetchone()
            )
            assert row is not None
            total += int(row["queued"])
            if row["endpoints"] == 0:
                return total

    def claim(self, busy: set[str] | None = None) -> dict[str, list[Claimed]]:
        """Lease the due deliveries of endpoints not in `busy`, by endpoint."""
        now = self._clock()
        # Long enough for one lane to send its share, each waiting out its timeout.
        lease = -(-CLAIM_PER_ENDPOINT // LANES_PER_ENDPOINT) * (self._timeout + 1) + 10
        until = now + timedelta(seconds=lease)
        params = {
            "now": now,
            "until": until,
            "per_endpoint": CLAIM_PER_ENDPOINT,
            "busy": sorted(busy or ()),
        }
        rows = self._db.run(lambda conn: conn.execute(sql("claim_deliveries"), params).fetchall())
        with self._held_lock:
            self._held.update({(row["endpoint_id"], row["position"]): until for row in rows})
        claimed: dict[str, list[Claimed]] = {}
        for row in sorted(rows, key=lambda r: r["position"]):
            body = json.dumps(events.document(row), separators=(",", ":")).encode()
            secrets = [row["secret"]] + ([row["previous_secret"]] if row["previous_secret"] else [])
            claimed.setdefault(row["endpoint_id"], []).append(
                Claimed(
                    row["endpoint_id"],
                    row["position"],
                    row["attempts"],
                    row["url"],
                    secrets,
                    row["event_id"],
                    row["created_at"],
                    body,
                )
            )
        return claimed

    def send_all(self, claims: list[Claimed]) -> TurnSummary:
        """Send one endpoint's claimed deliveries, then record what happened."""
        from app import metrics  # late: see app/__init__.py

        summary = TurnSummary()
        # A few at a time: a burst of events (an apply batch decides many
        # workflows at once) waits one round trip per lane, not one per event.
        lanes = [claims[n::LANES_PER_ENDPOINT] for n in range(LANES_PER_ENDPOINT)]
        lanes = [lane for lane in lanes if lane]
        if len(lanes) == 1:
            sent = [self._send_lane(lanes[0])]
        else:
            with ThreadPoolExecutor(len(lanes), thread_name_prefix="deliver-lane") as pool:
                sent = list(pool.map(self._send_lane, lanes))
        results = [result for lane_results, _ in sent for result in lane_results]
        deferred = [claim for _, lane_deferred in sent for claim in lane_deferred]
        summary.add(self._record(results, deferred))
        with self._held_lock:
            for claim in claims:
                self._held.pop((claim.endpoint_id, claim.position), None)
        endpoint_id = claims[0].endpoint_id
        metrics.DELIVERIES.labels(endpoint_id, "delivered").inc(summary.delivered)
        metrics.DELIVERIES.labels(endpoint_id, "failed").inc(summary.failed)
        metrics.DELIVERIES.labels(endpoint_id, "gave_up").inc(summary.gave_up)
        for disabled in summary.disabled:
            metrics.ENDPOINTS_DISABLED.inc()
            log.error(
                "endpoint %s is disabled: a delivery failed for the whole retry schedule and"
                " none has succeeded since; `dispatch-ledger endpoints enable %s` turns it back"
                " on, `dispatch-ledger endpoints replay %s --since TIME` sends what it missed",
                disabled,
                disabled,
                disabled,
            )
        return summary

    def _send_lane(
        self, claims: list[Claimed]
    ) -> tuple[list[tuple[Claimed, Outcome, datetime]], list[Claimed]]:
        """Send one after the other; after an unreachable endpoint, the rest waits (returned)."""
        results: list[tuple[Claimed, Outcome, datetime]] = []
        for n, claim in enumerate(claims):
            # The wall clock's: what a receiver compares with its own.
            headers = signing.headers(claim.secrets, claim.event_id, int(time.time()), claim.body)
            outcome = self._sender.send(claim.url, headers, claim.body)
            results.append((claim, outcome, self._clock()))
            if outcome.unreachable:
                return results, claims[n + 1 :]
        return results, []

    def _record(
        self, results: list[tuple[Claimed, Outcome, datetime]], deferred: list[Claimed]
    ) -> TurnSummary:
        def work(conn: Any) -> TurnSummary:
            summary = TurnSummary()
            for claim, outcome, at in results:
                key = {"endpoint_id": claim.endpoint_id, "position": claim.position}
                if outcome.delivered:
                    conn.execute(sql("delivered"), {**key, "now": at, "outcome": outcome.said})
                    summary.delivered += 1
                    continue
                retry_at = None
                if claim.attempts < len(self._schedule):
                    retry_at = at + timedelta(seconds=self._schedule[claim.attempts])
                params = {**key, "now": at, "outcome": outcome.said, "retry_at": retry_at}
                conn.execute(sql("failed_attempt"), params)
                if retry_at is not None:
                    summary.failed += 1
                    continue
                summary.gave_up += 1
                reason = (
                    f"event {claim.event_id} failed {claim.attempts + 1} attempts,"
                    f" the last: {outcome.said}"
                )
                disabled = conn.execute(
                    sql("disable_endpoint_if_dead"),
                    {
                        "endpoint_id": claim.endpoint_id,
                        "now": at,
                        "reason": reason,
                        "since": claim.created_at,
                    },
                ).fetchone()
                if disabled is not None:
                    summary.disabled.append(claim.endpoint_id)
            if deferred:
                conn.execute(
                    sql("defer_deliveries"),
                    {
                        "endpoint_id": deferred[0].endpoint_id,
                        "positions": [c.position for c in deferred],
                        "until": self._clock() + timedelta(seconds=self._schedule[0]),
                    },
                )
            return summary

        return self._db.run(work)

    def run(self, stop: threading.Event | None = None) -> None:
        """Deliver until `stop` (or `self.stop()`): each endpoint on its own thread of a pool,
        and the overdue sweep on a thread of its own (a slow sweep delays no delivery)."""
        stop = stop or self.stopping
        poll = self._settings.deliver_poll_seconds
        sweeper = threading.Thread(
            target=repeat_until,
            args=(stop, SWEEP_SECONDS, self.sweep_overdue, "the overdue sweep"),
            name="overdue-sweep",
            daemon=True,
        )
        sweeper.start()
        pool = ThreadPoolExecutor(THREADS, thread_name_prefix="deliver")
        try:
            while not stop.is_set():
                try:
                    self.queue()
                    with self._busy_lock:
                        busy = set(self._busy)
                    if len(busy) < THREADS:
                        for endpoint_id, claims in self.claim(busy).items():
                            with self._busy_lock:
                                self._busy.add(endpoint_id)
                            pool.submit(self._send_and_free, endpoint_id, claims)
                except DatabaseUnavailable as exc:
                    log.warning("the deliverer cannot reach the database: %s", exc)
                    stop.wait(5)
                except Exception:  # a bug: keep delivering what can be
                    log.exception("the deliverer failed; trying again")
                    stop.wait(5)
                self.wake.wait(poll)
                self.wake.clear()
        finally:
            # Sends in flight finish on their own; what waits is given back now.
            self.stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self.release()

    def _send_and_free(self, endpoint_id: str, claims: list[Claimed]) -> None:
        try:
            self.send_all(claims)
        except DatabaseUnavailable as exc:
            # Their leases run out (or were given back on stopping) and they are sent again.
            if self.stopping.is_set():  # stopped mid-send, its database closed since: expected
                log.info("stopped before recording what was sent to endpoint %s", endpoint_id)
            else:
                log.warning("cannot record what was sent to endpoint %s: %s", endpoint_id, exc)
        except Exception:
            # Their leases run out and another turn sends them again.
            log.exception("sending to endpoint %s failed", endpoint_id)
        finally:
            with self._busy_lock:
                self._busy.discard(endpoint_id)
            self.wake.set()  # there may be more for it


def own_database(db: Database) -> Database:
    """The deliverer's own pool: its threads never wait for the applier's connections, nor
    the applier for theirs (one per sending thread, one for queueing, one for the sweep)."""
    return db.another("deliver", THREADS + 2)


def start_beside(db: Database, settings: Settings) -> Deliverer:
    """Run a deliverer in a thread of this process (the applier's); returns it (to `wake` and
    to `stop`)."""
    deliverer = Deliverer(own_database(db), settings)
    threading.Thread(target=deliverer.run, name="deliverer", daemon=True).start()
    return deliverer
