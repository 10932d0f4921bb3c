"""The lorafleet Grafana dashboard, generated from code: `python -m monitor.dashboards.build`.

    dashboard() -> dict     the dashboard model (Grafana JSON, schemaVersion 39)
    render() -> str         its JSON text, as written to monitor/dashboards/lorafleet.json
    main()                  write the file

Variables: `datasource` (any Prometheus), `route` and `version` (from lorafleet_router_requests_total,
multi-select with All). Rows: traffic, quality (entropy, drift, live accuracy, feedback), rollout
(canary weight and step, gate decisions, rollbacks, shadow agreement), engines. Rollout events are
drawn as annotations. Every query uses only the series monitor.metrics declares (a test checks).
Plain dict builders: the dashboard is data, and no generator package is needed to write it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor.drift import JS_THRESHOLD, PSI_MODERATE, PSI_SIGNIFICANT
from monitor.signals import CLIENT_ERROR_REASONS_RE

DASHBOARD_FILE = Path(__file__).resolve().parent / "lorafleet.json"
UID = "lorafleet-overview"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SEL = 'route=~"$route", version=~"$version"'
ROUTE_SEL = 'route=~"$route"'
WIDTH = 24


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def _thresholds(*steps: tuple[float, str]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, *({"color": c, "value": v} for v, c in steps)],
    }


class _Layout:
    """Places panels left to right, wrapping at Grafana's 24 columns, and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        if self._x:
            self._y += self._row_h
        self.panels.append(
            {
                "type": "row",
                "id": self._next_id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._x, self._y, self._row_h = 0, self._y + 1, 0

    def panel(
        self,
        title: str,
        description: str,
        targets: Sequence[tuple[str, str]],
        *,
        unit: str = "short",
        kind: str = "timeseries",
        w: int = 8,
        h: int = 8,
        stack: str | None = None,
        thresholds: dict[str, Any] | None = None,
        bars: bool = False,
        overrides: list[dict[str, Any]] | None = None,
        min_: float | None = None,
        max_: float | None = None,
    ) -> None:
        if self._x + w > WIDTH:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        defaults: dict[str, Any] = {"unit": unit}
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        if thresholds is not None:
            defaults["thresholds"] = thresholds
        if kind == "timeseries":
            custom: dict[str, Any] = {
                "drawStyle": "bars" if bars else "line",
                "fillOpacity": 10,
                "showPoints": "never",
            }
            if stack:
                custom["stacking"] = {"mode": stack, "group": "A"}
                custom["fillOpacity"] = 60
            if thresholds is not None:
                custom["thresholdsStyle"] = {"mode": "line+area" if stack is None else "off"}
            defaults["custom"] = custom
        refs = "ABCDEFGHIJ"
        self.panels.append(
            {
                "type": kind,
                "id": self._next_id(),
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y},
                "targets": [_target(expr, legend, refs[i]) for i, (expr, legend) in enumerate(targets)],
                "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
                if kind == "timeseries"
                else {},
            }
        )
        self._x += w
        self._row_h = max(self._row_h, h)


def _quantiles(metric: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (version, le) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{version}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _traffic(layout: _Layout) -> None:
    layout.row("Traffic")
    layout.panel(
        "Traffic split by version",
        "Share of each route's requests answered by each version (stable, canary, weighted, pinned).",
        [(f"sum by (version) (rate(lorafleet_router_requests_total{{{ROUTE_SEL}}}[{RATE}]))", "{{version}}")],
        unit="reqps",
        stack="percent",
    )
    layout.panel(
        "Request rate",
        "Requests per second by version and the arm that chose it.",
        [
            (
                f"sum by (version, arm) (rate(lorafleet_router_requests_total{{{SEL}}}[{RATE}]))",
                "{{version}} {{arm}}",
            )
        ],
        unit="reqps",
    )
    layout.panel(
        "Tokens",
        "Prompt (input) and completion (output) tokens per second, as the engines count them.",
        [
            (
                f"sum by (version, direction) (rate(lorafleet_router_tokens_total{{{SEL}}}[{RATE}]))",
                "{{version}} {{direction}}",
            )
        ],
        unit="short",
    )
    layout.panel(
        "Latency (request to last byte)",
        "p50, p95 and p99 of the request duration by version.",
        _quantiles("lorafleet_router_request_duration_seconds"),
        unit="s",
    )
    layout.panel(
        "Time to first token",
        "p50, p95 and p99 of the time from request to the first content token of streams.",
        _quantiles("lorafleet_router_time_to_first_token_seconds"),
        unit="s",
    )
    layout.panel(
        "Errors by reason",
        "Failed or degraded requests per second by version and reason; the ratio excludes the client's mistakes.",
        [
            (
                f"sum by (version, reason) (rate(lorafleet_router_errors_total{{{SEL}}}[{RATE}]))",
                "{{version}} {{reason}}",
            ),
        ],
        unit="reqps",
    )
    layout.panel(
        "Error ratio",
        "Server-side errors / requests by version (what the gate and LorafleetHighErrorRatio compare).",
        [
            (
                f'sum by (version) (rate(lorafleet_router_errors_total{{{SEL}, reason!~"{CLIENT_ERROR_REASONS_RE}"}}[{RATE}]))'
                f" / sum by (version) (rate(lorafleet_router_requests_total{{{SEL}}}[{RATE}]))",
                "{{version}}",
            )
        ],
        unit="percentunit",
        thresholds=_thresholds((0.05, "red")),
        min_=0,
    )
    layout.panel(
        "Fallbacks",
        "Requests retried on the route's fallback after the chosen version failed.",
        [
            (
                f"sum by (version, reason) (rate(lorafleet_router_fallbacks_total{{{SEL}}}[{RATE}]))",
                "{{version}} {{reason}}",
            )
        ],
        unit="reqps",
    )


def _quality(layout: _Layout) -> None:
    layout.row("Quality")
    layout.panel(
        "Mean token entropy",
        "Mean per-token entropy of answers (top-k estimate, nats) by version; a shift means the model is more or less sure.",
        [
            (
                f"sum by (version) (rate(lorafleet_response_token_entropy_nats_sum{{{SEL}}}[{RATE}]))"
                f" / sum by (version) (rate(lorafleet_response_token_entropy_nats_count{{{SEL}}}[{RATE}]))",
                "{{version}}",
            )
        ],
        unit="none",
        min_=0,
    )
    layout.panel(
        "Drift: PSI by feature",
        f"Population stability index over the sliding window: < {PSI_MODERATE:g} none, "
        f"{PSI_MODERATE:g}-{PSI_SIGNIFICANT:g} moderate, >= {PSI_SIGNIFICANT:g} significant.",
        [(f"max by (version, feature) (lorafleet_drift_psi{{{SEL}}})", "{{version}} {{feature}}")],
        unit="none",
        thresholds=_thresholds((PSI_MODERATE, "orange"), (PSI_SIGNIFICANT, "red")),
        min_=0,
    )
    layout.panel(
        "Drift: Jensen-Shannon distance by feature",
        f"Base-2 JS distance (0..1) over the sliding window; {JS_THRESHOLD:g} is Evidently's threshold.",
        [
            (
                f"max by (version, feature) (lorafleet_drift_jensen_shannon_distance{{{SEL}}})",
                "{{version}} {{feature}}",
            ),
            (f"max by (version) (lorafleet_drift_window_requests{{{SEL}}})", "window {{version}}"),
        ],
        unit="none",
        thresholds=_thresholds((JS_THRESHOLD, "red")),
        overrides=[
            {
                "matcher": {"id": "byRegexp", "options": "window .*"},
                "properties": [
                    {"id": "custom.axisPlacement", "value": "right"},
                    {"id": "unit", "value": "short"},
                    {"id": "custom.lineStyle", "value": {"fill": "dot"}},
                ],
            }
        ],
        min_=0,
    )
    layout.panel(
        "Live accuracy (95% Wilson band)",
        "Rolling accuracy from feedback, with the bounds of its Wilson interval (dashed).",
        [
            (f"max by (version) (lorafleet_live_accuracy_ratio{{{SEL}}})", "{{version}}"),
            (f"max by (version) (lorafleet_live_accuracy_lower_ratio{{{SEL}}})", "lower {{version}}"),
            (f"max by (version) (lorafleet_live_accuracy_upper_ratio{{{SEL}}})", "upper {{version}}"),
        ],
        unit="percentunit",
        min_=0,
        max_=1,
        overrides=[
            {
                "matcher": {"id": "byRegexp", "options": "(lower|upper) .*"},
                "properties": [
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [6, 4]}},
                    {"id": "custom.fillOpacity", "value": 0},
                ],
            }
        ],
    )
    layout.panel(
        "Feedback",
        "Verdicts received per hour by version and outcome.",
        [
            (
                f"sum by (version, outcome) (increase(lorafleet_feedback_total{{{SEL}}}[1h]))",
                "{{version}} {{outcome}}",
            )
        ],
        unit="short",
        bars=True,
    )
    layout.panel(
        "Predicted labels",
        "Answers of classification routes by predicted label; 'other' names no label.",
        [(f"sum by (label) (rate(lorafleet_predictions_total{{{SEL}}}[{RATE}]))", "{{label}}")],
        unit="reqps",
        stack="percent",
    )
    layout.panel(
        "Answers outside the label set",
        "Share of each classification version's answers that name none of its labels. Near 0 on a route "
        "with enforce_labels (the engine may only answer a label); rising elsewhere: the version's answers "
        "drift from its label set.",
        [
            (
                f'sum by (version) (rate(lorafleet_predictions_total{{{SEL}, label="other"}}[{RATE}])) '
                f"/ sum by (version) (rate(lorafleet_predictions_total{{{SEL}}}[{RATE}]))",
                "{{version}}",
            )
        ],
        unit="percentunit",
        min_=0,
        max_=1,
    )


def _rollout(layout: _Layout) -> None:
    layout.row("Rollout")
    layout.panel(
        "Canary weight",
        "Share of each route's traffic sent to its canary.",
        [(f"max by (route) (lorafleet_rollout_canary_weight_ratio{{{ROUTE_SEL}}})", "{{route}}")],
        unit="percentunit",
        min_=0,
        max_=1,
    )
    layout.panel(
        "Canary step",
        "Index of the current canary step (0-based); -1 when no canary runs.",
        [(f"max by (route) (lorafleet_rollout_step{{{ROUTE_SEL}}})", "{{route}}")],
        unit="none",
    )
    layout.panel(
        "Gate decisions",
        "Canary gate decisions by result: pass, fail (abort), inconclusive (pause).",
        [
            (
                f"sum by (route, result) (increase(lorafleet_rollout_gate_decisions_total{{{ROUTE_SEL}}}[{RATE}]))",
                "{{route}} {{result}}",
            )
        ],
        unit="short",
        bars=True,
    )
    layout.panel(
        "Rollbacks and rollout events",
        "Rollbacks by reason and route changes by action.",
        [
            (
                f"sum by (route, reason) (increase(lorafleet_rollout_rollbacks_total{{{ROUTE_SEL}}}[{RATE}]))",
                "rollback {{route}} {{reason}}",
            ),
            (
                f"sum by (route, action) (increase(lorafleet_rollout_events_total{{{ROUTE_SEL}}}[{RATE}]))",
                "{{route}} {{action}}",
            ),
        ],
        unit="short",
        bars=True,
    )
    layout.panel(
        "Shadow agreement",
        "Share of shadow answers that agree with the primary answer, by shadow version.",
        [
            (
                f'sum by (version) (rate(lorafleet_shadow_comparisons_total{{{SEL}, result="agree"}}[{RATE}]))'
                f" / sum by (version) (rate(lorafleet_shadow_comparisons_total{{{SEL}}}[{RATE}]))",
                "{{version}}",
            )
        ],
        unit="percentunit",
        min_=0,
        max_=1,
    )
    layout.panel(
        "Shadow requests",
        "Mirrored requests by outcome (ok, error, dropped when the shadow queue is full).",
        [
            (
                f"sum by (version, outcome) (rate(lorafleet_shadow_requests_total{{{SEL}}}[{RATE}]))",
                "{{version}} {{outcome}}",
            )
        ],
        unit="reqps",
    )


def _engines(layout: _Layout) -> None:
    layout.row("Engines and versions")
    layout.panel(
        "Engines up",
        "1 when some gateway replica had a healthy answer from the engine.",
        [("max by (engine) (lorafleet_engine_up)", "{{engine}}")],
        unit="none",
        min_=0,
        max_=1,
    )
    layout.panel(
        "Adapter load failures",
        "Adapter versions an engine refused to load.",
        [
            (
                "sum by (version, engine) (increase(lorafleet_adapter_load_failures_total[1h]))",
                "{{version}} {{engine}}",
            )
        ],
        unit="short",
        bars=True,
    )
    layout.panel(
        "Live versions",
        "Each live version of the selected routes and its state.",
        [
            (
                f"max by (route, version, state) (lorafleet_version_info{{{ROUTE_SEL}}}) == 1",
                "{{route}} {{version}} {{state}}",
            )
        ],
        kind="table",
        unit="none",
    )


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, query: str, label: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-values"},
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "refresh": 1,
            "hide": 0,
        },
        query_var("route", "label_values(lorafleet_router_requests_total, route)", "Route"),
        query_var(
            "version", 'label_values(lorafleet_router_requests_total{route=~"$route"}, version)', "Version"
        ),
    ]


def _annotations() -> list[dict[str, Any]]:
    return [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        },
        {
            "name": "Rollout events",
            "datasource": DATASOURCE,
            "enable": True,
            "iconColor": "orange",
            "expr": f"sum by (route, action) (changes(lorafleet_rollout_events_total{{{ROUTE_SEL}}}[2m])) > 0",
            "step": "1m",
            "titleFormat": "{{route}}: {{action}}",
            "textFormat": "rollout event",
            "useValueForTime": False,
        },
    ]


def dashboard() -> dict[str, Any]:
    """The dashboard model, ready for Grafana's import or its ConfigMap sidecar."""
    layout = _Layout()
    _traffic(layout)
    _quality(layout)
    _rollout(layout)
    _engines(layout)
    return {
        "uid": UID,
        "title": "lorafleet",
        "description": "Adapter versions in production: traffic, latency, errors, entropy, drift, live accuracy, rollouts.",
        "tags": ["lorafleet", "llm", "lora"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": _variables()},
        "annotations": {"list": _annotations()},
        "links": [],
        "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monitor.dashboards.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, default=DASHBOARD_FILE, help="file to write ('-' for stdout)")
    args = parser.parse_args(argv)
    text = render()
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
