"""Where the web dyno's applier runs: one `dispatch-ledger apply` process beside gunicorn's workers.

gunicorn's master starts it (app/gunicorn_conf.py), so `web:` alone is a
complete deployment. It runs at a lower CPU priority (APPLY_NICENESS) than the
workers: while requests keep the cores busy, the kernel gives them the CPU
and the applier falls behind; as soon as a core is free it catches up. So
that it never falls far behind, the workers apply what it left waiting past
APPLY_MAX_LAG_SECONDS themselves (app/extensions.py). With an applier inside
each worker instead (as under any other WSGI server), the requests shared the
CPU with it at full load, and the dyno acknowledged fewer callbacks a second:
BENCHMARKS.md, ninth session."""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

# Set by the master for its workers: "<master's pid> <fd>". An applier runs
# beside them, so they do not each run one of their own (app/extensions.py);
# they wake it by writing a byte to that fd, the write end of a pipe whose
# read end the applier waits on.
BESIDE = "DISPATCH_LEDGER_APPLIER_BESIDE"

# After an applier exits, the next starts this many seconds later, doubling
# up to the last while it keeps exiting within a minute.
FIRST_RESTART_SECONDS = 1.0
LAST_RESTART_SECONDS = 30.0
STOP_SECONDS = 10.0


def _wake_fd() -> int | None:
    """The fd that wakes the applier beside this worker; None unless one runs beside it."""
    master, _, fd = os.environ.get(BESIDE, "").partition(" ")
    return int(fd) if master == str(os.getppid()) and fd else None


def runs_beside() -> bool:
    """Whether this process is a worker of a master that runs the applier beside it."""
    return _wake_fd() is not None


def waker() -> Callable[[], None] | None:
    """What tells the applier beside this worker that something was captured; None unless
    one runs beside it. Looked up once (a worker's master does not change), called per commit.
    """
    fd = _wake_fd()
    if fd is None:
        return None

    def wake() -> None:
        try:
            os.write(fd, b"\x01")
        except OSError:
            pass  # the pipe is full (it has been told) or gone; it looks every poll anyway

    return wake


class Wakes:
    """What an applier waits on between turns: the pipe its web dyno's workers write to."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        if fd is not None:
            os.set_blocking(fd, False)

    def wait(self, timeout: float) -> bool:
        """Wait until woken or `timeout` s have passed; whether it was woken."""
        if self._fd is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return False
        try:
            while os.read(self._fd, 65536):
                pass  # every wake so far is answered by the next turn
        except BlockingIOError:
            pass
        return True


def set_niceness(niceness: int) -> None:
    """Lower this process's CPU priority to `niceness` (never raise it: that needs privilege)."""
    if niceness > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)


class ApplierBeside:
    """Runs `command` (the applier) as a child of this process; starts it again if it exits."""

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        logger: logging.Logger = log,
        niceness: int | None = None,
    ) -> None:
        self._command = list(command)
        self._niceness = niceness
        self._env = env
        self._log = logger
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None
        self._wakes = (-1, -1)  # the pipe's read and write ends, once started

    @classmethod
    def for_web(cls, niceness: int, poll: float, logger: logging.Logger = log) -> ApplierBeside:
        """The applier a web dyno runs: `dispatch-ledger apply` at `niceness`, ended with us."""
        command = [
            sys.executable,
            "-m",
            "app.cli",
            "apply",
            "--niceness",
            str(niceness),
            "--poll",
            str(poll),
            "--parent",
            str(os.getpid()),
        ]
        return cls(command, logger=logger, niceness=niceness)

    @property
    def wake_fd(self) -> int:
        """The write end of the wake pipe (the workers write to it); -1 until started."""
        return self._wakes[1]

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def start(self) -> None:
        """Start the applier and watch it; tell the workers forked after this to leave it be."""
        # The master keeps both ends open: a worker's write never fails for
        # want of a reader while an applier restarts.
        self._wakes = os.pipe()
        os.set_blocking(self._wakes[1], False)
        os.environ[BESIDE] = f"{os.getpid()} {self._wakes[1]}"
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="applier-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the applier: SIGTERM (a batch in flight rolls back and is applied again later)."""
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._watcher is not None:
            self._watcher.join(STOP_SECONDS)

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            read_end = self._wakes[0]
            command = [*self._command, "--wake-fd", str(read_end)]
            self._process = subprocess.Popen(command, env=self._env, pass_fds=(read_end,))
            if self._niceness is not None:
                # At once, not only once it has started Python and read its
                # settings: a burst may be under way (the command sets it too).
                try:
                    os.setpriority(os.PRIO_PROCESS, self._process.pid, self._niceness)
                except OSError:
                    pass  # gone already: the watcher starts another
            self._log.info("applier started beside the web processes (pid %d)", self._process.pid)

    def _watch(self) -> None:
        delay = FIRST_RESTART_SECONDS
        while True:
            process = self._process
            assert process is not None
            started = time.monotonic()
            # gunicorn's master reaps every child it sees exit (waitpid(-1));
            # if it gets there first, wait() finds no child: the exit status is lost.
            process.wait()
            forget_metrics(process.pid)
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 60:
                delay = FIRST_RESTART_SECONDS
            self._log.error(
                "the applier (pid %d) exited; starting another in %.0f s", process.pid, delay
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, LAST_RESTART_SECONDS)
            self._spawn()


def forget_metrics(pid: int) -> None:
    """A gone process's gauges stop counting (the applier here, workers in gunicorn_conf)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
