"""deploy/grafana/dispatch-ledger.json: every panel's query, run by Debian's Prometheus against
a running service, parses and returns series."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import payloads
from tests.outbound.receiver import receiving
from tests.servers import ROOT, Server, free_port, serving

pytestmark = [pytest.mark.e2e, pytest.mark.promtool]
DASHBOARD = ROOT / "deploy" / "grafana" / "dispatch-ledger.json"
TOKEN = "a-grafana-test-token"


def queries() -> list[tuple[str, str]]:
    """(panel title, query) for every target, with Grafana's variables as it fills them."""
    document = json.loads(DASHBOARD.read_text())
    found = []
    for panel in document["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$api", ".*")
            found.append((panel["title"], expr))
    return found


def prometheus_answer(port: int, query: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as refused:
        return json.load(refused)


def traffic(server: Server) -> None:
    """Something for every panel: messages of each event, failovers, a decision, a refusal,
    an overdue workflow, a webhook out."""
    owner = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    request = payloads.fixture("dispatch_request_failover.json")
    code, _, _ = server.request(
        "PUT", "/workflows/d-g/definition", json.dumps(request).encode(), owner
    )
    assert code == 201
    for kind, payload in payloads.three_message_workflow("d-g"):
        assert server.post_json(f"/webhooks/{kind}", payload)[0] == 200
    code, _, _ = server.request(
        "POST", "/webhooks/status", b"{not json", {"Content-Type": "application/json"}
    )
    assert code == 400


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Prometheus")
def test_every_panel_query_returns_series(tmp_path: Path) -> None:
    with (
        receiving() as receiver,
        serving(
            tmp_path,
            API_TOKEN=TOKEN,
            ENDPOINTS_ALLOW_HTTP="true",
            ENDPOINTS_ALLOW_PRIVATE="true",
        ) as server,
    ):
        code, _, _ = server.request(
            "POST",
            "/endpoints",
            json.dumps({"url": receiver.url}).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        assert code == 201
        traffic(server)
        receiver.wait_for(1, timeout=20)
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: dispatch-ledger\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
        )
        log = (tmp_path / "prometheus.log").open("wb")
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:  # a few scrapes: rate() needs two samples in its window
                scrapes = prometheus_answer(port, "count_over_time(up[1m])") if _up(port) else {}
                result = scrapes.get("data", {}).get("result", [])
                if result and float(result[0]["value"][1]) >= 4:
                    break
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.5)
            empty, broken = [], []
            for title, query in queries():
                answer = prometheus_answer(port, query)
                if answer["status"] != "success":
                    broken.append((title, query, answer.get("error")))
                elif not answer["data"]["result"]:
                    empty.append((title, query))
            assert broken == []
            assert empty == []
        finally:
            prometheus.terminate()
            prometheus.wait(30)
            log.close()


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_the_dashboard_covers_what_operators_watch() -> None:
    titles = [title for title, _ in queries()]
    for needed in (
        "Delivery rate",
        "Failover rate",
        "Workflows decided",
        "Overdue",
        "Capture",
        "Apply lag",
        "Refused",
        "Webhooks out",
    ):
        assert any(needed in title for title in titles), needed
