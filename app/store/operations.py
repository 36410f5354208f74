"""Operator tasks: read-only analyst logins, and pruning old raw callbacks, state and rejects."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from app.store import partitions
from app.store.db import Connection
from app.store.migrations import ANALYST_GROUP, grant_analyst_group
from app.store.queries import sql

# The commands that rewrite the state (rebuild) or delete from the raw log
# (prune-raw) exclude each other through this advisory lock: a rebuild that
# ran while a prune was deleting rebuilt from part of the log, and what it
# dropped was gone for good. Any constant will do; this one spells "dl_raw".
RAW_LOG_LOCK = 0x646C5F726177


class RawLogBusy(RuntimeError):
    """Another command rewriting the state or pruning the raw log is running; nothing changed."""


def hold_raw_log(conn: Connection, query: str = "hold_raw_log") -> None:
    """Become the one command rewriting the state or pruning the log, or refuse at once.

    `hold_raw_log` holds it for the session, `hold_raw_log_for_transaction`
    until the transaction ends. Refusing beats waiting: an operator learns at
    once why, and a scheduled prune is simply tried again on its next run.
    """
    row = conn.execute(sql(query), {"key": RAW_LOG_LOCK}).fetchone()
    if row is None or not row["held"]:
        raise RawLogBusy(
            "another rebuild or prune-raw is running on this database;"
            " try again once it has finished"
        )


_ROLE_NAME = re.compile(r"\A[a-z_][a-z0-9_]{0,62}\Z")


def create_analyst(conninfo: str, name: str, password: str | None) -> None:
    """A login that can read the analytics views and nothing else (idempotent)."""
    if not _ROLE_NAME.match(name):
        raise ValueError("a role name is lower-case letters, digits and _, 1 to 63 long")
    role, group = pgsql.Identifier(name), pgsql.Identifier(ANALYST_GROUP)
    secret = (
        pgsql.SQL(" PASSWORD {}").format(pgsql.Literal(password)) if password else pgsql.SQL("")
    )
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (ANALYST_GROUP,)
        ).fetchone():
            conn.execute(pgsql.SQL("CREATE ROLE {} NOLOGIN").format(group))
        grant_analyst_group(conn)
        verb = (
            "ALTER"
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            else "CREATE"
        )
        conn.execute(pgsql.SQL(verb + " ROLE {} LOGIN{}").format(role, secret))
        conn.execute(pgsql.SQL("GRANT {} TO {}").format(group, role))
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        conn.execute(
            pgsql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                pgsql.Identifier(str(database[0])), role
            )
        )
        # PostgreSQL 14 still lets every role create objects in public; an
        # analyst must not (15 and later already refuse it).
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")


@dataclass
class Pruned:
    """What a prune removed: whole weeks, and rows deleted one by one elsewhere."""

    partitions: list[str] = field(default_factory=list)
    dropped: int = 0  # rows in the partitions dropped whole
    deleted: int = 0  # rows deleted from the partitions open at one end

    @property
    def total(self) -> int:
        return self.dropped + self.deleted


def prune_raw(conninfo: str, older_than: timedelta, now: datetime, batch: int = 10_000) -> Pruned:
    """Remove applied raw callbacks dated (event_at) before now - older_than.

    A weekly partition entirely before the cutoff is dropped whole (its
    callbacks still queued move to the default partition first). The log
    from before partitioning and the default partition are deleted from in
    batches; a weekly partition that straddles the cutoff waits for a later
    prune.

    The current state (workflows, messages, decisions, disagreements) is kept:
    only the raw copies go, so the state can no longer be rebuilt from them.
    The prune is recorded in the transaction of its first removal: no raw
    callback is ever gone without the record that makes `rebuild` refuse,
    whenever this is stopped. Raises RawLogBusy while a rebuild runs.
    """
    cutoff = now - older_than
    record = _PruneRecord(now, cutoff)
    with _connect(conninfo) as conn:
        hold_raw_log(conn)
        params: dict[str, object] = {"cutoff": cutoff}
        return _prune_weeks(
            conn, partitions.RAW_LOG, cutoff, "prune_raw_batch", params, batch, record.deleted
        )


def _prune_weeks(
    conn: Connection,
    spec: partitions.Partitioned,
    cutoff: datetime,
    batched: str,
    params: dict[str, object],
    batch: int,
    removed_in: Callable[[Connection, int], None] | None = None,
) -> Pruned:
    """Drop every week of `spec` that ended by the cutoff (what the table keeps moved out
    first); run the `batched` DELETE with `params` in the partitions open at one end."""
    done = Pruned()
    for partition in partitions.listed(conn, spec):
        if partition.upper is not None and partition.upper <= cutoff:
            done.dropped += partitions.drop(conn, spec, partition, removed_in, keep=params)
            done.partitions.append(partition.name)
        elif partition.lower is None or partition.is_default:
            statement = partitions.for_partition(batched, spec, partition)
            done.deleted += _delete_in_batches(conn, statement, params, batch, removed_in)
    return done


class _PruneRecord:
    """A prune's `raw_log_prune` row: written in the transaction of its first deletion, so
    that no raw callback is gone without it; later batches add their counts to it."""

    def __init__(self, now: datetime, cutoff: datetime) -> None:
        self._now, self._cutoff = now, cutoff
        self._id: int | None = None

    def deleted(self, conn: Connection, count: int) -> None:
        if self._id is None:
            params = {"now": self._now, "cutoff": self._cutoff, "deleted": count}
            row = conn.execute(sql("record_raw_log_prune"), params).fetchone()
            assert row is not None  # INSERT ... RETURNING
            self._id = row["id"]
        else:
            conn.execute(sql("count_raw_log_prune"), {"id": self._id, "deleted": count})


# After their raw callbacks, the statements that delete a batch of pruned
# workflows, children first.
_PRUNE_STATE = (
    "prune_state_discrepancies",
    "prune_state_reconciliation",
    "prune_state_definitions",
    "prune_state_events",
    "prune_state_messages",
    "prune_state_workflows",
)


def delete_workflows(conn: Connection, ids: list[str]) -> None:
    """Delete workflows with all that is kept of them but their raw callbacks, in the
    caller's transaction: messages, disagreements, definitions, events."""
    for name in _PRUNE_STATE:
        conn.execute(sql(name), {"ids": ids})


@dataclass
class StatePruned:
    workflows: int = 0
    raw_callbacks: int = 0


def prune_state(
    conninfo: str, older_than: timedelta, now: datetime, batch: int = 500
) -> StatePruned:
    """Delete decided workflows nothing has changed for `older_than`, with all that is kept of
    them: messages, disagreements, definition, events, and their raw callbacks.

    Their raw callbacks go too, so that no rebuild brings them back; the
    prune is recorded as prune-raw's is (rebuild refuses from then on), in the
    transaction of the first batch. A batch at a time, each its own
    transaction. Raises RawLogBusy while a rebuild or a prune runs.

    The candidates (decided, not changed since the cutoff) are noted once,
    in one pass over the workflows, then taken in key order; each batch
    applies the whole rule (their messages too) as it locks them. Finding
    them again for every batch read every workflow and message each time
    (6-12 s a batch at 5 million workflows, BENCHMARKS.md).
    """
    cutoff = now - older_than
    done = StatePruned()
    record = _PruneRecord(now, cutoff)
    with _connect(conninfo) as conn:
        hold_raw_log(conn)
        conn.execute(sql("state_candidate_table"))
        conn.execute(sql("state_candidates"), {"cutoff": cutoff})
        after = ""
        while candidates := [
            row["dispatch_uuid"]
            for row in conn.execute(
                sql("state_candidates_after"), {"after": after, "batch": batch}
            ).fetchall()
        ]:
            after = candidates[-1]
            with conn.transaction():
                rows = conn.execute(
                    sql("state_to_prune"), {"candidates": candidates, "cutoff": cutoff}
                ).fetchall()
                ids = [row["dispatch_uuid"] for row in rows]
                if not ids:
                    continue
                raw = sum(
                    conn.execute(sql(name), {"ids": ids}).rowcount
                    for name in ("prune_state_raw_of_workflows", "prune_state_raw_of_messages")
                )
                delete_workflows(conn, ids)
                record.deleted(conn, raw)
            done.workflows += len(ids)
            done.raw_callbacks += raw
    return done


def prune_rejects(
    conninfo: str,
    older_than: timedelta,
    now: datetime,
    unresolved: bool = False,
    batch: int = 10_000,
) -> Pruned:
    """Remove kept rejects last received before now - older_than.

    Resolved rejects (recovered by reprocess-rejects, so stored as raw
    callbacks) go by default. Unresolved ones are the only copy of what was
    refused, so they go only when asked: after a flood of junk, for example.
    A week first refused entirely before the cutoff is dropped whole, once
    what it must keep is moved to the default partition; from the table's
    open-ended partitions they are deleted in batches.
    """
    cutoff = now - older_than
    params = {"cutoff": cutoff, "unresolved": unresolved}
    with _connect(conninfo) as conn:
        return _prune_weeks(conn, partitions.REJECTS, cutoff, "prune_rejects_batch", params, batch)


def _connect(conninfo: str) -> Connection:
    return psycopg.connect(conninfo, autocommit=True, row_factory=dict_row)


def _delete_in_batches(
    conn: Connection,
    statement: pgsql.Composed,
    params: dict[str, object],
    batch: int,
    deleted_in: Callable[[Connection, int], None] | None = None,
) -> int:
    """Delete a batch at a time until a batch comes short; `deleted_in` runs in each batch's
    transaction that deleted something (so what it writes commits with the deletion)."""
    # Short transactions, so that a large prune never holds many row locks at once.
    deleted = 0
    while True:
        with conn.transaction():
            count = conn.execute(statement, {**params, "batch": batch}).rowcount
            if count and deleted_in is not None:
                deleted_in(conn, count)
        deleted += count
        if count < batch:
            return deleted
