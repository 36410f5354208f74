"""The connection pool, units of work, and database errors translated in one place."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import AdaptContext
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format, TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from app.config import Settings
from app.model import times
from app.store.queries import sql

log = logging.getLogger(__name__)
T = TypeVar("T")
Connection = psycopg.Connection[DictRow]

# Deadlocks and serialization failures are resolved by running the unit of
# work again; each attempt starts from scratch, so a retry is always safe.
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
MAX_ATTEMPTS = 5
# Seconds a new connection may take before the attempt counts as failed.
CONNECT_TIMEOUT = 3


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL cannot be reached or did not answer in time (answered with 503)."""


# What a server that takes no writes answers: a standby (after a failover, a
# pooled connection or a name not yet moved can still reach the old primary,
# now a replica), or one set read-only. Nothing can be stored, as when the
# database is down: answered 503, so that Vonage retries.
NO_WRITES = "the database takes no writes (a standby, or set read-only)"
# Once a session finds the server taking no writes, the pool's other sessions
# are most likely on the same server: they are all replaced, at most this
# often (while it lasts, every request would otherwise renew them).
RENEW_SESSIONS_EVERY_SECONDS = 1.0


class Database:
    """A pool per worker process, opened lazily after the server forks."""

    def __init__(self, conninfo: str, settings: Settings, role: str = "web") -> None:
        self._conninfo = conninfo
        self._role = role
        self._settings = settings
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._pid: int | None = None
        self._closed = False
        self._renewed_at = float("-inf")

    def another(self, role: str, pool_size: int) -> Database:
        """A handle on the same database with a pool of its own, for a part of the process
        that must neither wait for this one's connections nor hold them (the deliverer)."""
        settings = self._settings.with_overrides(
            {
                "db_pool_max_size": pool_size,
                "db_pool_min_size": min(self._settings.db_pool_min_size, pool_size),
            }
        )
        return Database(self._conninfo, settings, role)

    def _configure(self, conn: Connection) -> None:
        conn.autocommit = True
        # Far under a 30 s router limit; a stuck statement must not hold a worker.
        conn.execute("SET statement_timeout = '10s'")
        adapt_times(conn)
        conn.autocommit = False

    @property
    def pool(self) -> ConnectionPool[Connection]:
        # Connections must never cross a fork: a pool inherited from a parent
        # process is abandoned and a new one opened in this process.
        with self._lock:
            if self._closed:
                # Closed for good (the app or command is done): a background
                # thread must not open a new pool behind its back.
                raise DatabaseUnavailable("the database handle was closed")
            if self._pool is None or self._pid != os.getpid():
                self._pool = ConnectionPool(
                    self._conninfo,
                    connection_class=Connection,
                    # A database that does not answer a connection attempt must
                    # not hold the pool's workers for the kernel's minutes.
                    kwargs={
                        "row_factory": dict_row,
                        "connect_timeout": CONNECT_TIMEOUT,
                        # Who each session is, in pg_stat_activity and PostgreSQL's
                        # log: the web processes, or the command (`apply` beside
                        # them). A fallback: an application_name in DATABASE_URL (or
                        # PGAPPNAME) is the operator's choice, and libpq keeps it.
                        "fallback_application_name": f"dispatch-ledger {self._role}",
                    },
                    min_size=self._settings.db_pool_min_size,
                    max_size=self._settings.db_pool_max_size,
                    timeout=self._settings.db_pool_timeout,
                    # No check on checkout: it costs a round trip per request.
                    # A connection broken by an outage is found out when used,
                    # and `run` starts over on another (see there).
                    # Reconnection backs off exponentially until this gives up;
                    # then the next request starts over at 1 s. Without a cap a
                    # long outage would leave minutes of 503s after recovery.
                    reconnect_timeout=10.0,
                    configure=self._configure,
                    name="dispatch-ledger",
                    open=False,
                )
                # wait=False: a worker starts even while the database is down,
                # and answers 503 until it is back.
                self._pool.open(wait=False)
                if self._pid is None:
                    # Closed while the process exits normally: its connections
                    # end cleanly, and no pool is left to the finalizer, which
                    # cannot stop a gevent worker's greenlets.
                    atexit.register(self.close)
                self._pid = os.getpid()
            return self._pool

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction: all of it commits, or none of it.

        Every unit of work here may run again from scratch: a callback's
        capture is deduplicated, so a second run after a commit whose answer
        was lost finds a duplicate; definitions and decisions are upserts; at
        worst a refused delivery's attempt counter moves twice. (Nothing that
        calls out, such as sending to Dispatch, runs inside a unit.)
        """
        return self._attempt(work, _in_transaction)

    def run_autocommit(self, work: Callable[[Connection], T]) -> T:
        """Run `work` with each statement committing by itself (no BEGIN, no COMMIT).

        For a unit that is one statement, or whose statements may commit one
        by one: a statement's answer then arrives after its commit, in one
        round trip. Retried from scratch like `run`, so the same rule holds:
        running it again must be harmless.
        """
        return self._attempt(work, _autocommit)

    def _attempt(
        self,
        work: Callable[[Connection], T],
        unit: Callable[[Connection, Callable[[Connection], T]], T],
    ) -> T:
        conflicts = 0
        # Each pooled connection may have been cut by a database restart while
        # it sat idle; each such one is found out on use and discarded.
        broken_left = self._settings.db_pool_max_size + 1
        read_only_left = 1
        while True:
            used: Connection | None = None
            try:
                with self.pool.connection() as conn:
                    used = conn
                    try:
                        return unit(conn, work)
                    except pg_errors.ReadOnlySqlTransaction:
                        self._renew_sessions(conn)
                        raise
            except pg_errors.ReadOnlySqlTransaction as exc:
                if read_only_left > 0:
                    # Once more, on a new session: after a failover whose name
                    # has moved, that one reaches the new primary.
                    read_only_left -= 1
                    continue
                raise DatabaseUnavailable(NO_WRITES) from exc
            except _RETRYABLE:
                conflicts += 1
                if conflicts == MAX_ATTEMPTS:
                    raise
                log.info("transaction conflict, retrying (attempt %d)", conflicts)
            except PoolTimeout as exc:
                raise DatabaseUnavailable("no database connection available in time") from exc
            except psycopg.OperationalError as exc:
                if used is not None and used.broken and broken_left > 0:
                    # Cut while idle (a restart or failover of PostgreSQL):
                    # the pool replaces it; this unit starts over on another.
                    broken_left -= 1
                    log.info("a pooled connection was cut; starting over on another")
                    continue
                raise DatabaseUnavailable(str(exc).strip() or "database unavailable") from exc

    def _renew_sessions(self, conn: Connection) -> None:
        """`conn` reached a server that takes no writes: replace it, and the pool's others."""
        conn.close()  # the pool opens another in its place
        now = time.monotonic()
        if now - self._renewed_at >= RENEW_SESSIONS_EVERY_SECONDS:
            self._renewed_at = now
            log.warning("%s: renewing the pool's sessions", NO_WRITES)
            self.pool.drain()

    def check_writable(self) -> None:
        """Raise DatabaseUnavailable unless the database answers and takes writes now."""
        self.run(_check_writable)

    def pool_stats(self) -> dict[str, int]:
        """Sizes of this worker's pool (no connection is made for it)."""
        with self._lock:
            return self._pool.get_stats() if self._pool is not None else {}

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None
            self._closed = True


def _check_writable(conn: Connection) -> None:
    row = conn.execute(sql("takes_writes")).fetchone()
    if row is None or not row["takes_writes"]:
        # As a write would have failed: the same handling (see Database._attempt).
        raise pg_errors.ReadOnlySqlTransaction(NO_WRITES)


def _in_transaction(conn: Connection, work: Callable[[Connection], T]) -> T:
    # Pipeline mode: BEGIN, COMMIT and statements whose results are not read
    # travel with the next round trip instead of each taking one (profiled:
    # BEGIN alone was 22% of worker time). Reading a result still waits for it.
    with conn.pipeline(), conn.transaction():
        return work(conn)


def _autocommit(conn: Connection, work: Callable[[Connection], T]) -> T:
    # Setting autocommit sends nothing. Pooled connections are handed out
    # with it off, so it is put back before this one returns to the pool
    # (one left busy or closed by a failure is discarded by the pool instead).
    conn.autocommit = True
    try:
        return work(conn)
    finally:
        if conn.info.transaction_status is TransactionStatus.IDLE:
            conn.autocommit = False


# psycopg's own timestamptz loader: its C implementation where psycopg[binary]
# is installed, which cannot be subclassed, hence the delegation below.
_TIMESTAMPTZ = psycopg.adapters.types["timestamptz"].oid
_PSYCOPG_TIME_LOADER = psycopg.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT)


class _EventTimeLoader(Loader):
    """timestamptz as psycopg loads it, and also the instants just past Python's years."""

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        assert _PSYCOPG_TIME_LOADER is not None
        # Delegated to, not inherited: the C loader reads a value in 4 us where
        # the Python one took 6.5 (profiled: the applier reads ~4 per callback).
        self._psycopg = _PSYCOPG_TIME_LOADER(oid, context)

    def load(self, data: Buffer) -> Any:
        try:
            return self._psycopg.load(data)
        except psycopg.DataError:
            return times.from_postgres_utc(bytes(data).decode())


def adapt_times(conn: psycopg.Connection[Any]) -> None:
    """Load every event time a callback may carry (any offset of years 0001 to 9999)."""
    # The loader reads PostgreSQL's UTC text for times Python cannot write in UTC.
    conn.execute("SET TimeZone = 'UTC'")
    conn.adapters.register_loader("timestamptz", _EventTimeLoader)


def jsonb(value: Any) -> Jsonb:
    """Wrap a value for a jsonb parameter."""
    return Jsonb(value)


def jsonb_text(text: str) -> Jsonb:
    """A jsonb parameter already written as JSON text: sent as it is, not dumped again."""
    return Jsonb(text, dumps=_as_written)


def _as_written(text: str) -> str:
    return text
