"""The per-application objects (settings, database) that views and commands use."""

from __future__ import annotations

from flask import Flask, current_app

from app.auth import Credentials
from app.config import Settings
from app.db import Database

_SETTINGS = "dispatch_ledger.settings"
_DB = "dispatch_ledger.db"
_CREDENTIALS = "dispatch_ledger.credentials"


class NotConfigured(RuntimeError):
    """The service has no database to use."""


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions[_SETTINGS] = settings
    if settings.database_url is None:
        raise NotConfigured(
            "DATABASE_URL is not set. `dispatch-ledger serve` starts an embedded "
            "PostgreSQL and sets it; otherwise point it at your database."
        )
    app.extensions[_DB] = Database(settings.database_url, settings)
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


def get_credentials() -> Credentials:
    credentials: Credentials = current_app.extensions[_CREDENTIALS]
    return credentials


def get_settings() -> Settings:
    settings: Settings = current_app.extensions[_SETTINGS]
    return settings


def get_db(app: Flask | None = None) -> Database:
    db: Database = (app or current_app).extensions[_DB]
    return db
