"""A Heroku-style deploy: the Procfile's processes, run as a platform runs them.

A platform runs `release:` once per deploy, then `web:` with $PORT set, both
through a shell, with the app's environment and nothing else: here only
PATH, DATABASE_URL, PORT and the signature secret (a deployment is closed
until its owner opens it: test_closed_by_default). It stops a web process with SIGTERM and kills
it 30 seconds later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from psycopg.conninfo import make_conninfo

from app.config import Settings
from tests import payloads
from tests.conftest import fresh_database, query
from tests.servers import ROOT, Server, free_port, wait_until
from tests.signing import SECRET, bearer

pytestmark = pytest.mark.e2e


def procfile() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def test_the_procfile_declares_a_web_and_a_release_process() -> None:
    processes = procfile()
    assert set(processes) == {"web", "release"}
    # Migrations run in the release phase only, never in every web process.
    assert "migrate" in processes["release"] and "migrate" not in processes["web"]


def test_the_manifest_offers_only_settings_the_service_reads() -> None:
    manifest = json.loads((ROOT / "app.json").read_text())
    settings = {f.name.upper() for f in dataclasses.fields(Settings)}
    assert set(manifest["env"]) <= settings | {"WEB_CONCURRENCY"}  # gunicorn's
    assert manifest["addons"][0]["plan"].startswith("heroku-postgresql")


def test_the_buildpack_installs_this_project_editable(tmp_path: Path) -> None:
    # Heroku's Python buildpack installs from requirements.txt (it does not
    # install from pyproject.toml alone). Editable, so that the commands run the
    # code of the folder the Procfile's wsgi.py imports (requirements.txt says why).
    report = tmp_path / "report.json"
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet"]
    subprocess.run(
        [*pip, "--report", str(report), "-r", "requirements.txt"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    installs = json.loads(report.read_text())["install"]
    ours = [i for i in installs if i["metadata"]["name"] == "dispatch-ledger"]
    assert [i["download_info"]["dir_info"] for i in ours] == [{"editable": True}]
    assert Path(ours[0]["download_info"]["url"].removeprefix("file://")) == ROOT
    # The platform's Python: the version pinned for it is one the project supports.
    pinned = (ROOT / ".python-version").read_text().strip()
    with (ROOT / "pyproject.toml").open("rb") as f:
        supported = tomllib.load(f)["project"]["requires-python"]
    assert SpecifierSet(supported).contains(pinned + ".0")


def test_a_deploy_needs_only_the_procfile_database_url_and_the_secret(
    server_url: str, tmp_path: Path
) -> None:
    url = fresh_database(server_url, "dl_deploy")
    port = free_port()
    env = {
        # The platform puts the installed packages' scripts on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
        # An application_name the operator chose is kept (the service names its
        # sessions only when DATABASE_URL does not).
        "DATABASE_URL": make_conninfo(url, application_name="ledger-prod"),
        "PORT": str(port),
        "VONAGE_SIGNATURE_SECRET": SECRET,
    }
    processes = procfile()

    release = subprocess.run(
        ["sh", "-c", processes["release"]], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert release.returncode == 0, release.stdout + release.stderr
    assert query(url, "SELECT count(*) > 0 FROM schema_migration") == [(True,)]

    log = tmp_path / "web.log"
    with log.open("wb") as out:
        web = subprocess.Popen(
            ["sh", "-c", f"exec {processes['web']}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        server = Server(port, web, tmp_path)
        wait_until(lambda: server.request("GET", "/readyz")[0] == 200, web, log)
        body = json.dumps(payloads.fixture("message_status_sample.json")).encode()
        code, _, answer = server.request(
            "POST",
            "/webhooks/message-status",
            body,
            {**bearer(body), "Content-Type": "application/json"},
        )
        assert (code, answer["status"]) == (200, "accepted")
        assert query(url, "SELECT count(*) FROM raw_callback") == [(1,)]
        # Nobody reads it without a token: none was set.
        assert server.request("GET", "/workflows")[0] == 403
        sessions = query(
            url,
            "SELECT DISTINCT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        assert sessions == [("ledger-prod",)]
    finally:
        # The platform's stop: SIGTERM, then SIGKILL after 30 s.
        web.send_signal(signal.SIGTERM)
        try:
            assert web.wait(30) == 0, log.read_text()
        finally:
            if web.poll() is None:
                web.kill()


@pytest.mark.parametrize(("setting", "expected"), [(None, "None"), ("true", "-")])
def test_gunicorn_logs_each_request_only_when_asked(setting: str | None, expected: str) -> None:
    """The router logs every request; gunicorn's own line per request is ACCESS_LOG's."""
    env = {k: v for k, v in os.environ.items() if k != "ACCESS_LOG"}
    if setting is not None:
        env["ACCESS_LOG"] = setting
    read = "from app import gunicorn_conf as g; print(g.accesslog)"
    done = subprocess.run(
        [sys.executable, "-c", read], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == expected


def test_idle_connections_outlive_the_routers_90_second_timeout() -> None:
    """Heroku's router keeps idle connections 90 s; gunicorn must not close them first."""
    # In a process of its own: the config sets up gunicorn's environment when imported.
    read = "from app import gunicorn_conf as g; print(g.keepalive, g.timeout)"
    done = subprocess.run(
        [sys.executable, "-c", read], cwd=ROOT, capture_output=True, text=True, check=True
    )
    keepalive, timeout = map(int, done.stdout.split())
    assert keepalive > 90
    assert timeout < 30  # and a stuck request still ends before the router's 30 s
