"""The per-application objects (settings, database) that views and commands use."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, current_app

from app.config import Settings
from app.model.state import FinalReport, StatusEvent
from app.pipeline.applier_process import runs_beside, waker
from app.pipeline.apply import BackgroundApplier
from app.pipeline.capture import Delivery, GroupCommit, Receipt, capture
from app.receive.auth import Credentials
from app.store.db import Database

_SETTINGS = "dispatch_ledger.settings"
_DB = "dispatch_ledger.db"
_REPORTS_DB = "dispatch_ledger.reports_db"
_CREDENTIALS = "dispatch_ledger.credentials"
_APPLIER = "dispatch_ledger.applier"
_COMMITS = "dispatch_ledger.group_commit"
_ON_ACCEPTED = "dispatch_ledger.on_accepted"


class NotConfigured(RuntimeError):
    """The service has no database to use."""


def init_app(app: Flask, settings: Settings) -> None:
    # Under any WSGI server, not only the Procfile's gunicorn.
    settings.refuse_to_serve_open()
    app.extensions[_SETTINGS] = settings
    if settings.database_url is None:
        raise NotConfigured(
            "DATABASE_URL is not set. `dispatch-ledger serve` starts an embedded "
            "PostgreSQL and sets it; otherwise point it at your database."
        )
    db = app.extensions[_DB] = Database(settings.database_url, settings)
    app.extensions[_REPORTS_DB] = (
        Database(settings.dashboard_database_url, settings, "dashboard")
        if settings.dashboard_database_url
        else db
    )
    applier = None
    if settings.apply_in_web:
        # Beside gunicorn's own applier, this process only takes what that one
        # left waiting past APPLY_MAX_LAG_SECONDS (it is not told of captures).
        applier = BackgroundApplier(
            db,
            settings.max_json_depth,
            settings.apply_batch_size,
            settings.apply_poll_seconds,
            settings.apply_linger_seconds,
            settings.apply_max_delay_seconds,
            only_older_than=settings.apply_max_lag_seconds if runs_beside() else None,
            # Beside gunicorn, the applier process keeps them.
            refresh_seconds=None if runs_beside() else settings.analytics_refresh_seconds,
        )
        # Started by the process's first request, after any fork.
        app.before_request(applier.start)
    app.extensions[_APPLIER] = applier
    on_accepted = app.extensions[_ON_ACCEPTED] = _on_accepted(applier)
    if settings.capture_group_commit:
        app.extensions[_COMMITS] = GroupCommit(db, on_accepted=on_accepted)
    else:
        app.extensions[_COMMITS] = None
    app.extensions[_CREDENTIALS] = Credentials.from_settings(settings)
    if any(len(secret.encode()) < 32 for secret in app.extensions[_CREDENTIALS].secrets):
        # HS256 keys under 32 bytes are weak (RFC 7518 3.2); Vonage's are
        # chosen by the account owner, so say so instead of refusing to start.
        app.logger.warning(
            "a signature secret is shorter than 32 bytes: choose a longer one in the "
            "Vonage dashboard"
        )
    if not settings.authenticates:
        app.logger.warning(
            "!!! CALLBACKS ARE NOT AUTHENTICATED: anyone who finds the webhook URLs can post "
            "to them. Set VONAGE_SIGNATURE_SECRET (or WEBHOOK_BASIC_USER and "
            "WEBHOOK_BASIC_PASSWORD) in production. !!!"
        )
    if settings.read_tokens() is None:
        app.logger.warning(
            "the read API (/workflows, /messages, /metrics) is open to anyone%s",
            "" if settings.deployed else ": a local service, for local use only",
        )


def get_credentials(app: Flask | None = None) -> Credentials:
    credentials: Credentials = (app or current_app).extensions[_CREDENTIALS]
    return credentials


def get_settings(app: Flask | None = None) -> Settings:
    settings: Settings = (app or current_app).extensions[_SETTINGS]
    return settings


def get_db(app: Flask | None = None) -> Database:
    db: Database = (app or current_app).extensions[_DB]
    return db


def get_reports_db(app: Flask | None = None) -> Database:
    """Where the dashboard's charts read: DASHBOARD_DATABASE_URL (a standby), else the database."""
    db: Database = (app or current_app).extensions[_REPORTS_DB]
    return db


def get_applier(app: Flask | None = None) -> BackgroundApplier | None:
    """This process's background applier (beside gunicorn's: for what that one left); None
    when APPLY_IN_WEB is off."""
    applier: BackgroundApplier | None = (app or current_app).extensions[_APPLIER]
    return applier


def capture_delivery(delivery: Delivery, app: Flask | None = None) -> Receipt:
    """Store a checked delivery (sharing a commit when on), then wake the applier."""
    extensions = (app or current_app).extensions
    commits: GroupCommit | None = extensions[_COMMITS]
    if commits is not None:
        return commits.capture(delivery)  # wakes the applier itself
    receipt = capture(extensions[_DB], delivery)
    on_accepted: OnAccepted | None = extensions[_ON_ACCEPTED]
    if receipt.outcome == "accepted" and on_accepted is not None:
        on_accepted([(receipt.callback_id, delivery.callback.event)])
    return receipt


OnAccepted = Callable[[list[tuple[int, StatusEvent | FinalReport]]], None]


def _on_accepted(applier: BackgroundApplier | None) -> OnAccepted | None:
    """Who is told of new captures: the applier beside this process, else its own, if any."""
    wake = waker()
    if wake is not None:
        return lambda _captured: wake()
    if applier is not None:
        return applier.captured
    return None
