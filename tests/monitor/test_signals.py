"""Gate signals from lorafleet's own metrics: in-process deltas, and PromQL against a real Prometheus."""

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from monitor.errors import SignalsUnavailableError
from monitor.gate import VersionSignals
from monitor.metrics import Arm, DriftFeature, ErrorReason, Metrics, build_metrics
from monitor.signals import LocalSignals, PrometheusSignals, histogram_quantile

ROUTE = "banking"
STABLE = "banking-v1-20261124"
CANARY = "banking-v2-20261201"
INF = math.inf


def test_histogram_quantile_interpolates_like_promql() -> None:
    # 90 observations up to 0.25, 10 in (0.5, 1]: rank 95 sits halfway through the (0.5, 1] bucket.
    buckets = [(0.1, 0.0), (0.25, 90.0), (0.5, 90.0), (1.0, 100.0), (INF, 100.0)]
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.15 * 50 / 90)
    assert histogram_quantile(0.01, [(1.0, 10.0), (INF, 10.0)]) == pytest.approx(0.01)  # from 0
    # A rank in the +Inf bucket answers the largest finite bound.
    assert histogram_quantile(0.99, [(1.0, 50.0), (2.0, 90.0), (INF, 100.0)]) == 2.0
    assert histogram_quantile(0.95, [(1.0, 0.0), (INF, 0.0)]) is None
    assert histogram_quantile(0.95, [(1.0, 3.0)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, list(reversed(buckets))) == histogram_quantile(0.5, buckets)


def plant(metrics: Metrics, version: str, *, requests: int, errors: dict[ErrorReason, int]) -> None:
    for _ in range(requests):
        metrics.requests.labels(ROUTE, version, Arm.CANARY.value, "2xx").inc()
    for reason, n in errors.items():
        metrics.errors.labels(ROUTE, version, reason.value).inc(n)


def observe_latencies(metrics: Metrics, version: str) -> None:
    for _ in range(45):
        metrics.request_duration.labels(ROUTE, version).observe(0.2)
    for _ in range(5):
        metrics.request_duration.labels(ROUTE, version).observe(0.7)


def test_local_signals_measure_what_happened_since_the_mark() -> None:
    registry = CollectorRegistry()
    metrics = build_metrics(registry)
    local = LocalSignals(registry)
    # Before the mark: must not count.
    plant(metrics, CANARY, requests=7, errors={ErrorReason.TIMEOUT: 7})
    metrics.request_duration.labels(ROUTE, CANARY).observe(25.0)
    metrics.entropy.labels(ROUTE, CANARY).observe(3.0)
    metrics.feedback.labels(ROUTE, CANARY, "incorrect").inc(9)
    snapshot = local.mark(ROUTE, CANARY)

    plant(metrics, CANARY, requests=50, errors={ErrorReason.UPSTREAM_ERROR: 3, ErrorReason.BAD_REQUEST: 4})
    plant(metrics, STABLE, requests=500, errors={ErrorReason.TIMEOUT: 50})  # another version
    observe_latencies(metrics, CANARY)
    for value in (0.1, 0.3, 0.5):
        metrics.entropy.labels(ROUTE, CANARY).observe(value)
    metrics.drift_psi.labels(ROUTE, CANARY, "input_length").set(0.04)
    metrics.drift_psi.labels(ROUTE, CANARY, "input_vocabulary").set(0.31)
    metrics.feedback.labels(ROUTE, CANARY, "correct").inc(30)
    metrics.feedback.labels(ROUTE, CANARY, "incorrect").inc(5)

    got = local.since(snapshot)
    assert got == VersionSignals(
        requests=50,
        errors=3,  # bad_request is the client's mistake, not the version's
        p95_latency_s=got.p95_latency_s,
        mean_entropy_nats=got.mean_entropy_nats,
        drift_psi={DriftFeature.INPUT_LENGTH: 0.04, DriftFeature.INPUT_VOCABULARY: 0.31},
        feedback_correct=30,
        feedback_total=35,
    )
    assert got.p95_latency_s == pytest.approx(0.75)
    assert got.mean_entropy_nats == pytest.approx(0.3)


def test_local_signals_of_a_quiet_version() -> None:
    registry = CollectorRegistry()
    local = LocalSignals(registry)
    build_metrics(registry)
    got = local.since(local.mark(ROUTE, CANARY))
    assert got == VersionSignals(requests=0)


# --- against a real Prometheus --------------------------------------------------------------


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def _wait_for(url: str, promql: str, expected: float, timeout_s: float = 60) -> float:
    """Wait until a scalar-like query answers `expected`; return the evaluation time."""
    deadline = time.monotonic() + timeout_s
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = _query(url, promql)
        if seen and float(seen[0]["value"][1]) == expected:
            return float(seen[0]["value"][0])
        time.sleep(0.2)
    raise AssertionError(f"{promql} never reached {expected}; last answer {seen}")


def test_prometheus_signals_sum_every_replica(
    prometheus: Callable[[list[str]], str], exporters: Callable[[], Any]
) -> None:
    a, b = exporters(), exporters()
    for replica in (a, b):
        m: Metrics = replica.metrics
        # Series exist from the start, at zero, as the gateway creates them for its routes.
        for version in (STABLE, CANARY):
            m.requests.labels(ROUTE, version, Arm.CANARY.value, "2xx")
            m.request_duration.labels(ROUTE, version)
            m.entropy.labels(ROUTE, version)
            for reason in ErrorReason:
                m.errors.labels(ROUTE, version, reason.value)
            for outcome in ("correct", "incorrect"):
                m.feedback.labels(ROUTE, version, outcome)
    url = prometheus([a.target, b.target])
    first_zero = _wait_for(url, "count(lorafleet_router_requests_total == 0)", 4)

    # What two replicas saw. Everything else first, requests last: once Prometheus shows a replica's
    # requests, it has scraped the rest of that replica too.
    observe_latencies(a.metrics, CANARY)
    for value in (0.2, 0.4) * 10:
        a.metrics.entropy.labels(ROUTE, CANARY).observe(value)
    a.metrics.drift_psi.labels(ROUTE, CANARY, "input_length").set(0.05)
    b.metrics.drift_psi.labels(ROUTE, CANARY, "input_vocabulary").set(0.25)
    b.metrics.drift_psi.labels(ROUTE, CANARY, "input_length").set(0.08)
    a.metrics.feedback.labels(ROUTE, CANARY, "correct").inc(20)
    b.metrics.feedback.labels(ROUTE, CANARY, "correct").inc(10)
    b.metrics.feedback.labels(ROUTE, CANARY, "incorrect").inc(5)
    plant(a.metrics, CANARY, requests=30, errors={ErrorReason.UPSTREAM_ERROR: 3})
    plant(b.metrics, CANARY, requests=20, errors={ErrorReason.TIMEOUT: 1, ErrorReason.BAD_REQUEST: 5})
    plant(a.metrics, STABLE, requests=100, errors={})
    plant(b.metrics, STABLE, requests=50, errors={})
    at = _wait_for(url, "sum(lorafleet_router_requests_total)", 200)
    # increase() extrapolates to the window's end by up to one scrape interval; the longer the
    # series, the smaller that error. Give it 6 s of history.
    while at - first_zero < 6:
        time.sleep(0.5)
        at = _wait_for(url, "sum(lorafleet_router_requests_total)", 200)

    async def read() -> tuple[VersionSignals, dict[tuple[str, str], VersionSignals]]:
        async with httpx.AsyncClient(timeout=10) as client:
            signals = PrometheusSignals(url, window_s=120, client=client)
            return await signals.signals(ROUTE, CANARY, at=at), await signals.versions(ROUTE, at=at)

    canary, every = asyncio.run(read())
    assert set(every) == {(ROUTE, STABLE), (ROUTE, CANARY)}
    assert every[(ROUTE, CANARY)] == canary
    # Counts: summed over both replicas, never below what happened, at most one interval's
    # extrapolation above it.
    assert 50 <= canary.requests <= 50 * 1.2
    # Counts are rounded: 4 errors with up to 20% extrapolation may read 5 (seen once).
    assert 4 <= canary.errors <= round(4 * 1.2)  # bad_request left out
    assert 150 <= every[(ROUTE, STABLE)].requests <= 150 * 1.2
    assert 30 <= canary.feedback_correct <= 30 * 1.2
    assert 35 <= canary.feedback_total <= 35 * 1.2
    # Ratios within one replica are exact: latency and entropy came from replica a only.
    assert canary.p95_latency_s == pytest.approx(0.75, rel=1e-6)
    assert canary.mean_entropy_nats == pytest.approx(0.3, rel=1e-6)
    # Drift per feature, the largest over replicas.
    assert canary.drift_psi == {DriftFeature.INPUT_LENGTH: 0.08, DriftFeature.INPUT_VOCABULARY: 0.25}
    assert canary.max_drift_psi == 0.25
    assert every[(ROUTE, STABLE)].drift_psi == {}
    assert every[(ROUTE, STABLE)].max_drift_psi is None
    assert every[(ROUTE, STABLE)].mean_entropy_nats is None  # 0 / 0


def test_prometheus_errors_are_ours(prometheus: Callable[[list[str]], str]) -> None:
    url = prometheus([])

    async def ask(base: str, promql: str) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            await PrometheusSignals(base, window_s=60, client=client).query(promql)

    with pytest.raises(SignalsUnavailableError, match="refused the query"):
        asyncio.run(ask(url, "sum(("))
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(SignalsUnavailableError, match="did not answer"):
        asyncio.run(ask(dead, "up"))
    assert asyncio.run(_versions(url)) == {}


async def _versions(url: str) -> dict[tuple[str, str], VersionSignals]:
    async with httpx.AsyncClient(timeout=5) as client:
        return await PrometheusSignals(url, window_s=60, client=client).versions()
