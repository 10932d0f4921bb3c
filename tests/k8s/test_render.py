"""The generated Kubernetes files: up to date with their source, and their PromQL right.

The Argo AnalysisTemplate and the Flagger MetricTemplates are run for real: their queries, with the
template placeholders filled in, are evaluated by Prometheus' engine (`promtool test rules`) over
synthetic series of three versions: one failing 10% of requests (client errors aside), one without
a single error series, one with too little traffic.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from monitor.alerts import AlertThresholds, rule_groups
from monitor.dashboards.build import render as render_dashboard
from monitor.metrics import declared_names

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "render_k8s.py"
PROMTOOL = shutil.which("promtool")
NAME_RE = re.compile(r"lorafleet_[a-z_]+")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_k8s", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_committed_files_equal_the_generator_output() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr + "\nrun `python scripts/render_k8s.py` and commit the result"
    render = load_script()
    for path, text in render.files().items():
        assert path.read_text() == text, path


def test_prometheus_rule_is_the_alert_rules() -> None:
    (rule,) = docs(ROOT / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == rule_groups()
    # the same groups as the plain rules file Prometheus without the operator loads
    plain = yaml.safe_load((ROOT / "monitor" / "rules" / "lorafleet-alerts.yml").read_text())
    assert plain["groups"] == rule["spec"]["groups"]


def test_dashboard_copy_is_the_dashboard() -> None:
    copy = ROOT / "k8s" / "components" / "grafana-dashboard" / "lorafleet.json"
    assert (
        copy.read_text()
        == render_dashboard()
        == (ROOT / "monitor" / "dashboards" / "lorafleet.json").read_text()
    )


def analysis_metrics() -> dict[str, dict[str, Any]]:
    (template,) = docs(ROOT / "k8s" / "integrations" / "argo-analysistemplate.yaml")
    assert (template["apiVersion"], template["kind"]) == ("argoproj.io/v1alpha1", "AnalysisTemplate")
    assert [a["name"] for a in template["spec"]["args"]] == ["route", "version", "prometheus-address"]
    return {m["name"]: m for m in template["spec"]["metrics"]}


def metric_templates() -> dict[str, str]:
    found = {}
    for d in docs(ROOT / "k8s" / "integrations" / "flagger-metrictemplates.yaml"):
        assert (d["apiVersion"], d["kind"]) == ("flagger.app/v1beta1", "MetricTemplate")
        assert d["spec"]["provider"]["type"] == "prometheus"
        found[d["metadata"]["name"]] = d["spec"]["query"]
    return found


def test_analysis_template_gates_on_lorafleet_thresholds() -> None:
    t = AlertThresholds()
    metrics = analysis_metrics()
    limits = {
        "error-ratio": t.max_error_ratio,
        "p95-latency": t.max_p95_latency_s,
        "drift-psi": t.max_drift_psi,
    }
    assert set(metrics) == set(limits)
    for name, metric in metrics.items():
        query = metric["provider"]["prometheus"]["query"]
        assert metric["provider"]["prometheus"]["address"] == "{{args.prometheus-address}}"
        assert 'route="{{args.route}}"' in query and 'version="{{args.version}}"' in query
        assert NAME_RE.findall(query) and set(NAME_RE.findall(query)) <= declared_names()
        # NaN (no data yet) matches neither condition: Inconclusive, the rollout pauses
        assert metric["successCondition"] == f"!isNaN(result) && result <= {limits[name]:g}"
        assert metric["failureCondition"] == f"!isNaN(result) && result > {limits[name]:g}"
        assert metric["failureLimit"] >= 1 and metric["inconclusiveLimit"] >= 1


def test_metric_templates_use_declared_series_and_flagger_variables() -> None:
    templates = metric_templates()
    assert set(templates) == {"lorafleet-error-ratio", "lorafleet-p95-latency", "lorafleet-drift-psi"}
    for query in templates.values():
        assert "{{ variables.route }}" in query and "{{ variables.version }}" in query
        assert set(NAME_RE.findall(query)) <= declared_names()
    assert "[{{ interval }}]" in templates["lorafleet-error-ratio"]


SERIES = [
    # v2: 60 requests a minute, 6 server-side errors (10%) and 30 client errors (not counted)
    (
        'lorafleet_router_requests_total{route="banking",version="v2",arm="canary",code_class="2xx"}',
        "0+60x15",
    ),
    ('lorafleet_router_errors_total{route="banking",version="v2",reason="upstream_error"}', "0+6x15"),
    ('lorafleet_router_errors_total{route="banking",version="v2",reason="bad_request"}', "0+30x15"),
    # its durations: 50 of 60 under 0.5 s, 58 under 1 s -> p95 = 0.5 + (57 - 50) / (58 - 50) * 0.5 = 0.9375
    ('lorafleet_router_request_duration_seconds_bucket{route="banking",version="v2",le="0.5"}', "0+50x15"),
    ('lorafleet_router_request_duration_seconds_bucket{route="banking",version="v2",le="1"}', "0+58x15"),
    ('lorafleet_router_request_duration_seconds_bucket{route="banking",version="v2",le="+Inf"}', "0+60x15"),
    ('lorafleet_drift_psi{route="banking",version="v2",feature="length"}', "0.25x15"),
    ('lorafleet_drift_psi{route="banking",version="v2",feature="label"}', "0.05x15"),
    # v3: traffic, and no error series at all (counters appear on their first increment)
    (
        'lorafleet_router_requests_total{route="banking",version="v3",arm="canary",code_class="2xx"}',
        "0+60x15",
    ),
    # v4: one request a minute, 5 in the 5m window, under the 20 the error ratio needs
    ('lorafleet_router_requests_total{route="banking",version="v4",arm="canary",code_class="2xx"}', "0+1x15"),
]


def _argo(query: str, version: str) -> str:
    filled = query.replace("{{args.route}}", "banking").replace("{{args.version}}", version)
    # scalar() gives NaN without data, and NaN never equals NaN in promtool's comparison: wrap the
    # scalar in a vector that keeps only real numbers, so "no data" is an empty result.
    return f"vector({filled.strip()}) >= 0"


def _flagger(query: str, version: str) -> str:
    return (
        query.replace("{{ variables.route }}", "banking")
        .replace("{{ variables.version }}", version)
        .replace("{{ interval }}", "5m")
    )


def _case(expr: str, value: float | None, rounded: bool = False) -> dict[str, Any]:
    samples = [] if value is None else [{"labels": "{}", "value": value}]
    # histogram_quantile interpolates in floating point: 0.9374999999999998 for 0.9375
    return {"expr": f"round({expr}, 0.0001)" if rounded else expr, "eval_time": "10m", "exp_samples": samples}


def test_integration_queries_evaluated_by_prometheus(
    require_tool: Callable[[str | None, str], str], tmp_path: Path
) -> None:
    promtool = require_tool(PROMTOOL, "promtool is not installed (scripts/setup.sh installs prometheus)")
    argo = {name: m["provider"]["prometheus"]["query"] for name, m in analysis_metrics().items()}
    flagger = metric_templates()
    cases = [
        _case(_argo(argo["error-ratio"], "v2"), 0.1),
        _case(_argo(argo["error-ratio"], "v3"), 0.0),
        _case(_argo(argo["error-ratio"], "v4"), None),  # too few requests: inconclusive
        _case(_argo(argo["p95-latency"], "v2"), 0.9375, rounded=True),
        _case(_argo(argo["p95-latency"], "v3"), None),
        _case(_argo(argo["drift-psi"], "v2"), 0.25),
        _case(_argo(argo["drift-psi"], "v3"), None),
        _case(_flagger(flagger["lorafleet-error-ratio"], "v2"), 0.1),
        _case(_flagger(flagger["lorafleet-error-ratio"], "v3"), 0.0),
        _case(_flagger(flagger["lorafleet-p95-latency"], "v2"), 0.9375, rounded=True),
        _case(_flagger(flagger["lorafleet-drift-psi"], "v2"), 0.25),
    ]
    (tmp_path / "rules.yml").write_text("groups: []\n")
    test_file = tmp_path / "integrations.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [{"series": s, "values": v} for s, v in SERIES],
                        "promql_expr_test": cases,
                    }
                ],
            },
            sort_keys=False,
        )
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
