"""Operator tasks: read-only analyst logins, and pruning old raw callbacks and rejects."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import psycopg
from psycopg import sql as pgsql

from app.migrations import ANALYST_GROUP, grant_analyst_group
from app.queries import sql

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


def prune_raw(conninfo: str, older_than: timedelta, now: datetime, batch: int = 10_000) -> int:
    """Delete raw callbacks received before now - older_than, in batches; returns how many.

    The current state (workflows, messages, decisions, disagreements) is kept:
    only the raw copies go, so the state can no longer be rebuilt from them.
    """
    cutoff = now - older_than
    deleted = _delete_in_batches(conninfo, "prune_raw_batch", {"cutoff": cutoff}, batch)
    if deleted:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            params = {"now": now, "cutoff": cutoff, "deleted": deleted}
            conn.execute(sql("record_raw_log_prune"), params)
    return deleted


def prune_rejects(
    conninfo: str,
    older_than: timedelta,
    now: datetime,
    unresolved: bool = False,
    batch: int = 10_000,
) -> int:
    """Delete kept rejects last received before now - older_than; returns how many.

    Resolved rejects (recovered by reprocess-rejects, so stored as raw
    callbacks) go by default. Unresolved ones are the only copy of what was
    refused, so they go only when asked: after a flood of junk, for example.
    """
    params = {"cutoff": now - older_than, "unresolved": unresolved}
    return _delete_in_batches(conninfo, "prune_rejects_batch", params, batch)


def _delete_in_batches(conninfo: str, query: str, params: dict[str, object], batch: int) -> int:
    # Short transactions, so that a large prune never holds many row locks at once.
    deleted = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            with conn.transaction():
                count = conn.execute(sql(query), {**params, "batch": batch}).rowcount
            deleted += count
            if count < batch:
                return deleted
