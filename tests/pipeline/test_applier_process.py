"""The applier beside gunicorn's workers: its wake pipe, its priority, its restarts.

The whole of it under a real gunicorn (one applier, nice 19, started again
when killed, stopped with the server) is in test_e2e.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import psycopg
import pytest

from app import create_app
from app.extensions import get_db
from app.pipeline import applier_process
from app.pipeline.applier_process import BESIDE, ApplierBeside, Wakes, runs_beside, waker
from tests import payloads
from tests.conftest import query
from tests.servers import ROOT


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def test_a_wake_is_seen_once_however_many_bytes_came(pipe: tuple[int, int]) -> None:
    wakes = Wakes(pipe[0])
    assert wakes.wait(0.01) is False
    os.write(pipe[1], b"\x01" * 5000)
    assert wakes.wait(5) is True
    assert wakes.wait(0.01) is False  # all 5000 answered by one turn


def test_without_a_pipe_the_applier_only_polls() -> None:
    started = time.monotonic()
    assert Wakes(None).wait(0.05) is False
    assert time.monotonic() - started >= 0.05


def test_a_worker_wakes_the_applier_its_own_master_runs(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BESIDE, f"{os.getppid()} {pipe[1]}")
    assert runs_beside()
    wake = waker()
    assert wake is not None
    wake()
    assert Wakes(pipe[0]).wait(5) is True


def test_a_setting_inherited_from_another_master_is_ignored(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process started by something else than that master (a command run
    # from a dyno's shell, say) runs its own applier and writes nowhere.
    monkeypatch.setenv(BESIDE, f"{os.getppid() + 1} {pipe[1]}")
    assert not runs_beside()
    assert waker() is None
    assert Wakes(pipe[0]).wait(0.01) is False


def test_a_full_pipe_does_not_hold_up_a_capture(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BESIDE, f"{os.getppid()} {pipe[1]}")
    with pytest.raises(BlockingIOError):
        while True:  # fill it: the applier is far behind
            os.write(pipe[1], b"\x01" * 4096)
    wake = waker()
    assert wake is not None
    wake()  # neither blocks nor raises
    assert Wakes(pipe[0]).wait(1) is True


def test_niceness_is_only_ever_lowered() -> None:
    # In a process of its own: a process cannot raise its priority back.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from app.pipeline.applier_process import set_niceness;"
            " set_niceness(7); set_niceness(3); print(os.getpriority(os.PRIO_PROCESS, 0))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "7"


@pytest.fixture
def beside(monkeypatch: pytest.MonkeyPatch) -> Iterator[ApplierBeside]:
    monkeypatch.setenv(BESIDE, "")  # start() sets it: unset again after
    monkeypatch.setattr(applier_process, "FIRST_RESTART_SECONDS", 0.1)
    # A stand-in for `dispatch-ledger apply`: it runs until stopped.
    stand_in = ApplierBeside([sys.executable, "-c", "import time; time.sleep(600)"])
    yield stand_in
    stand_in.stop()


def test_an_applier_that_exits_is_started_again_and_stop_ends_it(
    beside: ApplierBeside,
) -> None:
    beside.start()
    first = beside.pid
    assert first is not None
    assert os.environ[BESIDE] == f"{os.getpid()} {beside.wake_fd}"
    psutil.Process(first).kill()
    deadline = time.monotonic() + 10
    while beside.pid == first:
        assert time.monotonic() < deadline, "not started again"
        time.sleep(0.02)
    again = beside.pid
    assert again is not None
    running = psutil.Process(again)
    beside.stop()
    assert not running.is_running()
    time.sleep(0.3)  # longer than the restart delay: no other was started
    assert beside.pid == again


def test_the_applier_is_handed_the_read_end_of_the_wake_pipe(beside: ApplierBeside) -> None:
    beside.start()
    assert beside.pid is not None
    deadline = time.monotonic() + 10
    while "--wake-fd" not in (command := psutil.Process(beside.pid).cmdline()):
        assert time.monotonic() < deadline, command  # forked, not yet executed
        time.sleep(0.01)
    fd = int(command[command.index("--wake-fd") + 1])
    # The same pipe as the one the workers are told to write to.
    ours = os.fstat(int(os.environ[BESIDE].split()[1])).st_ino
    assert os.readlink(f"/proc/{beside.pid}/fd/{fd}") == f"pipe:[{ours}]"
    # ... and not its write end: a worker's wake must reach no one else. (Only
    # the pipe's fds are looked at: by now the applier may have opened others.)
    ends = [
        _access_mode(beside.pid, int(n))
        for n in os.listdir(f"/proc/{beside.pid}/fd")
        if _readlink(f"/proc/{beside.pid}/fd/{n}") == f"pipe:[{ours}]"
    ]
    assert ends == [os.O_RDONLY]


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except FileNotFoundError:  # closed since it was listed
        return None


def _access_mode(pid: int, fd: int) -> int:
    """O_RDONLY, O_WRONLY or O_RDWR: how process `pid` opened its `fd`."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as info:
        flags = next(line for line in info if line.startswith("flags:"))
    return int(flags.split()[1], 8) & os.O_ACCMODE


def test_an_applier_whose_web_server_is_gone_stops(clean_db: str) -> None:
    # `--parent` names the master that started it; once its parent is
    # another (the master died and it was adopted), it stops.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "apply", "--parent", str(os.getpid() + 100_000)],
        cwd=ROOT,
        env={**env, "DATABASE_URL": clean_db},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "the web server that started this applier is gone" in done.stderr


def test_gunicorn_starts_no_applier_when_apply_in_web_is_off() -> None:
    # In a process of its own: the config sets up gunicorn's environment when imported.
    read = (
        "import os; os.environ['APPLY_IN_WEB'] = 'false';"
        " from app import gunicorn_conf as g; g.when_ready(None);"
        " print(g._applier, os.environ.get('DISPATCH_LEDGER_APPLIER_BESIDE'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", read], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["None", "None"]


def test_a_worker_beside_an_applier_wakes_it_and_applies_only_what_it_left_too_long(
    clean_db: str, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a gunicorn worker: its master runs the applier beside it.
    monkeypatch.setenv(BESIDE, f"{os.getppid()} {pipe[1]}")
    application = create_app({"database_url": clean_db, "apply_poll_seconds": 0.05})
    try:
        status = payloads.status("w-m", "submitted", "2020-01-01T14:00:00Z", dispatch_uuid="d-w")
        answer = application.test_client().post("/webhooks/message-status", json=status)
        assert answer.status_code == 200
        assert Wakes(pipe[0]).wait(5) is True
        ready = application.test_client().get("/readyz").json
        assert ready is not None and ready["applier"]["in_process"] == "beside"
        # Its own applier (looking every 0.05 s) leaves a capture 5 s old to
        # the applier beside it ...
        age(clean_db, 5)
        time.sleep(0.5)  # ten of its looks
        assert query(clean_db, "SELECT count(*) FROM apply_queue") == [(1,)]
        assert query(clean_db, "SELECT count(*) FROM message") == [(0,)]
        # ... and applies one older than APPLY_MAX_LAG_SECONDS (10 s) itself.
        age(clean_db, 11)
        deadline = time.monotonic() + 10
        while query(clean_db, "SELECT count(*) FROM message") != [(1,)]:
            assert time.monotonic() < deadline, "the worker never applied it"
            time.sleep(0.05)
    finally:
        get_db(application).close()


def age(url: str, seconds: float) -> None:
    """Make every waiting callback `seconds` old."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE apply_queue SET received_at = now() - make_interval(secs => %s)", (seconds,)
        )
