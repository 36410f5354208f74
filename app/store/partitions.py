"""Where the time-partitioned tables get their weekly partitions ahead of time, and lose them whole.

The raw log is partitioned by week of event_at (migration 0019 says why),
the refused deliveries by week of first refusal (0020).
PostgreSQL makes no partition by itself, and the embedded server has no
pg_partman, so the service keeps a few weeks ahead (`ensure`, run by
`migrate` and every applier each hour). Whatever is dated outside every
weekly partition lands in the default one, so a week made late, or never,
loses nothing: making it moves its rows out of the default partition.

Retention drops a week whole (`drop`): its files go, with no row by row
deletion, no WAL per row, no dead rows for autovacuum. Every change here
takes its locks with a short timeout and tries again, so that it never makes
the captures queue behind it for long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg
from psycopg import sql as pgsql

from app.store.db import Connection
from app.store.queries import sql

log = logging.getLogger(__name__)

WEEK = timedelta(days=7)
# Weeks made ahead of the current one: an applier down for a month still
# leaves every callback in its own week.
WEEKS_AHEAD = 4
# Sessions that change partitions wait for each other on this advisory lock
# ("dl_part"); a prune and an applier's upkeep never make the same week twice.
PARTITIONS_LOCK = 0x646C5F70617274
# A lock in front of the captures is waited for this long at a time, up to
# LOCK_ATTEMPTS times: a detach holds the whole log ACCESS EXCLUSIVE.
LOCK_TIMEOUT = "200ms"
LOCK_ATTEMPTS = 150

T = TypeVar("T")


class PartitionsBusy(RuntimeError):
    """Other sessions held a table's locks every time; nothing changed."""


@dataclass(frozen=True)
class Partitioned:
    """A table partitioned by week of a timestamp column, with a default partition."""

    table: str
    column: str
    # Moves the rows a dropped partition must keep into the default partition.
    keep: str | None = None

    @property
    def default(self) -> str:
        return f"{self.table}_default"

    def week(self, monday: datetime) -> str:
        return f"{self.table}_{monday:%Y_%m_%d}"


RAW_LOG = Partitioned("raw_callback", "event_at", keep="keep_queued_raw_callbacks")
# Refused deliveries, by week of when each was first refused (migration 0020).
REJECTS = Partitioned("rejected_callback", "first_received_at", keep="keep_rejects")
TIME_PARTITIONED = (RAW_LOG, REJECTS)


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None: unbounded (the log from before partitioning)
    upper: datetime | None
    is_default: bool


def week_of(at: datetime) -> datetime:
    """The Monday 00:00 UTC that starts `at`'s week."""
    day = at.astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=day.weekday())


def listed(conn: Connection, spec: Partitioned) -> list[Partition]:
    """The table's partitions, oldest first, the default one last."""
    rows = conn.execute(sql("partitions"), {"table": spec.table}).fetchall()
    return [Partition(r["name"], r["lower"], r["upper"], r["is_default"]) for r in rows]


def ensure(
    conn: Connection, spec: Partitioned, now: datetime, ahead: int = WEEKS_AHEAD
) -> list[str]:
    """Make the weekly partitions missing from the last one up to `ahead` weeks after now's.

    One transaction per week, each deciding under the partitions lock which
    week comes next: concurrent callers never make one twice. Returns the
    partitions made.
    """
    until = week_of(now) + (ahead + 1) * WEEK
    start = week_of(now)
    made: list[str] = []
    while True:
        name = _briefly(conn, lambda: _make_next(conn, spec, start, until))
        if name is None:
            return made
        log.info("made partition %s", name)
        made.append(name)


def weeks_ahead(conn: Connection, spec: Partitioned, now: datetime) -> float:
    """How many weeks from now the last partition reaches (negative once it is behind)."""
    last = _last_upper(conn, spec)
    return (last - now) / WEEK if last is not None else 0.0


def ensure_all(conn: Connection) -> list[str]:
    """`ensure` for every time-partitioned table, from now."""
    now = datetime.now(UTC)
    return [name for spec in TIME_PARTITIONED for name in ensure(conn, spec, now)]


def _make_next(conn: Connection, spec: Partitioned, start: datetime, until: datetime) -> str | None:
    _hold(conn)
    # No week at all (an operator dropped them): start again from this week;
    # what the default partition holds of it moves in.
    lower = _last_upper(conn, spec) or start
    if lower >= until:
        return None
    name = spec.week(lower)
    names = _names(spec, name, lower=lower, upper=lower + WEEK)
    conn.execute(_format("new_partition", names))
    conn.execute(_format("attach_partition", names))
    return name


def drop(
    conn: Connection,
    spec: Partitioned,
    partition: Partition,
    dropped_in: Callable[[Connection, int], None] | None = None,
    keep: dict[str, object] | None = None,
) -> int:
    """Drop one partition whole, once what it must keep is moved to the default one.

    Returns the rows that went (counted just before, outside any lock);
    `dropped_in` runs in the dropping transaction with that count. `keep`
    are the parameters of the table's query choosing the rows to keep.
    """
    names = _names(spec, partition.name)
    row = conn.execute(_format("count_partition", names)).fetchone()
    assert row is not None
    counted = int(row["rows"])

    def work() -> int:
        _hold(conn)
        conn.execute(_format("detach_partition", names))
        kept = conn.execute(_format(spec.keep, names), keep).rowcount if spec.keep else 0
        conn.execute(_format("drop_table", names))
        gone = max(counted - kept, 0)
        if dropped_in is not None:
            dropped_in(conn, gone)
        return gone

    gone = _briefly(conn, work)
    log.info("dropped partition %s (%d rows)", partition.name, gone)
    return gone


def for_partition(query: str, spec: Partitioned, partition: Partition) -> pgsql.Composed:
    """The statement `query` with one partition's name (and its table's) filled in."""
    return _format(query, _names(spec, partition.name))


def _last_upper(conn: Connection, spec: Partitioned) -> datetime | None:
    """Where the table's last bounded partition ends (None: it has none)."""
    return max((p.upper for p in listed(conn, spec) if p.upper is not None), default=None)


def _hold(conn: Connection) -> None:
    conn.execute(sql("hold_partitions"), {"key": PARTITIONS_LOCK})


def _briefly(conn: Connection, work: Callable[[], T]) -> T:
    """Run `work` in a transaction whose locks are waited for briefly, again until taken."""
    for _ in range(LOCK_ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(sql("lock_briefly"), {"timeout": LOCK_TIMEOUT})
                return work()
        except psycopg.errors.LockNotAvailable:
            time.sleep(0.1)
    raise PartitionsBusy("other sessions held the tables' locks throughout; try again later")


def _names(spec: Partitioned, partition: str, **bounds: datetime) -> dict[str, pgsql.Composable]:
    names: dict[str, pgsql.Composable] = {
        "table": pgsql.Identifier(spec.table),
        "partition": pgsql.Identifier(partition),
        "default": pgsql.Identifier(spec.default),
        "column": pgsql.Identifier(spec.column),
    }
    names.update({key: pgsql.Literal(value) for key, value in bounds.items()})
    return names


def _format(query: str, names: dict[str, pgsql.Composable]) -> pgsql.Composed:
    return pgsql.SQL(sql(query)).format(**names)
