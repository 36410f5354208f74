"""Capture: deduplicated inserts, and commits shared by the concurrent requests of a process."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from app.config import Settings
from app.pipeline import capture
from app.pipeline.capture import Delivery, GroupCommit, Receipt
from app.spec.intake import CallbackKind, read
from app.store.db import Connection, Database
from tests import payloads
from tests.conftest import query

T = TypeVar("T")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class CountingDatabase(Database):
    """The real Database, counting its units of work (transactions or autocommit statements)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, Settings(database_url=url, db_pool_max_size=4))
        self.units = 0

    def run(self, work: Callable[[Connection], T]) -> T:
        self.units += 1
        return super().run(work)

    def run_autocommit(self, work: Callable[[Connection], T]) -> T:
        self.units += 1
        return super().run_autocommit(work)


@pytest.fixture
def counting(clean_db: str) -> Iterator[CountingDatabase]:
    db = CountingDatabase(clean_db)
    yield db
    db.close()


def _delivery(n: int) -> Delivery:
    payload = payloads.status(f"m-{n}", "delivered", "2026-01-01T10:00:00Z", dispatch_uuid="d-1")
    callback = read(CallbackKind.MESSAGE_STATUS, json.dumps(payload).encode(), 32)
    return Delivery(callback, "application/json", NOW)


def test_one_statement_stores_many_deliveries_and_counts_duplicates_among_them(
    db: Database, clean_db: str
) -> None:
    receipts = db.run(lambda conn: capture.capture_in(conn, [_delivery(n % 3) for n in range(7)]))
    assert [r.outcome for r in receipts] == ["accepted"] * 3 + ["duplicate"] * 4
    # A duplicate gets the id of the row its first delivery made.
    first = [r.callback_id for r in receipts[:3]]
    assert sorted(first) == [1, 2, 3]
    assert [r.callback_id for r in receipts[3:]] == [*first, first[0]]
    assert query(clean_db, "SELECT id, message_uuid FROM raw_callback ORDER BY id") == sorted(
        zip(first, ["m-0", "m-1", "m-2"], strict=True)
    )
    assert query(clean_db, "SELECT message_uuid, deliveries FROM raw_callback ORDER BY 1") == [
        ("m-0", 3),
        ("m-1", 2),
        ("m-2", 2),
    ]
    again = db.run_autocommit(lambda conn: capture.capture_in(conn, [_delivery(2)]))
    assert again == [Receipt("duplicate", first[2])]


def test_concurrent_captures_share_commits_and_each_gets_its_own_answer(
    counting: CountingDatabase, clean_db: str
) -> None:
    accepted: list[list[tuple[int, Any]]] = []
    commits = GroupCommit(counting, on_accepted=accepted.append)
    barrier = threading.Barrier(24)

    def send(n: int) -> Receipt:
        barrier.wait()
        return commits.capture(_delivery(n % 16))  # 16 callbacks, 8 of them twice

    with ThreadPoolExecutor(24) as pool:
        receipts = list(pool.map(send, range(48)))
    assert sorted(r.outcome for r in receipts).count("accepted") == 16
    by_id: dict[int, list[str]] = {}
    for receipt in receipts:
        by_id.setdefault(receipt.callback_id, []).append(receipt.outcome)
    assert all(outcomes.count("accepted") == 1 for outcomes in by_id.values())
    assert query(clean_db, "SELECT count(*), sum(deliveries) FROM raw_callback") == [(16, 48)]
    # Fewer statements than deliveries: requests that waited together shared one.
    assert 0 < counting.units < 48
    # The applier hears of each accepted callback once, with its event.
    handed = [callback_id for batch in accepted for callback_id, _ in batch]
    assert sorted(handed) == sorted(by_id)


def test_a_delivery_that_breaks_a_shared_commit_fails_alone(
    counting: CountingDatabase, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = capture.capture_in

    def poisoned(conn: Connection, deliveries: list[Delivery]) -> list[Receipt]:
        if any(getattr(d.callback.event, "message_uuid", "") == "m-13" for d in deliveries):
            raise RuntimeError("a bug with one callback")
        return real(conn, deliveries)

    monkeypatch.setattr(capture, "capture_in", poisoned)
    commits = GroupCommit(counting)
    barrier = threading.Barrier(16)

    def send(n: int) -> Receipt | str:
        barrier.wait()
        try:
            return commits.capture(_delivery(n))
        except RuntimeError as exc:
            return str(exc)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(16)))
    assert answers[13] == "a bug with one callback"
    assert all(
        isinstance(a, Receipt) and a.outcome == "accepted" for a in answers[:13] + answers[14:]
    )
    assert query(clean_db, "SELECT count(*) FROM raw_callback") == [(15,)]


def test_a_failing_hand_over_to_the_applier_loses_no_answer(
    counting: CountingDatabase, clean_db: str
) -> None:
    def broken(accepted: Any) -> None:
        raise RuntimeError("the applier is gone")

    commits = GroupCommit(counting, on_accepted=broken)
    # Committed and answered all the same; the committer lives on for the next.
    assert commits.capture(_delivery(1)).outcome == "accepted"
    assert commits.capture(_delivery(2)).outcome == "accepted"
    assert query(clean_db, "SELECT count(*) FROM apply_queue") == [(2,)]
