"""Endpoints as baselines: the spec, Retry-After, backoff (pure), and a real run through faults."""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from training.endpoints import Endpoint, backoff_s, retry_after_s
from training.errors import TrainingError


def test_the_endpoint_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-1")
    ep = Endpoint.parse(
        "mini=https://api.example.com/v1,model=gpt-4o-mini,key-env=MY_KEY,price-in=0.15,price-out=0.6"
    )
    assert (ep.name, ep.model, ep.api_key, ep.price_in_per_1m, ep.price_out_per_1m) == (
        "mini",
        "gpt-4o-mini",
        "sk-1",
        0.15,
        0.6,
    )
    assert ep.chat_url() == "https://api.example.com/v1/chat/completions"
    assert Endpoint.parse("local=http://127.0.0.1:8100").model == "local"
    for bad, words in (
        ("http://x", "expected NAME=URL"),
        ("a=ftp://x", r"not an http\(s\) URL"),
        ("a=http://x,colour=red", "unknown option 'colour=red'"),
        ("a=http://x,key-env=NOT_SET_ANYWHERE", "NOT_SET_ANYWHERE is not set"),
        ("a=http://x,timeout=-1", "timeout positive"),
    ):
        with pytest.raises(TrainingError, match=words):
            Endpoint.parse(bad)


def test_retry_after_in_seconds_or_as_a_date_and_the_backoff() -> None:
    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    now = 1_800_000_000.0
    assert retry_after_s(email.utils.formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7, abs=1)
    rng = random.Random(0)
    waits = [backoff_s(attempt, 0.5, 30.0, rng) for attempt in range(10)]
    assert all(0 <= w <= min(30.0, 0.5 * 2**i) for i, w in enumerate(waits))


@pytest.mark.engine
def test_a_baseline_through_429_500_and_a_timeout_completes_and_counts_its_retries(
    engine: Any, fault_proxy: Callable[..., Any], tiny_data: dict[str, Path]
) -> None:
    """The real engine, as an OpenAI-compatible endpoint, behind a proxy that injects faults."""
    from training.evaluate import baseline

    proxy = fault_proxy(engine.url, script=["429", "500", "hang"])
    ep = Endpoint.parse(f"local={proxy.url},model=base,timeout=3")
    report = baseline(tiny_data["test"], train_path=tiny_data["train"], endpoints=[ep])
    remote = report.models["endpoint:local"]
    assert remote.usage is not None
    assert remote.usage.retries == 3
    assert remote.usage.retried_statuses == {"429": 1, "500": 1, "ReadTimeout": 1}
    assert len(remote.answers) == 4 and all(remote.answers)
    assert remote.usage.prompt_tokens > 0 and remote.usage.completion_tokens > 0
    assert proxy.failed == 3
    assert set(report.models) == {"base", "endpoint:local"} and report.advice
