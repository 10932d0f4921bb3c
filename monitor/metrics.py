"""Every metric lorafleet exports, in one place.

Names follow Prometheus conventions: the `lorafleet_` prefix, one base unit as a plural suffix,
counters ending in `_total`, no colons (they are for recording rules). Labels are bounded: `route`
and `version` come from the routes file and the registry (anything else becomes "other"), every
other label from a closed enum below. Never a user id, request id or text.

`build_metrics(registry)` builds them on a given CollectorRegistry, so that tests and several
gateways in one process each get their own. With PROMETHEUS_MULTIPROC_DIR set (several gateway
workers), values are written to that folder and `/metrics` aggregates them; gauges say how.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

OTHER = "other"

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
ENTROPY_BUCKETS_NATS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 4)
ROUTE_LABELS = ["route", "version"]


class Arm(enum.StrEnum):
    """Why a request went to a version."""

    STABLE = "stable"
    CANARY = "canary"
    WEIGHTED = "weighted"
    PINNED = "pinned"
    FALLBACK = "fallback"
    SHADOW = "shadow"


class ErrorReason(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    FALLBACK = "fallback"
    STREAM_ABORTED = "stream_aborted"
    CLIENT_CANCELLED = "client_cancelled"  # the client went away mid-stream: not the version's fault


class Direction(enum.StrEnum):
    INPUT = "input"
    OUTPUT = "output"


class DriftFeature(enum.StrEnum):
    INPUT_LENGTH = "input_length"
    INPUT_VOCABULARY = "input_vocabulary"
    PREDICTED_LABEL = "predicted_label"
    ENTROPY = "entropy"


class VersionState(enum.StrEnum):
    STABLE = "stable"
    CANARY = "canary"
    SHADOW = "shadow"
    WEIGHTED = "weighted"
    RETIRING = "retiring"
    PINNED = "pinned"
    FALLBACK = "fallback"


class GateResult(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class PendingUpdates(Collector):
    """Updates of the request path, applied in bulk: one dict update per request and metric
    instead of a locked increment (or a bucket search) each time.

    It is registered on the metrics' registry before them, so collecting the registry (/metrics,
    the local gate signals) applies every pending update first; `flush()` also runs on a timer,
    so that with several workers each one's files stay current for the others' /metrics.
    """

    def __init__(self) -> None:
        self._inc: dict[Any, float] = {}  # counter child -> amount
        self._observed: dict[Any, list[float]] = {}  # histogram child -> values

    def inc(self, child: Any, amount: float = 1.0) -> None:
        self._inc[child] = self._inc.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        values = self._observed.get(child)
        if values is None:
            self._observed[child] = [value]
        else:
            values.append(value)

    def flush(self) -> None:
        inc, self._inc = self._inc, {}
        for child, amount in inc.items():
            child.inc(amount)
        observed, self._observed = self._observed, {}
        for child, values in observed.items():
            _observe_all(child, values)

    def collect(self) -> Iterable[Any]:
        self.flush()
        return []


def _observe_all(child: Any, values: list[float]) -> None:
    """Histogram.observe for each value, by bucket counts (prometheus_client's own fields)."""
    bounds = getattr(child, "_upper_bounds", None)
    if bounds is None or any(v != v for v in values):
        for v in values:
            child.observe(v)
        return
    counts = [0] * len(bounds)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1  # the first bucket with v <= its bound
    for i, n in enumerate(counts):
        if n:
            child._buckets[i].inc(n)
    child._sum.inc(sum(values))


@dataclass(frozen=True)
class Metrics:
    pending: PendingUpdates
    requests: Counter
    request_duration: Histogram
    time_to_first_token: Histogram
    time_per_output_token: Histogram
    tokens: Counter
    errors: Counter
    fallbacks: Counter
    entropy: Histogram
    predictions: Counter
    drift_psi: Gauge
    drift_js: Gauge
    drift_window: Gauge
    feedback: Counter
    live_accuracy: Gauge
    live_accuracy_lower: Gauge
    live_accuracy_upper: Gauge
    shadow_requests: Counter
    shadow_comparisons: Counter
    version_info: Gauge
    canary_weight: Gauge
    rollout_step: Gauge
    gate_decisions: Counter
    rollbacks: Counter
    rollout_events: Counter
    engine_up: Gauge
    adapter_load_failures: Counter
    answer_log_dropped: Counter


def build_metrics(registry: CollectorRegistry) -> Metrics:
    """Create every lorafleet metric on `registry`."""
    pending = PendingUpdates()
    registry.register(pending)
    return Metrics(
        pending=pending,
        requests=Counter(
            "lorafleet_router_requests_total",
            "Requests answered by the gateway, by the arm that chose the version and the HTTP status class;"
            " a request the route's fallback answered counts for the version that failed (5xx) and the fallback.",
            ["route", "version", "arm", "code_class"],
            registry=registry,
        ),
        request_duration=Histogram(
            "lorafleet_router_request_duration_seconds",
            "Time from request to last byte.",
            ROUTE_LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ),
        time_to_first_token=Histogram(
            "lorafleet_router_time_to_first_token_seconds",
            "Time from request to the first content token of a stream.",
            ROUTE_LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ),
        time_per_output_token=Histogram(
            "lorafleet_router_time_per_output_token_seconds",
            "Decode time per output token after the first.",
            ROUTE_LABELS,
            buckets=TOKEN_LATENCY_BUCKETS_S,
            registry=registry,
        ),
        tokens=Counter(
            "lorafleet_router_tokens_total",
            "Prompt (input) and completion (output) tokens, as the engine counted them.",
            ["route", "version", "direction"],
            registry=registry,
        ),
        errors=Counter(
            "lorafleet_router_errors_total",
            "Failed or degraded requests by reason.",
            ["route", "version", "reason"],
            registry=registry,
        ),
        fallbacks=Counter(
            "lorafleet_router_fallbacks_total",
            "Requests retried on the route's fallback after the chosen version failed.",
            ["route", "version", "reason"],
            registry=registry,
        ),
        entropy=Histogram(
            "lorafleet_response_token_entropy_nats",
            "Mean per-token entropy of an answer (top-k estimate from the engine's logprobs).",
            ROUTE_LABELS,
            buckets=ENTROPY_BUCKETS_NATS,
            registry=registry,
        ),
        predictions=Counter(
            "lorafleet_predictions_total",
            "Answers of classification routes by predicted label; 'other' counts answers outside the label set.",
            ["route", "version", "label"],
            registry=registry,
        ),
        drift_psi=Gauge(
            "lorafleet_drift_psi",
            "Population stability index of a feature over the sliding window against the version's reference.",
            ["route", "version", "feature"],
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        drift_js=Gauge(
            "lorafleet_drift_jensen_shannon_distance",
            "Jensen-Shannon distance (base 2, 0..1) of a feature over the sliding window against the reference.",
            ["route", "version", "feature"],
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        drift_window=Gauge(
            "lorafleet_drift_window_requests",
            "Requests in the drift window.",
            ROUTE_LABELS,
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        feedback=Counter(
            "lorafleet_feedback_total",
            "Feedback received for answers, by outcome (correct or incorrect).",
            ["route", "version", "outcome"],
            registry=registry,
        ),
        live_accuracy=Gauge(
            "lorafleet_live_accuracy_ratio",
            "Rolling accuracy from feedback over the last N labelled answers.",
            ROUTE_LABELS,
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        live_accuracy_lower=Gauge(
            "lorafleet_live_accuracy_lower_ratio",
            "Lower bound of the 95% Wilson interval of the rolling live accuracy.",
            ROUTE_LABELS,
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        live_accuracy_upper=Gauge(
            "lorafleet_live_accuracy_upper_ratio",
            "Upper bound of the 95% Wilson interval of the rolling live accuracy.",
            ROUTE_LABELS,
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        shadow_requests=Counter(
            "lorafleet_shadow_requests_total",
            "Mirrored requests sent to a shadow version, by outcome (ok, error, dropped).",
            ["route", "version", "outcome"],
            registry=registry,
        ),
        shadow_comparisons=Counter(
            "lorafleet_shadow_comparisons_total",
            "Shadow answers compared with the primary answer (agree or disagree).",
            ["route", "version", "result"],
            registry=registry,
        ),
        version_info=Gauge(
            "lorafleet_version_info",
            "1 for each live version of a route, labelled with its state.",
            ["route", "version", "state"],
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        canary_weight=Gauge(
            "lorafleet_rollout_canary_weight_ratio",
            "Share of a route's traffic sent to its canary (0..1).",
            ["route"],
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        rollout_step=Gauge(
            "lorafleet_rollout_step",
            "Index of the current canary step (0-based); -1 when no canary runs.",
            ["route"],
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        gate_decisions=Counter(
            "lorafleet_rollout_gate_decisions_total",
            "Canary gate decisions by result (pass, fail, inconclusive).",
            ["route", "result"],
            registry=registry,
        ),
        rollbacks=Counter(
            "lorafleet_rollout_rollbacks_total",
            "Canaries aborted or routes rolled back, by reason (gate, manual).",
            ["route", "reason"],
            registry=registry,
        ),
        rollout_events=Counter(
            "lorafleet_rollout_events_total",
            "Changes to routes by action (set_weight, canary, step, promote, rollback, abort, shadow, retire).",
            ["route", "action"],
            registry=registry,
        ),
        engine_up=Gauge(
            "lorafleet_engine_up",
            "1 when the engine answered its last health check.",
            ["engine"],
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        adapter_load_failures=Counter(
            "lorafleet_adapter_load_failures_total",
            "Adapter versions an engine refused to load.",
            ["version", "engine"],
            registry=registry,
        ),
        answer_log_dropped=Counter(
            "lorafleet_answer_log_dropped_total",
            "Answers never written to the answer log: its queue was full while the database was down or slow"
            " (feedback on them cannot be matched).",
            registry=registry,
        ),
    )


def declared_names() -> set[str]:
    """Every series name (histograms with their _bucket/_sum/_count) exported by build_metrics."""
    registry = CollectorRegistry()
    build_metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names
