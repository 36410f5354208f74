"""Migrations: from empty, once each, recorded, safe when two runners race."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.store.migrations import MIGRATIONS_DIR, MigrationError, discover, migrate
from tests.conftest import fresh_database, query


def test_migrations_apply_from_empty_once(server_url: str) -> None:
    url = fresh_database(server_url, "dl_migrate")
    on_disk = discover()
    applied = migrate(url)
    assert [m.version for m in applied] == [m.version for m in on_disk]
    assert migrate(url) == []
    recorded = query(url, "SELECT version, checksum FROM schema_migration ORDER BY version")
    assert recorded == [(m.version, m.checksum) for m in on_disk]
    tables = {
        name
        for (name,) in query(
            url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert {"raw_callback", "rejected_callback", "dispatch", "message", "discrepancy"} <= tables


def test_racing_runners_apply_each_migration_once(server_url: str) -> None:
    url = fresh_database(server_url, "dl_race")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrate(url), range(4)))
    applied = [m.version for result in results for m in result]
    assert sorted(applied) == [m.version for m in discover()]
    assert query(url, "SELECT count(*) FROM schema_migration") == [(len(discover()),)]


def test_an_edited_migration_is_refused(server_url: str, tmp_path: Path) -> None:
    url = fresh_database(server_url, "dl_edited")
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    migrate(url, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an afterthought\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(url, folder)


def test_a_failing_migration_leaves_nothing_behind(server_url: str, tmp_path: Path) -> None:
    url = fresh_database(server_url, "dl_failing")
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    n = len(discover(folder)) + 1
    (folder / f"{n:04d}_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n"
    )
    with pytest.raises(Exception, match="no_such_table"):
        migrate(url, folder)
    assert query(url, "SELECT to_regclass('half_done') IS NULL") == [(True,)]
    assert query(url, "SELECT max(version) FROM schema_migration") == [(n - 1,)]


def test_a_migration_can_ask_for_a_table_to_be_vacuumed_after_it(
    server_url: str, tmp_path: Path
) -> None:
    """VACUUM cannot run in a migration's transaction: `migrate` runs it once that commits,
    so that an index-only scan works at once (it needs the visibility map VACUUM sets)."""
    url = fresh_database(server_url, "dl_vacuum_after")
    (tmp_path / "0001_filled.sql").write_text(
        "CREATE TABLE filled (id int PRIMARY KEY);\n"
        "INSERT INTO filled SELECT generate_series(1, 5000);\n"
        "-- vacuum after: filled\n"
    )
    (tmp_path / "0002_left.sql").write_text(
        "CREATE TABLE left_alone (id int PRIMARY KEY);\n"
        "INSERT INTO left_alone SELECT generate_series(1, 5000);\n"
    )
    migrate(url, tmp_path)
    visible = (
        "SELECT relname, relpages > 0, relallvisible = relpages AND relpages > 0 FROM pg_class"
    )
    visible += " WHERE relname IN ('filled', 'left_alone') ORDER BY relname"
    # pg_class's counts are set by VACUUM (and ANALYZE) itself, at once.
    assert query(url, visible) == [("filled", True, True), ("left_alone", False, False)]


@pytest.mark.parametrize("names", [["0001_a.sql", "0003_c.sql"], ["0001_a.sql", "1_b.sql"]])
def test_misnumbered_migrations_are_refused(tmp_path: Path, names: list[str]) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError):
        discover(tmp_path)


def test_no_migration_files_is_an_error_not_up_to_date(server_url: str, tmp_path: Path) -> None:
    # An install without its SQL files once said "database is up to date" and did nothing.
    url = fresh_database(server_url)
    with pytest.raises(MigrationError, match="no migration files"):
        migrate(url, tmp_path)
    assert query(url, "SELECT to_regclass('schema_migration')") == [(None,)]
