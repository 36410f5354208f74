"""dispatch-ledger generate: realistic workflows through the real intake and ingest."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

from click.testing import CliRunner

from app.cli import main
from app.emulator.generate import MIXES, generate, workflows
from app.store.db import Database
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
    # Believable: SMS has delivery receipts, never read receipts.
    assert query(
        clean_db,
        "SELECT count(*) FROM message WHERE channel IN ('sms', 'mms') AND read_at IS NOT NULL",
    ) == [(0,)]
    assert query(clean_db, "SELECT count(*) > 0 FROM message WHERE read_at IS NOT NULL") == [
        (True,)
    ]


def test_the_same_seed_makes_the_same_workflows() -> None:
    def ids(seed: int) -> list[str]:
        return [dispatch_uuid for dispatch_uuid, _, _ in workflows(5, seed, 7, NOW)]

    assert ids(9) == ids(9)
    assert ids(9) != ids(10)


def test_the_same_seed_makes_the_same_callbacks_in_every_process() -> None:
    # Each process hashes strings with its own seed; nothing generated may
    # depend on that (sets of channel names once did).
    script = (
        "import hashlib, json; from datetime import UTC, datetime;"
        "from app.emulator.generate import workflows;"
        "w = list(workflows(20, 4, 7, datetime(2026, 3, 1, tzinfo=UTC), 'long'));"
        "print(hashlib.sha256(json.dumps(w, sort_keys=True).encode()).hexdigest())"
    )

    def digest(hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        return run.stdout.strip()

    assert len({digest(seed) for seed in ("1", "2", "3", "4")}) == 1


def test_the_generate_command(clean_db: str) -> None:
    result = CliRunner().invoke(
        main, ["generate", "--dispatches", "12", "--seed", "5"], env={"DATABASE_URL": clean_db}
    )
    assert result.exit_code == 0, result.output
    assert "stored 12 workflows" in result.output
    assert query(clean_db, "SELECT count(*) FROM dispatch") == [(12,)]


def test_each_run_of_the_command_adds_workflows_of_its_own_unless_seeded(clean_db: str) -> None:
    def run(*seed: str) -> str:
        args = ["generate", "--dispatches", "5", *seed]
        result = CliRunner().invoke(main, args, env={"DATABASE_URL": clean_db})
        assert result.exit_code == 0, result.output
        return result.stdout.split()[1]  # "seed N" comes first

    seed = run()
    run()
    assert query(clean_db, "SELECT count(*) FROM dispatch") == [(10,)]
    # Nothing from one run landed on the other's workflows.
    assert query(clean_db, "SELECT count(*) FROM discrepancy WHERE kind ~ 'conflict$'") == [(0,)]
    run("--seed", seed)
    assert query(clean_db, "SELECT count(*) FROM dispatch") == [(10,)]


def test_the_mixes_the_command_offers_are_the_ones_there_are() -> None:
    option = next(p for p in main.commands["generate"].params if p.name == "mix")
    assert set(option.type.choices) == set(MIXES)  # type: ignore[attr-defined]


def test_the_long_mix_sends_about_three_messages_per_workflow(db: Database, clean_db: str) -> None:
    generate(db, 200, seed=4, days=3, now=NOW, mix="long")
    [(dispatches, messages)] = query(
        clean_db, "SELECT count(DISTINCT dispatch_uuid), count(*) FROM message"
    )
    assert dispatches == 200
    assert 2.6 <= messages / dispatches <= 3.4
    typical = workflows(200, 4, 3, NOW)
    sent = sum(len({p["message_uuid"] for _, p in d if "message_uuid" in p}) for *_, d in typical)
    assert sent / 200 < 2


def test_a_share_of_messages_api_workflows_is_stored_beside_dispatch_ones(
    db: Database, clean_db: str
) -> None:
    callbacks = generate(db, 60, seed=5, days=7, batch=9, now=NOW, messages_share=0.4)
    rows = query(
        clean_db,
        "SELECT api, count(*), count(*) FILTER (WHERE decided_by = 'definition'),"
        " count(*) FILTER (WHERE status <> 'pending') FROM dispatch GROUP BY api ORDER BY api",
    )
    (dispatch_api, dispatch_count, *_), (messages_api, messages_count, defined, decided) = rows
    assert (dispatch_api, messages_api) == ("dispatch", "messages")
    assert dispatch_count + messages_count == 60 and 10 <= messages_count <= 40
    assert defined == messages_count and decided >= messages_count // 2
    assert query(clean_db, "SELECT sum(deliveries)::int FROM raw_callback") == [(callbacks,)]
    channels = {
        c for (c,) in query(clean_db, "SELECT DISTINCT channel FROM message WHERE api = 'messages'")
    }
    assert "rcs" in channels and "viber_service_msg" not in channels
    # Without a share, only Dispatch workflows.
    assert all("workflow" in request for _, request, _ in workflows(20, 5, 7, NOW))
