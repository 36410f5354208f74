"""The command line as a new operator meets it: one clear line for every failure, help that says
what each command reads, the version; run as the operator would, in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from app.config import Settings
from app.pipeline.capture import Delivery, capture
from app.spec.intake import CallbackKind, read
from app.store.db import Database
from tests import payloads
from tests.conftest import OwnServer, fresh_database, query, set_read_only
from tests.servers import ROOT


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def empty_db(server_url: str) -> str:
    """A database without the schema, as a new DATABASE_URL is before `migrate`."""
    return fresh_database(server_url, "dl_empty")


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "--dispatches", "1"],
        ["overdue"],
        ["status"],
        ["reprocess-rejects"],
        ["apply", "--once"],
        ["rebuild"],
        ["prune-raw", "--older-than-days", "30"],
        ["prune-rejects", "--older-than-days", "30"],
        ["analyst-role", "someone"],
    ],
)
def test_commands_on_a_database_without_the_schema_say_so_in_one_line(
    empty_db: str, args: list[str]
) -> None:
    done = run(*args, env={"DATABASE_URL": empty_db})
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "run `dispatch-ledger migrate` first" in errors[0]
    with psycopg.connect(empty_db) as conn:  # and nothing was written
        assert conn.execute("SELECT to_regclass('dispatch')").fetchone() == (None,)


@pytest.mark.parametrize(
    "args", [["migrate"], ["apply", "--once"], ["prune-raw", "--older-than-days", "30"]]
)
def test_a_database_that_takes_no_writes_is_one_line_that_says_so(
    server_url: str, args: list[str]
) -> None:
    # As DATABASE_URL pointed at a standby (a replica, or the old primary after a failover).
    url = fresh_database(server_url, "dl_standby")
    if args != ["migrate"]:
        run("migrate", env={"DATABASE_URL": url}).check_returncode()
    set_read_only(server_url, url, True)
    done = run(*args, env={"DATABASE_URL": url})
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: the database takes no writes (a standby, or set read-only):"
        " point DATABASE_URL at the primary"
    ], done.stderr


def test_an_unreachable_database_is_one_line_not_a_traceback() -> None:
    done = run(
        "overdue", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2"}
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: cannot reach the database")
    assert "DATABASE_URL" in done.stderr


def test_a_malformed_setting_is_one_line() -> None:
    done = run("overdue", env={"OVERDUE_GRACE_SECONDS": "soon"})
    assert (done.returncode, "Traceback" in done.stderr) == (1, False)
    assert "OVERDUE_GRACE_SECONDS='soon' is not a valid int" in done.stderr


def test_version_and_a_help_that_lists_every_command_whole() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("dispatch-ledger ")
    helped = run("--help").stdout
    for name in (
        "serve",
        "migrate",
        "apply",
        "status",
        "send",
        "overdue",
        "generate",
        "emulate",
        "rebuild",
        "reprocess-rejects",
        "prune-raw",
        "prune-rejects",
        "analyst-role",
    ):
        assert f"  {name} " in helped, name
    listed = helped.split("Commands:")[1]
    assert "..." not in listed  # no summary cut short
    send = run("send", "--help").stdout
    assert "real Vonage API" in send and "DISPATCH_API_URL" in send
    assert "CREATEROLE" in run("analyst-role", "--help").stdout
    assert "LAST_STEP_TIMEOUT_SECONDS" in run("overdue", "--help").stdout


def test_the_embedded_database_is_one_place_whatever_the_folder(tmp_path: Path) -> None:
    from app.config import Settings

    here = Settings.from_env({}).data_dir
    os.chdir(tmp_path)
    try:
        assert Settings.from_env({}).data_dir == here
    finally:
        os.chdir(ROOT)
    assert here == ROOT / ".dispatch-ledger"
    assert Settings.from_env({"DATA_DIR": str(tmp_path)}).data_dir == tmp_path


def test_generate_says_which_database_it_writes_fake_workflows_into(clean_db: str) -> None:
    done = run("generate", "--dispatches", "2", "--seed", "1", env={"DATABASE_URL": clean_db})
    assert done.returncode == 0, done.stderr
    assert "writing 2 fake workflows into DATABASE_URL" in done.stderr


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        ("serve", ["PORT", "WEB_CONCURRENCY", "DATABASE_URL", "DATA_DIR"]),
        ("migrate", ["DATABASE_URL", "DATA_DIR"]),
        ("apply", ["APPLY_IN_WEB", "APPLY_BATCH_SIZE", "DATABASE_URL"]),
        ("status", ["DATABASE_URL"]),
        ("send", ["DISPATCH_API_URL", "DISPATCH_API_KEY", "DISPATCH_APPLICATION_ID"]),
        ("overdue", ["OVERDUE_GRACE_SECONDS", "LAST_STEP_TIMEOUT_SECONDS"]),
        ("reprocess-rejects", ["VONAGE_SIGNATURE_SECRET", "DATABASE_URL"]),
        ("rebuild", ["DATABASE_URL"]),
        ("prune-raw", ["DATABASE_URL"]),
        ("prune-rejects", ["DATABASE_URL"]),
        ("generate", ["DATABASE_URL", "DATA_DIR"]),
        ("analyst-role", ["DATABASE_URL", "CREATEROLE"]),
        ("emulate", ["EMULATOR_API_KEY", "VONAGE_SIGNATURE_SECRET", "PORT"]),
    ],
)
def test_each_commands_help_names_the_settings_it_reads(command: str, settings: list[str]) -> None:
    helped = " ".join(run(command, "--help").stdout.split())  # lines joined
    for name in settings:
        assert name in helped, (command, name)


def test_send_with_a_file_that_is_not_json_says_so(tmp_path: Path) -> None:
    broken = tmp_path / "request.json"
    broken.write_text("{not json")
    done = run("send", str(broken), env={"DATABASE_URL": "postgresql://unused@127.0.0.1:9/x"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "request.json is not JSON" in done.stderr


def test_serve_on_a_taken_port_says_so_before_touching_a_database() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The database is unreachable: had serve gone on to migrate, it would say that instead.
        unreachable = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2"
        done = run(
            "serve", "--port", str(port), env={"DATABASE_URL": unreachable, "HOST": "127.0.0.1"}
        )
    assert (done.returncode, "Traceback" in done.stderr) == (1, False)
    assert done.stderr.startswith(f"Error: port {port} is in use on 127.0.0.1"), done.stderr
    assert "--port" in done.stderr


def test_serve_with_a_port_that_is_not_a_number_says_so() -> None:
    done = run("serve", env={"PORT": "eighty"})
    assert (done.returncode, "Traceback" in done.stderr) == (1, False)
    assert "PORT='eighty' is not a port number" in done.stderr


def test_an_applier_started_while_postgresql_is_down_waits_for_it(own_server: OwnServer) -> None:
    # As a platform starts a `worker:` while its database restarts.
    own_server.stop()
    env = {**os.environ, "DATABASE_URL": own_server.url}
    applier = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "apply"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert applier.stderr is not None
        said = applier.stderr.readline()
        assert said.startswith("cannot reach the database"), said
        assert said.rstrip().endswith("trying again in 5 s"), said
        assert applier.poll() is None  # still there
        own_server.start()
        db = Database(own_server.url, Settings(database_url=own_server.url))
        try:
            body = json.dumps(payloads.fixture("message_status_sample.json")).encode()
            callback = read(CallbackKind.MESSAGE_STATUS, body, 32)
            capture(db, Delivery(callback, "application/json", datetime.now(UTC)))
        finally:
            db.close()
        deadline = time.monotonic() + 30
        while query(own_server.url, "SELECT count(*) FROM message") != [(1,)]:
            assert time.monotonic() < deadline, "never applied"
            assert applier.poll() is None, applier.stderr.read()
            time.sleep(0.1)
    finally:
        applier.terminate()
        applier.communicate(timeout=10)


def test_a_rebuild_under_way_says_how_far_it_is_and_how_long_is_left(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.cli.operations import _tell_rebuild_progress
    from app.pipeline.rebuild import RebuildProgress

    # 26% in 225 s: at that rate 640 s more.
    _tell_rebuild_progress(RebuildProgress(1_320_000, 0.26, 225.0))
    _tell_rebuild_progress(RebuildProgress(5_000_000, 1.0, 858.0, finished=True))
    told = capsys.readouterr()
    assert told.out == ""
    assert told.err.splitlines() == [
        "rebuilding: 1,320,000 raw callbacks applied again (about 26% of the log) in 3.8 min;"
        " about 11 min left",
        "rebuilding: the whole raw log applied again (5,000,000 callbacks) in 14.3 min;"
        " deciding what changed, then committing",
    ]
