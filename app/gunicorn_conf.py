"""gunicorn settings for `web:` (Procfile) and `dispatch-ledger serve`; each one says why."""

from __future__ import annotations

import logging
import os
import tempfile

from app.config import Settings, listen_address
from app.pipeline.applier_process import ApplierBeside, forget_metrics

# The service's settings, read (and checked) once: a bad one stops gunicorn
# here, with its one line ("Error: ..."), and so does a deployment that would
# take anyone's callbacks (Settings.refuse_to_serve_open).
_settings = Settings.from_env()
_settings.refuse_to_serve_open()

bind = "{}:{}".format(*listen_address(os.environ))

# Processes: the platform's sizing hint, else two (one per core here).
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))

# gevent: each connection is a greenlet, not a thread. A client that trickles
# its headers or body (slowloris, or a bad network) then costs a few KB of
# memory, not one of a handful of threads: with threads, eight such clients
# stopped the service. psycopg 3 cooperates with gevent by itself (3.1.14+),
# so a request waiting on PostgreSQL lets the others run. Connections to the
# database are still at most DB_POOL_MAX_SIZE per process.
#
# Each worker holds at most worker_connections; gevent's own worker then
# stops accepting, and 2,000 idle or half-sent connections left every
# callback unanswered. This one (app/web_worker.py) gives a request's head and
# body GUNICORN_READ_TIMEOUT (10 s: Vonage and the router send a request
# whole, in milliseconds) and, when a worker holds nine in ten of its
# connections, closes the one that has waited longest for a request or its
# body to make room for each new one.
worker_class = "app.web_worker.SheddingGeventWorker"
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))

# A request must finish well under the router's 30 s limit; a worker stuck
# longer than this is restarted.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "25"))
graceful_timeout = 20
# Longer than the Heroku router's 90 s idle timeout, as Heroku's own Python
# template sets it: a connection the router still thinks open must not be
# closed under it (the next request on it would fail). An idle connection
# costs a greenlet, not a worker.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "100"))

# The pool is opened in each worker after the fork, never in the master.
preload_app = False

# Logs go to stdout/stderr, where the platform collects them. No line per
# request unless ACCESS_LOG is set: the platform's router logs every request
# already (method, path, status, time, request id), the service logs every
# refusal and failure itself, and gunicorn's access log cost 0.17-0.27 ms of
# CPU a callback on the benchmark machine, a sixth of a request (BENCHMARKS.md).
accesslog = "-" if _settings.access_log else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")

# gunicorn 27 opens a control socket at one fixed path under $HOME; two
# servers on one machine would contend for it, and nothing here uses it.
control_socket_disable = True

# Prometheus metrics from every worker are kept in one folder, so that any
# worker can answer a scrape of /metrics for all of them (see app/metrics.py).
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dispatch-ledger-metrics-")


# The applier: one process beside the workers, at a lower CPU priority, so
# that under a burst the requests get the cores and the applier catches up
# after (app/pipeline/applier_process.py). Started once the master is ready, before it
# forks the workers, which then leave applying to it.
_applier: ApplierBeside | None = None


def when_ready(server: object) -> None:
    global _applier
    if _settings.apply_in_web:
        _applier = ApplierBeside.for_web(
            _settings.apply_niceness,
            _settings.apply_poll_seconds,
            logging.getLogger("gunicorn.error"),
        )
        _applier.start()


def on_exit(server: object) -> None:
    """Stop the applier; remove the metrics folder this server made for itself."""
    if _applier is not None:
        _applier.stop()
    if _OWN_METRICS_DIR:
        import shutil

        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server: object, worker: object) -> None:
    """A worker's gauges stop counting when it exits."""
    forget_metrics(worker.pid)  # type: ignore[attr-defined]
