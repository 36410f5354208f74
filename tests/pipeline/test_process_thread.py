"""The per-process background thread behind the committer and the applier."""

from __future__ import annotations

import os
import threading
import time

import pytest

from app.pipeline.process_thread import ProcessThread


def test_it_starts_once_and_again_after_its_death() -> None:
    started: list[bool] = []
    release = threading.Event()
    runs: list[str] = []

    def target() -> None:
        runs.append(threading.current_thread().name)
        release.wait(5)

    thread = ProcessThread("worker", target, on_start=started.append)
    for _ in range(5):
        thread.ensure()
    assert thread.running
    assert started == [True]  # the first start in this process
    release.set()
    while thread.running:
        threading.Event().wait(0.01)
    release.clear()
    thread.ensure()
    assert thread.running
    assert started == [True, False]  # restarted in the same process
    assert runs == ["worker", "worker"]
    release.set()


def test_a_forked_process_starts_its_own() -> None:
    started: list[bool] = []
    release = threading.Event()
    thread = ProcessThread("worker", lambda: release.wait(5), on_start=started.append)
    thread.ensure()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread did not come along
        ok = False
        try:
            ok = not thread.running
            thread.ensure()
            ok = ok and thread.running and started == [True, True]
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert started == [True]
    assert thread.running
    release.set()


def test_a_target_that_raised_is_not_running_and_starts_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The committer and the applier catch their own errors; should one escape
    # all the same, the next request must start the thread again.
    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    runs: list[int] = []

    def target() -> None:
        runs.append(1)
        raise RuntimeError("a bug")

    thread = ProcessThread("worker", target)
    thread.ensure()
    deadline = time.monotonic() + 5
    while thread.running and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert not thread.running
    thread.ensure()
    while len(runs) < 2 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert runs == [1, 1]
