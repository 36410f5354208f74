"""Installable anywhere: a wheel built from the repository runs the quick start from an empty
folder, with its SQL, templates and stand-in inside it, and its data outside site-packages."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import payloads
from tests.servers import ROOT, Server, free_port

pytestmark = pytest.mark.e2e
PASSWORD = "a-dashboard-password"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    # From a copy of the checkout as it is, without what a build leaves behind:
    # setuptools reuses build/, and a module moved since would come along.
    source = tmp_path_factory.mktemp("source") / "dispatch-ledger"
    left = (".git", ".venv", "build", "dist", "*.egg-info", ".dispatch-ledger", "__pycache__")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*left, ".*_cache"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder)]
    subprocess.run([*pip_wheel, str(source)], check=True, capture_output=True)
    [built] = folder.glob("dispatch_ledger-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed. Its dependencies are this test run's own (a .pth
    line; the editable install's finder is not run from there), so nothing is downloaded."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    return folder


def test_the_wheel_carries_the_sql_the_templates_and_the_stand_in(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    on_disk = {
        f"app/sql/{path.relative_to(ROOT / 'sql')}"
        for path in (ROOT / "sql").rglob("*")
        if path.suffix in (".sql", ".md")
    }
    assert on_disk and on_disk <= names
    assert {"app/templates/timeline.html", "app/emulator/server.py"} <= names


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATA_DIR")}
    # Where platformdirs puts the user's data directory on Linux.
    env |= {"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOST": "127.0.0.1"}
    return env | {"DASHBOARD_PASSWORD": PASSWORD}


def run(venv: Path, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "dispatch-ledger"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_commands_work_from_an_empty_folder_and_keep_data_outside_the_install(
    venv: Path, empty: Path, tmp_path: Path
) -> None:
    env = environment(tmp_path)
    migrated = run(venv, empty, env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_core" in migrated.stdout
    data = tmp_path / "xdg" / "dispatch-ledger"
    assert str(data) in migrated.stdout and (data / "pgdata").is_dir()
    assert run(venv, empty, env, "migrate").stdout.strip().endswith("database is up to date")
    assert run(venv, empty, env, "emulate", "--help").returncode == 0
    assert list(empty.iterdir()) == []
    assert not list(venv.rglob(".dispatch-ledger"))


@pytest.fixture
def served(venv: Path, empty: Path, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(venv / "bin" / "dispatch-ledger"), "serve", "--port", str(port)],
        cwd=empty,
        env=environment(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(port, process, tmp_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if server.request("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "serve.log").read_text())
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def test_the_quick_start_from_the_wheel(served: Server) -> None:
    status = payloads.fixture("message_status_sample.json")
    report = payloads.fixture("final_report_sample.json")
    assert served.post_json("/webhooks/status", status)[0] == 200
    assert served.post_json("/webhooks/status", report)[0] == 200
    code, _, workflow = served.request("GET", f"/workflows/{report['dispatch_uuid']}?wait=5")
    assert code == 200 and workflow["pending_callbacks"] == 0
    assert workflow["usage"] == {"EUR": "0.0333"} and workflow["status"] == "completed"
    # The dashboard's templates came with it.
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    auth = base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
    conn.request("GET", "/dashboard", headers={"Authorization": f"Basic {auth}"})
    page = conn.getresponse()
    assert page.status == 200 and b"<html" in page.read()
    conn.close()
