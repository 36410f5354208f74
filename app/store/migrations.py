"""Apply the numbered plain-SQL migrations in sql/migrations/, each once, each in a transaction.

A migration that reads a whole large table (building an index concurrently,
validating a constraint) runs instead one statement at a time outside a
transaction, so that captures go on meanwhile; it says so in a header line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from app.locations import SQL_DIR

log = logging.getLogger(__name__)
MIGRATIONS_DIR = SQL_DIR / "migrations"
VIEWS_DIR = SQL_DIR / "views"
# The group role analysts' logins belong to; granted SELECT on every view.
ANALYST_GROUP = "dispatch_ledger_analyst"
_VIEW_FILENAME = re.compile(r"^\d{2}_([a-z0-9_]+)\.sql$")
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# A migration asks for a table to be vacuumed once it has committed (VACUUM
# cannot run in its transaction): after a rewrite, say, so that index-only
# scans work at once instead of after autovacuum's next visit.
_VACUUM_AFTER = re.compile(r"^-- vacuum after: ([a-z_][a-z0-9_]*)$", re.MULTILINE)
# One cluster-wide advisory lock serializes concurrent runners (two releases
# racing): the second waits, then finds everything applied.
_LOCK_KEY = 0x6469737061746368  # "dispatch"
# Such a migration's statements must each be safe to run again: a failure
# halfway leaves it unrecorded, and the next `migrate` starts it over.
_OUTSIDE_TRANSACTION = "-- migrate: one statement at a time, outside a transaction"


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def vacuums(self) -> list[str]:
        """The tables to VACUUM ANALYZE once this migration has committed."""
        return _VACUUM_AFTER.findall(self.sql)

    @property
    def outside_transaction(self) -> bool:
        return _OUTSIDE_TRANSACTION in self.sql.splitlines()

    def statements(self) -> list[str]:
        """The statements, split where a line ends in `;` outside a dollar-quoted body."""
        statements, current, quoted = [], [], False
        for line in self.sql.splitlines():
            current.append(line)
            quoted ^= line.count("$$") % 2 == 1
            if not quoted and line.rstrip().endswith(";"):
                text = "\n".join(current).strip()
                if _has_code(text):
                    statements.append(text)
                current = []
        if _has_code("\n".join(current)):
            raise MigrationError(f"migration {self.version:04d}: text after its last `;`")
        return statements


def _has_code(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations on disk, in order; refuses none at all, gaps and duplicates."""
    found: list[Migration] = []
    paths = sorted(directory.glob("*.sql"))
    if not paths:
        # An install without its SQL files once said "database is up to date"
        # and did nothing: no schema is never what this code expects.
        raise MigrationError(f"no migration files in {directory}: this install is incomplete")
    for path in paths:
        match = _FILENAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: expected NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def apply_views(conn: psycopg.Connection[tuple[object, ...]], directory: Path = VIEWS_DIR) -> bool:
    """(Re)create the analytics views when any file changed; True if they were.

    All are dropped and created again in one transaction: dropping one view
    drops those built on it, and a changed view may change its columns, which
    CREATE OR REPLACE refuses. Grants go with a dropped view, so they are
    given again.
    """
    views = []
    for path in sorted(directory.glob("*.sql")):
        match = _VIEW_FILENAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: expected NN_view_name.sql")
        views.append((match[1], path.read_text(encoding="utf-8")))
    checksum = hashlib.sha256(json.dumps(views).encode()).hexdigest()
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_views ("
        " id boolean PRIMARY KEY DEFAULT true CHECK (id), checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    row = conn.execute("SELECT checksum FROM schema_views").fetchone()
    if row is not None and row[0] == checksum:
        return False
    with conn.transaction():
        # The analysts' views, and the ones that compute the stale days of the kept
        # figures behind them (daily.*_now, migration 0021).
        existing = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.views"
            " WHERE table_schema IN ('analytics', 'daily')"
        ).fetchall()
        for schema, name in existing:
            conn.execute(
                pgsql.SQL("DROP VIEW IF EXISTS {} CASCADE").format(
                    pgsql.Identifier(str(schema), str(name))
                )
            )
        for _, text in views:
            conn.execute(text)  # our own files, never input
        grant_analyst_group(conn)
        conn.execute(
            "INSERT INTO schema_views (id, checksum) VALUES (true, %s)"
            " ON CONFLICT (id) DO UPDATE SET checksum = excluded.checksum, applied_at = now()",
            (checksum,),
        )
    log.info("applied %d analytics views", len(views))
    return True


def grant_analyst_group(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Let the analyst group read the views, if the group exists."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ANALYST_GROUP,)).fetchone()
    if exists:
        group = pgsql.Identifier(ANALYST_GROUP)
        conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA analytics TO {}").format(group))
        conn.execute(
            pgsql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO {}").format(group)
        )


def _wait_for_the_lock(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Take the runners' lock, asking again and again rather than waiting in a statement: a
    concurrent index build in the other runner waits for every open transaction to end,
    a waiting pg_advisory_lock among them, and the two would deadlock."""
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()
        if row is not None and row[0]:
            return
        time.sleep(0.1)


def _partitions_ahead(conninfo: str) -> None:
    """The weekly partitions for the weeks ahead (the appliers keep them so)."""
    from app.store import partitions  # it reads queries, which a migration never needs

    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        partitions.ensure_all(conn)


def _daily_figures_kept(conninfo: str) -> None:
    """The analytics figures of every stale day kept (after an upgrade to 0021: all of them)."""
    from app.store import daily_figures

    with psycopg.connect(conninfo, row_factory=dict_row) as conn:

        def in_a_transaction(work: Callable[[psycopg.Connection[Any]], int | None]) -> int | None:
            with conn.transaction():
                return work(conn)

        daily_figures.keep_with(in_a_transaction)


def not_applied(conninfo: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations this code has and the database has not applied (all, on an empty one)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migration') IS NOT NULL").fetchone()
        applied: set[int] = set()
        if exists and exists[0]:
            rows = conn.execute("SELECT version FROM schema_migration").fetchall()
            applied = {int(str(version)) for (version,) in rows}
    return [m for m in discover(directory) if m.version not in applied]


def migrate(conninfo: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply what has not been applied yet, then the analytics views if they changed."""
    migrations = discover(directory)
    applied_now: list[Migration] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _wait_for_the_lock(conn)
        try:
            conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migration (
                    version    integer     CONSTRAINT schema_migration_pkey PRIMARY KEY,
                    name       text        NOT NULL,
                    checksum   text        NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            rows = conn.execute("SELECT version, name, checksum FROM schema_migration").fetchall()
            applied = {version: (name, checksum) for version, name, checksum in rows}
            for migration in migrations:
                if migration.version in applied:
                    _, checksum = applied[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} was edited "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                # Migration files are ours, read from disk, never from input.
                if migration.outside_transaction:
                    for statement in migration.statements():
                        conn.execute(statement)
                with conn.transaction():
                    if not migration.outside_transaction:
                        conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migration (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied_now.append(migration)
                for table in migration.vacuums:
                    conn.execute(pgsql.SQL("VACUUM ANALYZE {}").format(pgsql.Identifier(table)))
                    log.info("vacuumed %s, as migration %04d asks", table, migration.version)
            unknown = sorted(set(applied) - {m.version for m in migrations})
            if unknown:
                raise MigrationError(f"the database has migrations this code does not: {unknown}")
            if directory == MIGRATIONS_DIR:
                apply_views(conn)
                _partitions_ahead(conninfo)
                _daily_figures_kept(conninfo)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
