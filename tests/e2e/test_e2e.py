"""`dispatch-ledger serve` for real: embedded PostgreSQL, gunicorn, HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import random
import signal
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import psycopg
import pytest

from tests import payloads
from tests.servers import MAX_LAG, Server, serving

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("serve")) as srv:
        yield srv


def test_samples_go_in_over_http_and_come_out_of_the_read_api(server: Server) -> None:
    report = payloads.fixture("final_report_sample.json")
    status = payloads.fixture("message_status_sample.json")
    assert server.post_json("/webhooks/final-report", report)[0] == 200
    assert server.post_json("/webhooks/message-status", status)[0] == 200
    code, _, duplicate = server.post_json("/webhooks/message-status", status)
    assert (code, duplicate["status"]) == (200, "duplicate")
    code, _, workflow = server.request(
        "GET", "/workflows/aaaaaaaa-bbbb-cccc-dddd-0123456789ab?wait=10"
    )
    assert code == 200 and workflow["pending_callbacks"] == 0
    assert (workflow["status"], workflow["usage"], workflow["reported_usage"]) == (
        "completed",
        {"EUR": "0.0333"},
        {"EUR": "0.02"},
    )


def _post_chunked(server: Server, path: str, chunks: Iterable[bytes]) -> tuple[int, Any]:
    """POST a JSON body in chunks, without a Content-Length; the status and answer."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        conn.request("POST", path, body=chunks, headers=headers, encode_chunked=True)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_chunked_callback_is_taken(server: Server) -> None:
    body = json.dumps(payloads.status("m-chunked", "delivered", "2020-01-01T15:00:00Z"))
    code, answer = _post_chunked(
        server, "/webhooks/status", [body[:20].encode(), body[20:].encode()]
    )
    assert (code, answer["status"]) == (200, "accepted")


def test_a_chunked_body_over_the_limit_is_refused(server: Server) -> None:
    chunks = (b"x" * 65536 for _ in range(8))  # 512 KiB
    code, answer = _post_chunked(server, "/webhooks/message-status", chunks)
    assert (code, answer["code"]) == (413, 413)
    with psycopg.connect(database_url(server)) as db:
        kept = db.execute(
            "SELECT body IS NULL, body_size FROM rejected_callback WHERE reason = 'too_large'"
        ).fetchall()
    # Kept without its body, and known to be over the limit (256 KiB).
    assert len(kept) == 1 and kept[0][0] and kept[0][1] > 256 * 1024


def database_url(server: Server) -> str:
    """The serving database's socket, read without joining the embedded server."""
    lines = (server.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/dispatch_ledger?host={lines[4]}&port={lines[3]}"


def master(server: Server) -> psutil.Process:
    [found] = psutil.Process(server.process.pid).children()
    return found


def _is_applier(process: psutil.Process) -> bool:
    try:
        command = process.cmdline()
    except psutil.Error:  # gone, or a zombie until the master reaps it
        return False
    return "app.cli" in command and "apply" in command


def workers(server: Server) -> list[psutil.Process]:
    return [p for p in master(server).children() if not _is_applier(p)]


def applier(server: Server) -> psutil.Process:
    """The applier the master runs beside its workers (exactly one)."""
    [found] = [p for p in master(server).children() if _is_applier(p)]
    return found


def test_one_applier_runs_beside_the_workers_at_the_lowest_cpu_priority(server: Server) -> None:
    assert len(workers(server)) == 2
    assert [w.nice() for w in workers(server)] == [0, 0]
    assert applier(server).nice() == 19
    code, _, ready = server.request("GET", "/readyz")
    assert (code, ready["applier"]["in_process"]) == (200, "beside")
    # While the applier is stopped, the workers leave a capture waiting until
    # it is APPLY_MAX_LAG_SECONDS old; then they apply it themselves.
    status = payloads.status("beside-m", "submitted", "2020-01-01T14:00:00Z", dispatch_uuid="d-b")
    applier(server).suspend()
    try:
        assert server.post_json("/webhooks/message-status", status)[0] == 200
        captured = time.monotonic()
        code, _, error = server.request("GET", "/messages/beside-m?wait=1")
        assert code == 404 and "1 callbacks naming it are captured and not" in error["message"]
        code, _, message = server.request("GET", "/messages/beside-m?wait=10")
        assert (code, message["pending_callbacks"], message["status"]) == (200, 0, "submitted")
        assert time.monotonic() - captured >= MAX_LAG - 0.5  # (measured from the answer)
    finally:
        applier(server).resume()
    # And with the applier running again, it applies a capture, well before the bound.
    status = payloads.status("beside-n", "submitted", "2020-01-01T14:00:00Z", dispatch_uuid="d-b")
    assert server.post_json("/webhooks/message-status", status)[0] == 200
    captured = time.monotonic()
    code, _, message = server.request("GET", "/messages/beside-n?wait=10")
    assert (code, message["pending_callbacks"]) == (200, 0)
    assert time.monotonic() - captured < MAX_LAG


def test_each_database_session_says_which_process_it_serves(server: Server) -> None:
    # After a callback is taken and applied, the workers (the one that took it, at
    # least) and the applier beside them have sessions open, named for an operator.
    status = payloads.status("named-m", "submitted", "2020-01-01T14:00:00Z", dispatch_uuid="d-n")
    assert server.post_json("/webhooks/message-status", status)[0] == 200
    assert server.request("GET", "/messages/named-m?wait=10")[2]["pending_callbacks"] == 0
    with psycopg.connect(database_url(server), application_name="test") as conn:
        names = {
            name
            for (name,) in conn.execute(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        }
    # The deliverer beside the applier has a pool of its own.
    assert names == {"dispatch-ledger web", "dispatch-ledger apply", "dispatch-ledger deliver"}


def metric(server: Server, name: str, having: str = "") -> float:
    """A metric's value summed over its series (those whose labels include `having`),
    as whichever worker answers /metrics gives it."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in server.metrics().splitlines()
        if line.startswith((f"{name} ", f"{name}{{")) and having in line
    )


def test_what_is_read_at_each_scrape_comes_once_and_fresh(server: Server) -> None:
    """The database's figures are read at each scrape: never kept in the workers'
    multiprocess files, whence later scrapes gave them again per pid, stale."""
    per_scrape = (
        "dispatch_ledger_callbacks_waiting",
        "dispatch_ledger_workflows_overdue",
        "dispatch_ledger_partition_weeks_ahead",
        "dispatch_ledger_analytics_stale_days",
    )
    for _ in range(6):  # enough scrapes for each worker to answer some
        lines = [line for line in server.metrics().splitlines() if line.startswith(per_scrape)]
        assert lines and not [line for line in lines if "pid=" in line]
        assert len([line for line in lines if line.startswith(per_scrape[0])]) == 1


def test_an_applier_that_dies_is_started_again(server: Server) -> None:
    first = applier(server)
    starts = metric(server, "dispatch_ledger_applier_starts_total")
    assert starts >= 1  # this one, at least
    first.kill()
    deadline = time.monotonic() + 30
    while True:
        try:
            again = applier(server)
            if again.pid != first.pid:
                break
        except ValueError:  # none for now: the master waits a second first
            pass
        assert time.monotonic() < deadline, "no applier was started again"
        time.sleep(0.1)
    assert again.nice() == 19
    status = payloads.status("again-m", "submitted", "2020-01-01T14:00:00Z", dispatch_uuid="d-a")
    assert server.post_json("/webhooks/message-status", status)[0] == 200
    code, _, message = server.request("GET", "/messages/again-m?wait=10")
    assert (code, message["pending_callbacks"], message["status"]) == (200, 0, "submitted")
    # Counted once it is running, for DispatchLedgerApplierRestarting (deploy/alerts.yml).
    deadline = time.monotonic() + 30
    while metric(server, "dispatch_ledger_applier_starts_total") != starts + 1:
        assert time.monotonic() < deadline, "the start was not counted"
        time.sleep(0.1)


def test_an_applier_killed_mid_transaction_leaves_no_partial_state(server: Server) -> None:
    url = database_url(server)
    submitted = payloads.status("crash-m", "submitted", "2020-01-01T14:00:00Z", dispatch_uuid="d-x")
    delivered = payloads.status("crash-m", "delivered", "2020-01-01T14:00:05Z", dispatch_uuid="d-x")
    assert server.post_json("/webhooks/message-status", submitted)[0] == 200
    assert server.request("GET", "/messages/crash-m?wait=10")[2]["status"] == "submitted"

    with psycopg.connect(url) as blocker:
        # Hold the message's row: the callback is captured and answered, and
        # the applier waits for this lock in the middle of its transaction.
        blocker.execute("SELECT 1 FROM message WHERE message_uuid = 'crash-m' FOR UPDATE")
        code, _, receipt = server.post_json("/webhooks/message-status", delivered)
        assert (code, receipt["status"]) == (200, "accepted")
        deadline = time.monotonic() + 10
        while not _waiting_on_lock(url):
            assert time.monotonic() < deadline, "the applier never reached the lock"
            time.sleep(0.05)
        applier(server).kill()
        with psycopg.connect(url) as conn:
            # The killed applier's transaction never committed: the callback
            # is captured and still waiting, the message as it was.
            assert conn.execute(
                "SELECT count(*) FROM raw_callback r JOIN apply_queue q"
                " ON q.raw_callback_id = r.id WHERE r.message_uuid = 'crash-m'"
            ).fetchone() == (1,)
            assert conn.execute(
                "SELECT status, delivered_at FROM message WHERE message_uuid = 'crash-m'"
            ).fetchone() == ("submitted", None)

    # The master starts another applier, which applies what waits.
    deadline = time.monotonic() + 30
    while True:
        try:
            code, _, message = server.request("GET", "/messages/crash-m?wait=10")
            if message["pending_callbacks"] == 0:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the waiting callback was never applied"
        time.sleep(0.2)
    assert (message["status"], sorted(message["statuses"])) == (
        "delivered",
        ["delivered", "submitted"],
    )


def _waiting_on_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone()
        return row is not None and row[0] > 0


def test_shuffled_concurrent_duplicates_end_in_the_state_of_one_clean_delivery(
    server: Server,
) -> None:
    def deliveries(dispatch_uuid: str) -> list[tuple[str, dict[str, Any]]]:
        text = json.dumps(payloads.three_message_workflow("d-1"))
        renamed = text.replace("d-1", dispatch_uuid).replace('"m-', f'"{dispatch_uuid}-m-')
        return [(kind, payload) for kind, payload in json.loads(renamed)]

    def document(dispatch_uuid: str) -> str:
        code, _, body = server.request("GET", f"/workflows/{dispatch_uuid}?wait=10")
        assert code == 200 and body["pending_callbacks"] == 0
        return json.dumps(body).replace(dispatch_uuid, "D")

    for kind, payload in deliveries("clean"):
        assert server.post_json(f"/webhooks/{kind}", payload)[0] == 200
    expected = document("clean")

    rng = random.Random(11)
    names = [f"load-{i}" for i in range(12)]
    work = [item for name in names for item in deliveries(name) * 4]  # each sent 4 times
    rng.shuffle(work)

    def send(item: tuple[str, dict[str, Any]]) -> int:
        return server.post_json(f"/webhooks/{item[0]}", item[1])[0]

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, work))
    assert codes == [200] * len(work)
    for name in names:
        assert document(name) == expected
    with psycopg.connect(database_url(server)) as conn:
        row = conn.execute(
            "SELECT count(*), sum(deliveries) FROM raw_callback WHERE dispatch_uuid LIKE 'load-%'"
        ).fetchone()
    assert row == (12 * 7, 12 * 7 * 4)


def test_metrics_add_up_across_gunicorn_workers(server: Server) -> None:
    accepted = metric(server, "dispatch_ledger_callbacks_total", 'outcome="accepted"')
    # Earlier tests in this module had callbacks accepted by both workers;
    # whichever worker answers, the total counts them all.
    assert accepted >= 12 * 7 + 3


def test_sigterm_stops_gunicorn_and_the_embedded_database(server: Server) -> None:
    pgdata = str(server.data_dir / "pgdata")
    assert any(pgdata in " ".join(p.info["cmdline"] or []) for p in _postgres())
    beside = applier(server)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    assert not any(pgdata in " ".join(p.info["cmdline"] or []) for p in _postgres())
    assert not beside.is_running()


def _postgres() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "postgres"]
