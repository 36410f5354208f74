"""Configuration and the named-query loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, Settings
from app.store.queries import QUERIES_DIR, UnknownQuery, parse, sql


def test_settings_come_from_the_environment_typed() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql:///x",
            "MAX_BODY_BYTES": "1024",
            "DATA_DIR": "/srv/dl",
            "DB_POOL_TIMEOUT": "2.5",
            "MAX_JSON_DEPTH": "",
        }
    )
    assert settings.database_url == "postgresql:///x"
    assert settings.max_body_bytes == 1024
    assert settings.data_dir == Path("/srv/dl")
    assert settings.db_pool_timeout == 2.5
    assert settings.max_json_depth == Settings().max_json_depth  # empty means default


@pytest.mark.parametrize(
    "env",
    [
        {"MAX_BODY_BYTES": "big"},
        {"MAX_BODY_BYTES": "0"},
        {"DB_POOL_MIN_SIZE": "9", "DB_POOL_MAX_SIZE": "2"},
        {"DB_POOL_TIMEOUT": "-1"},
        {"WEBHOOK_BASIC_USER": "vonage"},
        {"VONAGE_SIGNATURE_SECRET_PREVIOUS": "old-secret"},
        {"SIGNATURE_MAX_AGE_SECONDS": "0"},
        {"APPLY_NICENESS": "20"},
        {"APPLY_NICENESS": "-5"},
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert any(name in str(caught.value) for name in env)


def test_secrets_never_show_in_the_settings_repr() -> None:
    settings = Settings.from_env(
        {
            "VONAGE_SIGNATURE_SECRET": "top-secret-value",
            "WEBHOOK_BASIC_USER": "u",
            "WEBHOOK_BASIC_PASSWORD": "basic-password",
        }
    )
    assert settings.authenticates
    assert "top-secret-value" not in repr(settings)
    assert "basic-password" not in repr(settings)


def test_named_queries_parse_with_descriptions() -> None:
    text = "-- name: one\n-- Does one thing.\nSELECT 1;\n\n-- name: two\n-- Another.\nSELECT 2\n"
    assert parse(text) == {"one": "SELECT 1", "two": "SELECT 2"}


@pytest.mark.parametrize(
    "text",
    [
        "-- name: q\nSELECT 1;",  # no description
        "-- name: q\n-- Described.\n",  # no statement
        "-- name: q\n-- A.\nSELECT 1;\n-- name: q\n-- B.\nSELECT 2;",  # twice
    ],
)
def test_malformed_query_files_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


def test_every_query_file_loads_and_unknown_names_fail_loudly() -> None:
    assert list(QUERIES_DIR.glob("*.sql"))
    assert sql("insert_raw_callbacks").startswith("INSERT INTO raw_callback")
    with pytest.raises(UnknownQuery):
        sql("drop_everything")
