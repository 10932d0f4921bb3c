"""Request-path metric updates applied in bulk show the same values as updates made one by one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from monitor.metrics import build_metrics


def _values(registry: CollectorRegistry) -> list[str]:
    """The exposition without the `_created` timestamps (those differ by when each series began)."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created{" not in line and "_created " not in line]


def test_pending_updates_expose_what_direct_updates_would() -> None:
    direct_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    direct, batched = build_metrics(direct_registry), build_metrics(batched_registry)
    durations = [0.003, 0.01, 0.0100001, 0.2, 0.2, 7.5, 100.0, 0.0]
    for value in durations:
        direct.request_duration.labels("r", "v1").observe(value)
        batched.pending.observe(batched.request_duration.labels("r", "v1"), value)
    for amount in (1, 1, 5):
        direct.tokens.labels("r", "v1", "input").inc(amount)
        batched.pending.inc(batched.tokens.labels("r", "v1", "input"), amount)
    batched.pending.observe(batched.entropy.labels("r", "v1"), float("nan"))
    direct.entropy.labels("r", "v1").observe(float("nan"))

    # Collecting (what /metrics and the local gate signals do) applies what is pending first.
    assert _values(batched_registry) == _values(direct_registry)
    assert (
        batched_registry.get_sample_value(
            "lorafleet_router_tokens_total", {"route": "r", "version": "v1", "direction": "input"}
        )
        == 7
    )
