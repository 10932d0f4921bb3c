"""Prometheus alert rules, generated from code: one source for the rules file and the PrometheusRule.

    AlertThresholds                 the limits (defaults match the canary gate's where both exist)
    rule_groups(thresholds) -> [{name, rules: [{alert, expr, for, labels, annotations}]}]
    render(thresholds) -> str       the rules file's text
    main()                          `python -m monitor.alerts` writes monitor/rules/lorafleet-alerts.yml

Every alert has a section in docs/monitoring.md (its runbook_url anchor): what it means, what to do.
Expressions use only the series monitor.metrics declares (a test checks), summed over gateway
replicas by (route, version). Counters that a replica creates only on their first increment
(rollbacks, adapter load failures) are caught by two branches: an increase over the window, or a
series that is new since the window began (increase() needs two samples and misses the first).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from textwrap import indent
from typing import Any

import yaml
from pydantic import BaseModel, Field

from monitor.gate import MAX_DRIFT_PSI, MAX_ENTROPY_SHIFT_NATS, MAX_ERROR_RATIO, MIN_REQUESTS
from monitor.signals import CLIENT_ERROR_REASONS_RE

RULES_FILE = Path(__file__).resolve().parent / "rules" / "lorafleet-alerts.yml"
DEFAULT_RUNBOOK = "docs/monitoring.md"


class AlertThresholds(BaseModel):
    max_error_ratio: float = Field(
        default=MAX_ERROR_RATIO, gt=0, lt=1, description="Errors / requests of a version over 5m."
    )
    min_requests: int = Field(
        default=MIN_REQUESTS,
        ge=1,
        description="Requests a version needs in 5m before its error ratio can alert.",
    )
    max_p95_latency_s: float = Field(
        default=10.0, gt=0, description="p95 request duration of a version over 5m."
    )
    max_entropy_shift_nats: float = Field(
        default=MAX_ENTROPY_SHIFT_NATS,
        gt=0,
        description="Change of a version's mean token entropy (vs 1h ago, or canary vs stable).",
    )
    max_drift_psi: float = Field(default=MAX_DRIFT_PSI, gt=0, description="PSI of any drift feature.")
    min_accuracy_ratio: float = Field(
        default=0.8,
        gt=0,
        lt=1,
        description="Live accuracy floor: alert when even the Wilson upper bound is below.",
    )
    max_accuracy_drop_ratio: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Drop of live accuracy against its own average of the 6h before the last hour.",
    )
    runbook_base_url: str = Field(
        default=DEFAULT_RUNBOOK,
        description="Where docs/monitoring.md is published; alerts link to its anchors.",
    )


def _runbook(t: AlertThresholds, alert: str) -> str:
    return f"{t.runbook_base_url}#{alert.lower()}"


def _alert(
    t: AlertThresholds,
    name: str,
    expr: str,
    for_: str,
    severity: str,
    summary: str,
    description: str,
) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "alert": name,
        "expr": expr.strip(),
        "for": for_,
        "labels": {"severity": severity},
    }
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": _runbook(t, name),
    }
    return rule


def _mean_entropy(window: str, offset: str = "") -> str:
    off = f" offset {offset}" if offset else ""
    return (
        f"sum by (route, version) (rate(lorafleet_response_token_entropy_nats_sum[{window}]{off}))\n"
        f"  / sum by (route, version) (rate(lorafleet_response_token_entropy_nats_count[{window}]{off}))"
    )


def _in_state(state: str) -> str:
    return f'max by (route, version) (lorafleet_version_info{{state="{state}"}}) == 1'


def _new_or_increased(metric: str, by: str, window: str) -> str:
    return (
        f"sum by ({by}) (increase({metric}[{window}])) > 0\n"
        f"or\nsum by ({by}) ({metric} > 0 unless {metric} offset {window})"
    )


def traffic_rules(t: AlertThresholds) -> list[dict[str, Any]]:
    requests = "sum by (route, version) (rate(lorafleet_router_requests_total[5m]))"
    errors = f'sum by (route, version) (rate(lorafleet_router_errors_total{{reason!~"{CLIENT_ERROR_REASONS_RE}"}}[5m]))'
    return [
        _alert(
            t,
            "LorafleetHighErrorRatio",
            f"""
(
  {errors}
  / {requests}
) > {t.max_error_ratio:g}
and on (route, version)
  sum by (route, version) (increase(lorafleet_router_requests_total[5m])) >= {t.min_requests}
""",
            "5m",
            "critical",
            "{{ $labels.route }}/{{ $labels.version }} fails {{ $value | humanizePercentage }} of its requests",
            f"More than {t.max_error_ratio:.0%} of the requests of version {{{{ $labels.version }}}} on route "
            "{{ $labels.route }} failed over the last 5 minutes (client errors excluded).",
        ),
        _alert(
            t,
            "LorafleetHighLatencyP95",
            f"""
histogram_quantile(0.95,
  sum by (route, version, le) (rate(lorafleet_router_request_duration_seconds_bucket[5m]))
) > {t.max_p95_latency_s:g}
""",
            "10m",
            "warning",
            "{{ $labels.route }}/{{ $labels.version }} p95 latency is {{ $value | humanizeDuration }}",
            f"The 95th percentile of request durations of version {{{{ $labels.version }}}} on route "
            f"{{{{ $labels.route }}}} has been above {t.max_p95_latency_s:g}s for 10 minutes.",
        ),
        _alert(
            t,
            "LorafleetEngineDown",
            "max by (engine) (lorafleet_engine_up) == 0",
            "2m",
            "critical",
            "engine {{ $labels.engine }} is down",
            "No gateway replica has had a healthy answer from engine {{ $labels.engine }} for 2 minutes; "
            "the versions it serves fall back or fail.",
        ),
    ]


def quality_rules(t: AlertThresholds) -> list[dict[str, Any]]:
    shift = t.max_entropy_shift_nats
    in_canary = f"({_mean_entropy('15m')})\n* on (route, version) ({_in_state('canary')})"
    in_stable = f"({_mean_entropy('15m')})\n* on (route, version) ({_in_state('stable')})"
    canary_vs_stable = "\n".join(
        [
            "abs(",
            indent(in_canary, "  "),
            "  - on (route) group_left ()",
            "  max by (route) (",
            indent(in_stable, "    "),
            "  )",
            f") > {shift:g}",
        ]
    )
    return [
        _alert(
            t,
            "LorafleetEntropyShift",
            f"""
abs(
  ({_mean_entropy("30m")})
  - ({_mean_entropy("30m", "1h")})
) > {shift:g}
""",
            "15m",
            "warning",
            "{{ $labels.route }}/{{ $labels.version }} answers with a different confidence than an hour ago",
            f"The mean token entropy of version {{{{ $labels.version }}}} on route {{{{ $labels.route }}}} moved by "
            f'{{{{ $value | printf "%.2f" }}}} nats (limit {shift:g}) against the same 30 minutes one hour earlier.',
        ),
        _alert(
            t,
            "LorafleetCanaryEntropyShift",
            canary_vs_stable,
            "10m",
            "warning",
            "canary {{ $labels.version }} on {{ $labels.route }} is more or less confident than stable",
            f"The mean token entropy of canary {{{{ $labels.version }}}} differs from the stable version's on route "
            f'{{{{ $labels.route }}}} by {{{{ $value | printf "%.2f" }}}} nats (limit {shift:g}) over 15 minutes.',
        ),
        _alert(
            t,
            "LorafleetDriftDetected",
            f"max by (route, version, feature) (lorafleet_drift_psi) >= {t.max_drift_psi:g}",
            "15m",
            "warning",
            "{{ $labels.feature }} of {{ $labels.route }}/{{ $labels.version }} drifted from its reference",
            f"The population stability index of {{{{ $labels.feature }}}} over the drift window is "
            f'{{{{ $value | printf "%.2f" }}}} (significant from {t.max_drift_psi:g}): live traffic no longer looks '
            "like the data the version was trained on.",
        ),
        _alert(
            t,
            "LorafleetLiveAccuracyLow",
            f"max by (route, version) (lorafleet_live_accuracy_upper_ratio) < {t.min_accuracy_ratio:g}",
            "15m",
            "critical",
            "{{ $labels.route }}/{{ $labels.version }} live accuracy is below "
            f"{t.min_accuracy_ratio:.0%}",
            "Even the upper bound of the 95% Wilson interval of the live accuracy from feedback is "
            f"{{{{ $value | humanizePercentage }}}}, below the floor of {t.min_accuracy_ratio:.0%}.",
        ),
        _alert(
            t,
            "LorafleetLiveAccuracyDrop",
            f"""
max by (route, version) (avg_over_time(lorafleet_live_accuracy_ratio[6h] offset 1h))
  - max by (route, version) (lorafleet_live_accuracy_ratio)
> {t.max_accuracy_drop_ratio:g}
""",
            "15m",
            "warning",
            "{{ $labels.route }}/{{ $labels.version }} live accuracy dropped",
            "The live accuracy from feedback is {{ $value | humanizePercentage }} below its average of the "
            f"6 hours before the last hour (limit {t.max_accuracy_drop_ratio:.0%}).",
        ),
    ]


def rollout_rules(t: AlertThresholds) -> list[dict[str, Any]]:
    return [
        _alert(
            t,
            "LorafleetCanaryRolledBack",
            _new_or_increased("lorafleet_rollout_rollbacks_total", "route, reason", "10m"),
            "0m",
            "warning",
            "a canary on {{ $labels.route }} was rolled back ({{ $labels.reason }})",
            "Route {{ $labels.route }} went back to its stable version in the last 10 minutes "
            "(reason: {{ $labels.reason }}). The gate's reasons are in the rollout history.",
        ),
        _alert(
            t,
            "LorafleetAdapterLoadFailed",
            _new_or_increased("lorafleet_adapter_load_failures_total", "version, engine", "15m"),
            "0m",
            "warning",
            "engine {{ $labels.engine }} refused to load {{ $labels.version }}",
            "Engine {{ $labels.engine }} failed to load adapter version {{ $labels.version }} in the last "
            "15 minutes; traffic for it goes to the route's fallback.",
        ),
    ]


def rule_groups(thresholds: AlertThresholds | None = None) -> list[dict[str, Any]]:
    """Every lorafleet alert, in three groups (traffic, quality, rollout)."""
    t = thresholds or AlertThresholds()
    return [
        {"name": "lorafleet-traffic", "rules": traffic_rules(t)},
        {"name": "lorafleet-quality", "rules": quality_rules(t)},
        {"name": "lorafleet-rollout", "rules": rollout_rules(t)},
    ]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = "# Generated by `python -m monitor.alerts` from monitor/alerts.py: edit that, not this file.\n"


def render(thresholds: AlertThresholds | None = None) -> str:
    """The rules file: `groups:` as Prometheus loads it."""
    body = yaml.dump(
        {"groups": rule_groups(thresholds)}, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True
    )
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor.alerts", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=RULES_FILE, help="rules file to write ('-' for stdout)"
    )
    parser.add_argument("--runbook-base-url", default=DEFAULT_RUNBOOK)
    args = parser.parse_args(argv)
    text = render(AlertThresholds(runbook_base_url=args.runbook_base_url))
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
