"""Where the canary gate's numbers come from: lorafleet's own metrics, in-process or from Prometheus.

    LocalSignals(registry)      one gateway process: snapshot its CollectorRegistry, later subtract
        mark(route, version) -> Snapshot
        since(snapshot) -> VersionSignals
    PrometheusSignals(base_url, window_s, client)   every gateway replica, by PromQL over HTTP
        await versions(route=None) -> {(route, version): VersionSignals}
        await signals(route, version) -> VersionSignals
    histogram_quantile(q, buckets)   PromQL's interpolation over cumulative buckets

Both read the same series and count the same way:
    requests        lorafleet_router_requests_total, every arm and status class
    errors          lorafleet_router_errors_total except the client's own mistakes
                    (bad_request, unauthorized, not_found, client_cancelled: CLIENT_ERROR_REASONS)
    p95 latency     lorafleet_router_request_duration_seconds buckets
    mean entropy    lorafleet_response_token_entropy_nats sum / count
    drift PSI       the current lorafleet_drift_psi of each feature (the largest over replicas)
    feedback        lorafleet_feedback_total by outcome (correct, incorrect)
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from monitor.errors import SignalsUnavailableError
from monitor.feedback import FeedbackOutcome
from monitor.gate import VersionSignals
from monitor.metrics import DriftFeature, ErrorReason

CLIENT_ERROR_REASONS: frozenset[ErrorReason] = frozenset(
    {ErrorReason.BAD_REQUEST, ErrorReason.UNAUTHORIZED, ErrorReason.NOT_FOUND, ErrorReason.CLIENT_CANCELLED}
)
CLIENT_ERROR_REASONS_RE = "|".join(sorted(r.value for r in CLIENT_ERROR_REASONS))

REQUESTS = "lorafleet_router_requests_total"
ERRORS = "lorafleet_router_errors_total"
DURATION = "lorafleet_router_request_duration_seconds"
ENTROPY = "lorafleet_response_token_entropy_nats"
DRIFT_PSI = "lorafleet_drift_psi"
DRIFT_FEATURES = frozenset(f.value for f in DriftFeature)
FEEDBACK = "lorafleet_feedback_total"


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram as PromQL computes it; None where PromQL answers NaN.

    `buckets` are (upper bound, cumulative count) pairs, the last bound +Inf. Within the bucket
    holding the rank the value is interpolated linearly; a rank in the +Inf bucket gives the
    largest finite bound; the first bucket starts at 0.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"`q` should be within [0, 1], got {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    # Counts must not decrease with the bound (they can, slightly, when read mid-update).
    fixed: list[tuple[float, float]] = []
    for bound, count in ordered:
        fixed.append((bound, max(count, fixed[-1][1]) if fixed else count))
    total = fixed[-1][1]
    if total <= 0:
        return None
    rank = q * total
    b = next(i for i, (_, count) in enumerate(fixed) if count >= rank)
    if b == len(fixed) - 1:
        return fixed[-2][0]
    if b == 0 and fixed[0][0] <= 0:
        return fixed[0][0]
    start, end, count = 0.0, fixed[b][0], fixed[b][1]
    if b > 0:
        start = fixed[b - 1][0]
        count -= fixed[b - 1][1]
        rank -= fixed[b - 1][1]
    return start + (end - start) * (rank / count) if count > 0 else start


# --- in-process -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Cumulative values of one (route, version) at a moment."""

    route: str
    version: str
    requests: float
    errors: float
    latency_buckets: tuple[tuple[float, float], ...]
    entropy_sum: float
    entropy_count: float
    feedback_correct: float
    feedback_incorrect: float


class LocalSignals:
    """VersionSignals of one process from its own registry, as differences between two readings."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def _samples(self, route: str, version: str) -> tuple[Snapshot, dict[DriftFeature, float]]:
        requests = errors = e_sum = e_count = correct = incorrect = 0.0
        buckets: dict[float, float] = defaultdict(float)
        drift: dict[DriftFeature, float] = {}
        for family in self.registry.collect():
            for s in family.samples:
                if s.labels.get("route") != route or s.labels.get("version") != version:
                    continue
                if s.name == REQUESTS:
                    requests += s.value
                elif s.name == ERRORS and s.labels.get("reason") not in CLIENT_ERROR_REASONS:
                    errors += s.value
                elif s.name == f"{DURATION}_bucket":
                    buckets[float(s.labels["le"])] += s.value
                elif s.name == f"{ENTROPY}_sum":
                    e_sum += s.value
                elif s.name == f"{ENTROPY}_count":
                    e_count += s.value
                elif (
                    s.name == DRIFT_PSI
                    and s.labels.get("feature") in DRIFT_FEATURES
                    and math.isfinite(s.value)
                ):
                    feature = DriftFeature(s.labels["feature"])
                    drift[feature] = max(s.value, drift.get(feature, s.value))
                elif s.name == FEEDBACK:
                    if s.labels.get("outcome") == FeedbackOutcome.CORRECT:
                        correct += s.value
                    elif s.labels.get("outcome") == FeedbackOutcome.INCORRECT:
                        incorrect += s.value
        snap = Snapshot(
            route,
            version,
            requests,
            errors,
            tuple(sorted(buckets.items())),
            e_sum,
            e_count,
            correct,
            incorrect,
        )
        return snap, drift

    def mark(self, route: str, version: str) -> Snapshot:
        """Read the current cumulative values of (route, version)."""
        return self._samples(route, version)[0]

    def since(self, snapshot: Snapshot) -> VersionSignals:
        """What (route, version) did between `snapshot` and now (drift: its current value)."""
        now, drift = self._samples(snapshot.route, snapshot.version)
        before = dict(snapshot.latency_buckets)
        deltas = [(le, max(0.0, count - before.get(le, 0.0))) for le, count in now.latency_buckets]
        d_count = now.entropy_count - snapshot.entropy_count
        correct = max(0, round(now.feedback_correct - snapshot.feedback_correct))
        incorrect = max(0, round(now.feedback_incorrect - snapshot.feedback_incorrect))
        return VersionSignals(
            requests=max(0, round(now.requests - snapshot.requests)),
            errors=max(0, round(now.errors - snapshot.errors)),
            p95_latency_s=histogram_quantile(0.95, deltas),
            mean_entropy_nats=max(0.0, (now.entropy_sum - snapshot.entropy_sum) / d_count)
            if d_count > 0
            else None,
            drift_psi=drift,
            feedback_correct=correct,
            feedback_total=correct + incorrect,
        )


# --- from Prometheus ------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _selector(route: str | None, version: str | None, *extra: str) -> str:
    parts = [f"route={_quote(route)}"] if route is not None else []
    if version is not None:
        parts.append(f"version={_quote(version)}")
    parts.extend(extra)
    return "{" + ",".join(parts) + "}"


def _finite(value: str) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


class PrometheusSignals:
    """VersionSignals over the last `window_s` seconds, summed over every replica Prometheus scrapes."""

    def __init__(self, base_url: str, window_s: float, client: httpx.AsyncClient) -> None:
        if window_s < 1:
            raise ValueError(f"`window_s` should be at least 1 second, got {window_s}")
        self.base_url = base_url.rstrip("/")
        self.window_s = window_s
        self.client = client

    def queries(self, route: str | None = None, version: str | None = None) -> dict[str, str]:
        """The PromQL behind each signal, by name (also handy to paste into Prometheus)."""
        w = f"[{round(self.window_s)}s]"
        sel = _selector(route, version)
        err = _selector(route, version, f'reason!~"{CLIENT_ERROR_REASONS_RE}"')
        by = "sum by (route, version)"
        return {
            "requests": f"{by} (increase({REQUESTS}{sel}{w}))",
            "errors": f"{by} (increase({ERRORS}{err}{w}))",
            "p95_latency_s": f"histogram_quantile(0.95, sum by (route, version, le) (increase({DURATION}_bucket{sel}{w})))",
            "mean_entropy_nats": f"{by} (increase({ENTROPY}_sum{sel}{w})) / {by} (increase({ENTROPY}_count{sel}{w}))",
            "drift_psi": f"max by (route, version, feature) ({DRIFT_PSI}{sel})",
            "feedback": f"sum by (route, version, outcome) (increase({FEEDBACK}{sel}{w}))",
        }

    async def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], str]]:
        """An instant query: (labels, value as text) per series of the resulting vector."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.base_url}/api/v1/query"
        try:
            response = await self.client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise SignalsUnavailableError(
                f"Prometheus at {self.base_url} did not answer: {exc!r}",
                hint="check the monitor's Prometheus URL and that the server is up",
            ) from exc
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, Mapping) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, Mapping) else response.text[:200]
            raise SignalsUnavailableError(
                f"Prometheus at {self.base_url} refused the query {promql!r}: HTTP {response.status_code}, {detail}"
            )
        data = body["data"]
        if data.get("resultType") != "vector":
            raise SignalsUnavailableError(
                f"expected an instant vector from {promql!r}, got {data.get('resultType')}"
            )
        return [(item["metric"], item["value"][1]) for item in data["result"]]

    async def versions(
        self, route: str | None = None, *, at: float | None = None
    ) -> dict[tuple[str, str], VersionSignals]:
        """Signals of every version (of one route, if given) that has data in the window.

        `at` evaluates at that Unix time instead of now (Prometheus' `time` parameter).
        """
        names = self.queries(route)
        results = await asyncio.gather(*(self.query(q, at) for q in names.values()))
        by_name = dict(zip(names, results, strict=True))
        fields: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)

        def each(name: str) -> Iterable[tuple[tuple[str, str], dict[str, str], float | None]]:
            for labels, value in by_name[name]:
                if "route" in labels and "version" in labels:
                    yield (labels["route"], labels["version"]), labels, _finite(value)

        for key, _, v in each("requests"):
            fields[key]["requests"] = round(v or 0.0)
        for key, _, v in each("errors"):
            fields[key]["errors"] = round(v or 0.0)
        for name in ("p95_latency_s", "mean_entropy_nats"):
            for key, _, v in each(name):
                fields[key][name] = max(0.0, v) if v is not None else None
        for key, labels, v in each("drift_psi"):
            feature = labels.get("feature")
            if v is not None and feature in DRIFT_FEATURES:
                fields[key].setdefault("drift_psi", {})[feature] = max(0.0, v)
        for key, labels, v in each("feedback"):
            if labels.get("outcome") not in (FeedbackOutcome.CORRECT, FeedbackOutcome.INCORRECT):
                continue
            n = round(v or 0.0)
            f = fields[key]
            f["feedback_total"] = f.get("feedback_total", 0) + n
            if labels["outcome"] == FeedbackOutcome.CORRECT:
                f["feedback_correct"] = f.get("feedback_correct", 0) + n
        out = {}
        for key, f in fields.items():
            f.setdefault("requests", 0)
            out[key] = VersionSignals(**f)
        return out

    async def signals(self, route: str, version: str, *, at: float | None = None) -> VersionSignals:
        """Signals of one version; all zero / None when Prometheus has nothing for it in the window."""
        found = await self.versions(route, at=at)
        return found.get((route, version), VersionSignals(requests=0))
