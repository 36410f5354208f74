"""`serve` (gunicorn, and the embedded PostgreSQL when no database is configured) and `migrate`."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from types import FrameType

import click

from app.cli.group import database_url, main
from app.config import Settings, listen_address
from app.store import migrations


@main.command()
def migrate() -> None:
    """Apply the SQL migrations that have not been applied yet (DATABASE_URL, or DATA_DIR's)."""
    url = database_url(Settings.from_env())
    applied = migrations.migrate(url)
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("database is up to date")


@main.command()
@click.option("--port", type=int, help="Port to listen on (default: $PORT or 8000).")
@click.option("--workers", type=int, help="Worker processes (default: $WEB_CONCURRENCY or 2).")
def serve(port: int | None, workers: int | None) -> None:
    """Apply migrations and serve with gunicorn (embedded PostgreSQL if DATABASE_URL is unset).

    Reads every setting (docs/operating.md: Configuration); PORT, HOST, WEB_CONCURRENCY
    and the GUNICORN_* ones here, DATABASE_URL or DATA_DIR for the database.
    Ctrl-C (or SIGTERM) stops it, and the embedded PostgreSQL with it.
    """
    settings = Settings.from_env()
    settings.refuse_to_serve_open()
    env = dict(os.environ)
    if port is not None:
        env["PORT"] = str(port)
    if workers is not None:
        env["WEB_CONCURRENCY"] = str(workers)
    _refuse_a_taken_port(*listen_address(env))
    url = database_url(settings)
    migrations.migrate(url)
    env["DATABASE_URL"] = url
    if not settings.database_url:
        # Local: open, as the quick start promises (Settings.deployed).
        env["EMBEDDED_DATABASE"] = "true"
        click.echo(
            "open for local use: callbacks are not authenticated and the read API needs no"
            " token; a deployment (DATABASE_URL set) is closed until you open it"
            " (docs/security.md)"
        )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:app.gunicorn_conf",
        # The package's own factory, not the checkout's wsgi.py (the
        # Procfile's): an installed wheel has no wsgi.py, and runs anywhere.
        "app:create_app()",
    ]
    if settings.database_url:
        # Nothing to look after: gunicorn takes this process over.
        os.execvpe(sys.executable, command, env)
    # The embedded server lives as long as this process, so gunicorn runs as a
    # child and this process passes signals on and waits for it.
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    sys.exit(child.wait())


def _refuse_a_taken_port(host: str, raw_port: str) -> None:
    """Say at once that the address gunicorn will bind (config.listen_address) cannot be had
    (another `serve` has it, say), before starting a database: gunicorn would try for five
    seconds and then say only that it cannot connect."""
    try:
        port = int(raw_port)
    except ValueError:
        raise click.ClickException(f"PORT={raw_port!r} is not a port number") from None
    host = host.strip("[]")  # gunicorn's [::1]
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"port {port} is in use on {host} (another `dispatch-ledger serve`?): stop"
                    " that server, or choose another port with --port or PORT"
                ) from None
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another port"
                " with --port or PORT, or another HOST"
            ) from None
