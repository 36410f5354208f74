"""`prune-state`: old decided workflows go whole (state, events, raw callbacks); the rest stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from freezegun import freeze_time

from app.cli import main
from app.pipeline import rebuild
from app.store import operations
from tests import payloads
from tests.conftest import post, query

COUNTS = {
    table: f"SELECT count(*) FROM {table}"
    for table in (
        "dispatch",
        "message",
        "raw_callback",
        "discrepancy",
        "reconciliation",
        "workflow_definition",
        "workflow_event",
    )
}


def counts(url: str) -> dict[str, int]:
    return {table: query(url, statement)[0][0] for table, statement in COUNTS.items()}


def test_old_decided_workflows_go_whole_and_the_others_stay(
    client: FlaskClient, clean_db: str
) -> None:
    with freeze_time("2026-01-01T00:00:00Z"):
        for kind, payload in payloads.three_message_workflow("d-old"):
            post(client, kind, payload)
        # Old too, but never decided: stays, whatever its age.
        post(
            client,
            "message-status",
            payloads.status("p-1", "submitted", "2020-01-01T14:00:00Z", dispatch_uuid="d-pending"),
        )
        # Old, decided, but a message of it changed lately (below): stays.
        for kind, payload in payloads.three_message_workflow("d-busy", prefix="b"):
            post(client, kind, payload)
    with freeze_time("2026-03-01T00:00:00Z"):
        for kind, payload in payloads.three_message_workflow("d-new", prefix="n"):
            post(client, kind, payload)
        late = payloads.status(
            "b-1-messenger",
            "read",
            "2020-01-01T15:00:00Z",
            channel="messenger",
            dispatch_uuid="d-busy",
        )
        post(client, "message-status", late)
    before = counts(clean_db)
    its = "SELECT count(*) FROM {} WHERE dispatch_uuid = 'd-old'"
    for table in ("reconciliation", "workflow_event"):
        assert query(clean_db, its.format(table))[0][0] > 0, table
    kept = {key: client.get(f"/workflows/{key}").json for key in ("d-pending", "d-busy", "d-new")}

    done = operations.prune_state(
        clean_db, timedelta(days=31), datetime(2026, 3, 2, tzinfo=UTC), batch=1
    )
    assert done.workflows == 1 and done.raw_callbacks == 7

    after = counts(clean_db)
    assert after["dispatch"] == before["dispatch"] - 1
    assert after["message"] == before["message"] - 3
    assert after["raw_callback"] == before["raw_callback"] - 7
    assert after["workflow_event"] < before["workflow_event"]
    assert client.get("/workflows/d-old").status_code == 404
    assert client.get("/messages/m-1-messenger").status_code == 404
    # Nothing of it is left anywhere: not a row naming it, not a raw copy.
    for table, column in (
        ("raw_callback", "dispatch_uuid"),
        ("workflow_event", "dispatch_uuid"),
        ("discrepancy", "subject_id"),
        ("reconciliation", "dispatch_uuid"),
    ):
        assert query(clean_db, f"SELECT count(*) FROM {table} WHERE {column} = 'd-old'") == [(0,)]
    named = "SELECT count(*) FROM discrepancy WHERE subject_id LIKE %s"
    assert query(clean_db, named, "m-%") == [(0,)]
    for key, document in kept.items():
        assert client.get(f"/workflows/{key}").json == document, key
    # Recorded as a prune of the raw log: a rebuild would lose what it said.
    with pytest.raises(rebuild.RebuildRefused, match="pruned"):
        rebuild.rebuild(clean_db, 32)


def test_the_command_refuses_a_retention_shorter_than_vonages_latest_status(
    clean_db: str,
) -> None:
    env = {"DATABASE_URL": clean_db}
    runner = CliRunner()
    refused = runner.invoke(main, ["prune-state", "--older-than-days", "30"], env=env)
    assert refused.exit_code == 2 and "31" in refused.output
    done = runner.invoke(main, ["prune-state", "--older-than-days", "31"], env=env)
    assert done.exit_code == 0, done.output
    assert "deleted 0 decided workflows" in done.output


def test_a_prune_of_the_state_and_a_rebuild_exclude_each_other(clean_db: str) -> None:
    import psycopg

    with psycopg.connect(clean_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (operations.RAW_LOG_LOCK,))
        with pytest.raises(operations.RawLogBusy):
            operations.prune_state(clean_db, timedelta(days=31), datetime.now(UTC))


def test_each_batch_checks_its_candidates_again_and_skips_held_ones(
    client: FlaskClient, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candidates are noted once; a workflow changed since, or held by an applier, stays."""
    import psycopg

    with freeze_time("2026-01-01T00:00:00Z"):
        for key in ("d-a", "d-b", "d-c", "d-d"):
            for kind, payload in payloads.three_message_workflow(key, prefix=key):
                post(client, kind, payload)
            # A status naming the message alone (no workflow link): its raw
            # callback is found through the message.
            read = payloads.status(f"{key}-1-messenger", "read", "2020-01-01T15:00:00Z")
            post(client, "message-status", read)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    first_batch = operations._PruneRecord.deleted
    changed = []

    def and_then_an_applier_changes_d_b(self: object, conn: object, count: int) -> None:
        first_batch(self, conn, count)  # type: ignore[arg-type]
        if not changed:
            # Committed while the prune runs, after d-b was noted as a candidate.
            with psycopg.connect(clean_db, autocommit=True) as other:
                other.execute(
                    "UPDATE dispatch SET updated_at = %s WHERE dispatch_uuid = 'd-b'", (now,)
                )
            changed.append("d-b")

    monkeypatch.setattr(operations._PruneRecord, "deleted", and_then_an_applier_changes_d_b)
    with psycopg.connect(clean_db) as applier:
        # An applier holds d-c (as while applying a callback for it).
        applier.execute("SELECT FROM dispatch WHERE dispatch_uuid = 'd-c' FOR UPDATE")
        done = operations.prune_state(clean_db, timedelta(days=31), now, batch=1)
        applier.rollback()

    assert changed == ["d-b"]
    assert done.workflows == 2
    for gone in ("d-a", "d-d"):
        named = "SELECT count(*) FROM raw_callback WHERE dispatch_uuid = %s OR message_uuid LIKE %s"
        assert query(clean_db, named, gone, f"{gone}-%") == [(0,)], gone
    assert query(clean_db, named, "d-b", "d-b-%") == [(8,)]
    left = query(clean_db, "SELECT dispatch_uuid FROM dispatch ORDER BY 1")
    assert left == [("d-b",), ("d-c",)]
    # The next prune takes the held one; the changed one waits for its own cutoff.
    again = operations.prune_state(clean_db, timedelta(days=31), now)
    assert again.workflows == 1
    assert query(clean_db, "SELECT dispatch_uuid FROM dispatch") == [("d-b",)]
