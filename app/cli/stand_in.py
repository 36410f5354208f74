"""`emulate`: the local stand-in for Vonage; `generate`: realistic fake workflows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from app.cli.group import database, main, seed_or_new
from app.config import Settings


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
    seed = seed_or_new(seed)
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

    seed = seed_or_new(seed)
    settings = Settings.from_env()
    where = (
        "DATABASE_URL"
        if settings.database_url
        else f"the embedded PostgreSQL in {settings.data_dir}"
    )
    click.echo(f"seed {seed}")
    click.echo(f"writing {dispatches} fake workflows into {where}", err=True)
    with database(settings) as db, click.progressbar(length=dispatches, label="workflows") as bar:
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
