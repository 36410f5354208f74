"""The alert rules in deploy/alerts.yml: checked and unit-tested with Prometheus's own promtool,
and every metric they use is one the service exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.servers import ROOT

RULES = ROOT / "deploy" / "alerts.yml"


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    assert found, "promtool is needed: apt-get install prometheus"
    return subprocess.run([found, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.promtool
def test_the_rules_are_valid() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


@pytest.mark.promtool
def test_the_rules_fire_on_trouble_and_stay_quiet_otherwise() -> None:
    done = promtool("test", "rules", "alerts_test.yml", cwd=ROOT / "tests")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.promtool
def test_a_rule_that_would_not_fire_fails_its_test(tmp_path: Path) -> None:
    """The unit tests can fail: with the delivery threshold lowered, the firing case is missed."""
    (tmp_path / "deploy").mkdir()
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(") < 0.8", ") < 0.4")
    assert broken != RULES.read_text()
    (tmp_path / "deploy" / "alerts.yml").write_text(broken)
    shutil.copy(ROOT / "tests" / "alerts_test.yml", tmp_path / "tests")
    done = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path / "tests")
    assert done.returncode != 0
    assert "DispatchLedgerDeliveryRateLow" in done.stdout + done.stderr


def test_every_metric_the_rules_use_is_exported(client: FlaskClient) -> None:
    used = set(re.findall(r"\bdispatch_ledger_[a-z_]+", RULES.read_text()))
    assert len(used) >= 6
    exported = client.get("/metrics").get_data(as_text=True)
    declared = set(re.findall(r"^# TYPE (\S+) ", exported, re.MULTILINE))
    for name in sorted(used):
        # A counter is declared with or without its _total, by client version.
        assert {name, name.removesuffix("_total")} & declared, name
