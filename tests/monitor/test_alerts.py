"""The generated alert rules: up to date, only declared metric names, runbooks, promtool check and test."""

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.alerts import RULES_FILE, AlertThresholds, main, render, rule_groups
from monitor.metrics import declared_names

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "monitor" / "rules"
TESTS_FILE = RULES_DIR / "lorafleet-alerts.test.yml"
DOCS = ROOT / "docs" / "monitoring.md"
NAME_RE = re.compile(r"lorafleet_[a-z_]+")
PROMTOOL = shutil.which("promtool")


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def test_rules_file_is_up_to_date_with_the_generator(tmp_path: Path) -> None:
    assert RULES_FILE == RULES_DIR / "lorafleet-alerts.yml"
    assert RULES_FILE.read_text() == render(), "run `python -m monitor.alerts` and commit the result"
    out = tmp_path / "rules.yml"
    assert main(["--output", str(out)]) == 0
    assert out.read_text() == RULES_FILE.read_text()
    assert yaml.safe_load(out.read_text())["groups"] == rule_groups()


def test_expressions_use_only_declared_metric_names() -> None:
    declared = declared_names()
    for rule in rules():
        used = set(NAME_RE.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= declared, (rule["alert"], used - declared)


def _doc_anchors() -> set[str]:
    """GitHub's anchors of the markdown headings: lowercase, punctuation dropped, spaces to '-'."""
    anchors = set()
    for line in DOCS.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_is_complete_and_has_a_runbook_section() -> None:
    anchors = _doc_anchors()
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == "docs/monitoring.md"
        assert anchor in anchors, f"docs/monitoring.md has no section for {rule['alert']}"


def test_the_alerts_cover_what_the_gateway_can_get_wrong() -> None:
    used = {name for rule in rules() for name in NAME_RE.findall(rule["expr"])}
    for metric in (
        "lorafleet_router_errors_total",
        "lorafleet_router_request_duration_seconds_bucket",
        "lorafleet_response_token_entropy_nats_sum",
        "lorafleet_drift_psi",
        "lorafleet_live_accuracy_upper_ratio",
        "lorafleet_live_accuracy_ratio",
        "lorafleet_rollout_rollbacks_total",
        "lorafleet_engine_up",
    ):
        assert metric in used


def test_thresholds_and_runbook_base_reach_the_rules() -> None:
    text = render(AlertThresholds(max_drift_psi=0.25, runbook_base_url="https://docs.example/monitoring"))
    assert "(lorafleet_drift_psi) >= 0.25" in text
    assert "https://docs.example/monitoring#lorafleetdriftdetected" in text


def test_every_alert_has_cases_that_fire_and_cases_that_do_not() -> None:
    cases = yaml.safe_load(TESTS_FILE.read_text())
    assert cases["rule_files"] == [RULES_FILE.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in cases["tests"]:
        for check in group["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert fires == names
    assert quiet == names


@pytest.fixture
def promtool(
    require_tool: Callable[[str | None, str], str],
) -> Callable[..., subprocess.CompletedProcess[str]]:
    path = require_tool(
        PROMTOOL, "promtool is not installed (Debian package `prometheus`, see scripts/setup.sh)"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([path, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120)

    return run


def test_promtool_checks_the_rules(promtool: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    done = promtool("check", "rules", RULES_FILE.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_rule_unit_tests_pass(promtool: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    done = promtool("test", "rules", TESTS_FILE.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
