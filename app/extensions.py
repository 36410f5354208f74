"""The per-application objects (settings, database) that views and commands use."""

from __future__ import annotations

from flask import Flask, current_app

from app.config import Settings
from app.db import Database

_SETTINGS = "dispatch_ledger.settings"
_DB = "dispatch_ledger.db"


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


def get_settings() -> Settings:
    settings: Settings = current_app.extensions[_SETTINGS]
    return settings


def get_db(app: Flask | None = None) -> Database:
    db: Database = (app or current_app).extensions[_DB]
    return db
