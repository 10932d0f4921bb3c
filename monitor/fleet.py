"""The fleet's view of every live version, read from the Prometheus that scrapes every gateway replica.

`fleet_status(signals)` answers what `GET /admin/monitor` answers for one process (the same fields,
so `lorafleet monitor status` prints either), for every replica at once:

    requests, errors, p95 latency, mean entropy, not-a-label ratio
                    summed over the replicas, over the last `signals.window_s` seconds
    drift           each feature's PSI and JS distance and the window's size: pooled by the gateways
                    themselves (router/observe.py), the same on every replica; the largest is taken
                    in case one has not refreshed yet
    live accuracy   the rolling ratio and its Wilson interval, computed by every replica from the
                    shared feedback store; `feedback` counts the verdicts received in the window
    state           from lorafleet_version_info
    replicas        how many gateway instances Prometheus has series of, for that version
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from typing import Any

from monitor.drift import psi_level
from monitor.signals import PrometheusSignals

PREDICTIONS = "lorafleet_predictions_total"
DRIFT_JS = "lorafleet_drift_jensen_shannon_distance"
DRIFT_WINDOW = "lorafleet_drift_window_requests"
LIVE_ACCURACY = "lorafleet_live_accuracy_ratio"
LIVE_ACCURACY_LOWER = "lorafleet_live_accuracy_lower_ratio"
LIVE_ACCURACY_UPPER = "lorafleet_live_accuracy_upper_ratio"
VERSION_INFO = "lorafleet_version_info"


def fleet_queries(window_s: float) -> dict[str, str]:
    """The PromQL of the fields `PrometheusSignals` does not already query."""
    w = f"[{round(window_s)}s]"
    by = "by (route, version)"
    return {
        "state": f"max by (route, version, state) ({VERSION_INFO}) == 1",
        "replicas": f"count {by} ({VERSION_INFO} == 1)",
        "other": f'sum {by} (increase({PREDICTIONS}{{label="other"}}{w}))',
        "predictions": f"sum {by} (increase({PREDICTIONS}{w}))",
        "drift_js": f"max by (route, version, feature) ({DRIFT_JS})",
        "drift_window": f"max {by} ({DRIFT_WINDOW})",
        "live_accuracy": f"max {by} ({LIVE_ACCURACY})",
        "live_accuracy_lower": f"max {by} ({LIVE_ACCURACY_LOWER})",
        "live_accuracy_upper": f"max {by} ({LIVE_ACCURACY_UPPER})",
    }


def _number(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


async def fleet_status(signals: PrometheusSignals) -> list[dict[str, Any]]:
    """One entry per live version (`lorafleet_version_info`), in `GET /admin/monitor`'s shape."""
    queries = fleet_queries(signals.window_s)
    summed = await signals.versions()
    results = await asyncio.gather(*(signals.query(q) for q in queries.values()))
    found = dict(zip(queries, results, strict=True))
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)

    def each(name: str) -> Any:
        for labels, value in found[name]:
            if "route" in labels and "version" in labels:
                yield (labels["route"], labels["version"]), labels, _number(value)

    for key, labels, _ in each("state"):
        rows[key]["state"] = labels.get("state", "")
    for key, _, v in each("replicas"):
        rows[key]["replicas"] = round(v or 0)
    scalars = {
        name: {key: v for key, _, v in each(name)} for name in queries if name not in ("state", "drift_js")
    }
    js = {(key, labels.get("feature")): v for key, labels, v in each("drift_js")}

    out = []
    for key in sorted(rows):
        route, version = key
        s = summed.get(key)
        predictions = scalars["predictions"].get(key)
        other = scalars["other"].get(key)
        features = {}
        for feature, psi in sorted((s.drift_psi if s else {}).items()):
            features[feature.value] = {
                "psi": psi,
                "js_distance": js.get((key, feature.value)),
                "level": psi_level(psi).value,
            }
        accuracy = scalars["live_accuracy"].get(key)
        lower, upper = scalars["live_accuracy_lower"].get(key), scalars["live_accuracy_upper"].get(key)
        correct, total = (s.feedback_correct, s.feedback_total) if s else (0, 0)
        out.append(
            {
                "route": route,
                "version": version,
                "state": rows[key].get("state", ""),
                "replicas": rows[key].get("replicas", 0),
                "task": "labels" if predictions else "unknown",
                "requests": s.requests if s else 0,
                "errors": s.errors if s else 0,
                "error_ratio": s.error_ratio if s else None,
                "p95_latency_s": s.p95_latency_s if s else None,
                "mean_entropy_nats": s.mean_entropy_nats if s else None,
                "other_label_ratio": (other or 0.0) / predictions if predictions else None,
                "drift": {"window": round(scalars["drift_window"].get(key) or 0), "features": features},
                "max_drift_psi": s.max_drift_psi if s else None,
                "feedback": {"correct": correct, "total": total},
                "live_accuracy": accuracy,
                "live_accuracy_interval": [lower, upper] if accuracy is not None else None,
            }
        )
    return out
