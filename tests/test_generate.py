"""dispatch-ledger generate: realistic workflows through the real intake and ingest."""

from __future__ import annotations

from datetime import UTC, datetime

from click.testing import CliRunner

from app.cli import main
from app.db import Database
from app.generate import generate, workflows
from tests.conftest import query

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_generated_workflows_are_stored_and_decided(db: Database, clean_db: str) -> None:
    callbacks = generate(db, 40, seed=3, days=7, batch=7, now=NOW)
    assert query(
        clean_db, "SELECT count(*), count(*) FILTER (WHERE decided_by = 'definition') FROM dispatch"
    ) == [(40, 40)]
    assert query(clean_db, "SELECT count(*) FROM workflow_definition") == [(40,)]
    # Every callback went through ingest: stored once, redeliveries counted.
    assert query(clean_db, "SELECT sum(deliveries)::int FROM raw_callback") == [(callbacks,)]
    statuses = {s for (s,) in query(clean_db, "SELECT DISTINCT status FROM dispatch")}
    assert "completed" in statuses and len(statuses) >= 2
    assert query(clean_db, "SELECT count(*) FROM analytics.dispatch_summary") == [(40,)]


def test_the_same_seed_makes_the_same_workflows() -> None:
    def ids(seed: int) -> list[str]:
        return [
            d[0][1]["_links"]["workflow"]["dispatch_uuid"] for _, d in workflows(5, seed, 7, NOW)
        ]

    assert ids(9) == ids(9)
    assert ids(9) != ids(10)


def test_the_generate_command(clean_db: str) -> None:
    result = CliRunner().invoke(
        main, ["generate", "--dispatches", "12", "--seed", "5"], env={"DATABASE_URL": clean_db}
    )
    assert result.exit_code == 0, result.output
    assert "stored 12 workflows" in result.output
    assert query(clean_db, "SELECT count(*) FROM dispatch") == [(12,)]
