"""Rollouts through the real gateway and the real engine: canary steps, gate rollback, promote and
rollback under traffic, shadow traffic, retention with an injectable clock, the admin API's guards."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lorafleet.registry import Registry
from router.gateway import VERSION_HEADER
from tests.support import versions_loaded, wait_until

pytestmark = pytest.mark.engine

TOKEN = {"authorization": "Bearer test-admin-token"}
PROMPT = {"prompt": "My card has not arrived yet", "max_tokens": 2, "temperature": 0}


def _status(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/status", headers=TOKEN).json()  # type: ignore[no-any-return]


class Traffic:
    """Background clients sending completions to the route; every answer's status and version is kept."""

    def __init__(self, url: str, threads: int = 2) -> None:
        self.url = url
        self.seen: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                r = client.post(
                    f"{self.url}/v1/completions",
                    json={"model": "banking", **PROMPT, "user": f"w{worker}-{i}"},
                )
                self.seen.append((r.status_code, r.headers.get(VERSION_HEADER, "")))
                i += 1

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def _canary_routes(v1: str, v2: str, steps: str, fallback: str = "") -> str:
    return f"routes:\n  banking:\n    stable: {v1}\n{fallback}    canary:\n      version: {v2}\n      steps:\n{steps}"


def test_a_canary_advances_through_its_steps_on_good_signals_and_is_promoted(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, v2) = trained_registry
    steps = (
        "        - set_weight: 30\n"
        "        - pause: {duration_s: 0.5, min_requests: 3}\n"
        "        - analysis: {min_requests: 3, max_p95_latency_ratio: 50, max_entropy_shift_nats: 5, interval_s: 0.3}\n"
        "        - set_weight: 70\n"
        "        - analysis: {min_requests: 3, max_p95_latency_ratio: 50, max_entropy_shift_nats: 5, interval_s: 0.3}\n"
    )
    gw = start_gateway(_canary_routes(v1, v2, steps), registry, [engine.url], controller_interval_s=0.3)
    wait_until(lambda: versions_loaded(gw.url, [v1, v2]), what="adapters loaded")
    with Traffic(gw.url) as traffic:
        wait_until(
            lambda: _status(gw.url)["routes"]["banking"]["stable"] == v2, timeout_s=120, what="promotion"
        )
    assert traffic.seen and all(code == 200 for code, _ in traffic.seen)
    assert {v for _, v in traffic.seen} == {v1, v2}
    events = httpx.get(f"{gw.url}/admin/history", headers=TOKEN, params={"route": "banking"}).json()["events"]
    actions = [e["action"] for e in events]
    assert actions.count("gate_pass") == 2 and actions[-1] == "promote"
    weights = [e["after"]["canary"]["weight"] for e in events if e["action"] == "set_weight"]
    assert weights == [30, 70]
    route = _status(gw.url)["routes"]["banking"]
    assert route["previous"] == v1 and {v["version"]: v["state"] for v in route["versions"]}[v1] == "retiring"
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'lorafleet_rollout_gate_decisions_total{result="pass",route="banking"} 2.0' in metrics
    states = {
        (s.labels["version"], s.labels["state"])
        for family in text_string_to_metric_families(metrics)
        if family.name == "lorafleet_version_info"
        for s in family.samples
        if s.labels["route"] == "banking" and s.value == 1
    }
    assert states == {(v2, "stable"), (v1, "retiring")}


def test_a_failing_gate_rolls_the_canary_back_with_the_reason(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]], fault_proxy: Any
) -> None:
    registry, (v1, v2) = trained_registry
    steps = "        - set_weight: 50\n        - analysis: {min_requests: 6, max_error_ratio: 0.2, interval_s: 0.3}\n        - set_weight: 100\n"
    count = itertools.count(1)
    faults = fault_proxy(engine.url, fail=lambda body: v2.encode() in body and next(count) % 2 == 0)
    gw = start_gateway(_canary_routes(v1, v2, steps), registry, [faults.url], controller_interval_s=0.3)
    wait_until(lambda: versions_loaded(gw.url, [v1, v2]), what="adapters loaded")
    with Traffic(gw.url):
        wait_until(
            lambda: _status(gw.url)["routes"]["banking"]["canary"] is None, timeout_s=120, what="the rollback"
        )
    route = _status(gw.url)["routes"]["banking"]
    assert route["stable"] == v1
    abort = [
        e
        for e in httpx.get(f"{gw.url}/admin/history", headers=TOKEN).json()["events"]
        if e["action"] == "abort"
    ]
    assert abort and abort[-1]["actor"] == "controller" and "error ratio" in abort[-1]["reason"]
    assert (
        'lorafleet_rollout_rollbacks_total{reason="gate",route="banking"} 1.0'
        in httpx.get(f"{gw.url}/metrics").text
    )
    after = [
        httpx.post(f"{gw.url}/v1/completions", json={"model": "banking", **PROMPT, "user": f"x{i}"})
        for i in range(5)
    ]
    assert all(r.headers[VERSION_HEADER] == v1 for r in after)


def test_promote_and_rollback_under_traffic_fail_no_request(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, v2) = trained_registry
    gw = start_gateway(f"routes:\n  banking:\n    stable: {v1}\n    pinned: [{v2}]\n", registry, [engine.url])
    wait_until(lambda: versions_loaded(gw.url, [v1, v2]), what="adapters loaded")
    with Traffic(gw.url, threads=3) as traffic:
        time.sleep(1.5)
        r = httpx.post(
            f"{gw.url}/admin/routes/banking/promote", headers=TOKEN, json={"version": v2, "reason": "test"}
        )
        assert r.status_code == 200, r.text
        wait_until(lambda: traffic.seen[-1][1] == v2, what="traffic on v2")
        time.sleep(1.5)
        r = httpx.post(f"{gw.url}/admin/routes/banking/rollback", headers=TOKEN, json={"reason": "test"})
        assert r.status_code == 200, r.text
        wait_until(lambda: traffic.seen[-1][1] == v1, what="traffic back on v1")
        time.sleep(1)
    codes = collections.Counter(code for code, _ in traffic.seen)
    assert codes == {200: len(traffic.seen)}, codes
    versions = [v for _, v in traffic.seen]
    first_v2, last_v2 = versions.index(v2), len(versions) - 1 - versions[::-1].index(v2)
    assert set(versions[:first_v2]) == {v1} and set(versions[last_v2 + 1 :]) == {v1}
    route = _status(gw.url)["routes"]["banking"]
    assert route["stable"] == v1 and route["previous"] == v2


def test_shadow_traffic_leaves_the_answers_unchanged_and_is_scored(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, v2) = trained_registry
    gw = start_gateway(f"routes:\n  banking:\n    stable: {v1}\n    pinned: [{v2}]\n", registry, [engine.url])
    wait_until(lambda: versions_loaded(gw.url, [v1, v2]), what="adapters loaded")
    prompts = [f"Where is my card number {i}?" for i in range(6)]

    def answers() -> list[str]:
        return [
            httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={
                    "model": "banking",
                    "messages": [{"role": "user", "content": p}],
                    "max_tokens": 6,
                    "temperature": 0,
                },
                timeout=60,
            ).json()["choices"][0]["message"]["content"]
            for p in prompts
        ]

    without = answers()
    r = httpx.post(
        f"{gw.url}/admin/routes/banking/shadow", headers=TOKEN, json={"version": v2, "percent": 100}
    )
    assert r.status_code == 200, r.text
    assert answers() == without

    def shadow_ok() -> float:
        for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
            if line.startswith(
                f'lorafleet_shadow_requests_total{{outcome="ok",route="banking",version="{v2}"}}'
            ):
                return float(line.split()[-1])
        return 0.0

    wait_until(lambda: shadow_ok() == len(prompts), what="shadow answers")
    metrics = httpx.get(f"{gw.url}/metrics").text
    compared = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("lorafleet_shadow_comparisons_total{")
    )
    assert compared == len(prompts)


class MovableClock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def test_a_retired_version_stays_pinnable_for_the_retention_then_is_unloaded(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, v2) = trained_registry
    clock = MovableClock()
    gw = start_gateway(
        f"retention_days: 14\nroutes:\n  banking:\n    stable: {v1}\n    pinned: [{v2}]\n",
        registry,
        [engine.url],
        controller_interval_s=0.2,
        app_kwargs={"clock": clock},
    )
    wait_until(lambda: versions_loaded(gw.url, [v1, v2]), what="adapters loaded")
    assert (
        httpx.post(f"{gw.url}/admin/routes/banking/promote", headers=TOKEN, json={"version": v2}).status_code
        == 200
    )
    model = {m["id"]: m for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}[v1]
    until = dt.datetime.fromisoformat(model["lorafleet"]["retiring_until"])
    assert model["lorafleet"]["state"] == "retiring" and until - clock.now == dt.timedelta(days=14)
    pinned = httpx.post(f"{gw.url}/v1/completions", json={"model": v1, **PROMPT})
    assert pinned.status_code == 200 and pinned.headers[VERSION_HEADER] == v1

    clock.now += dt.timedelta(days=13)
    time.sleep(1)
    assert v1 in {m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}
    clock.now += dt.timedelta(days=2)
    wait_until(
        lambda: v1 not in {m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}, what="expiry"
    )
    wait_until(
        lambda: v1 not in httpx.get(f"{engine.url}/v1/models").json()["data"].__repr__(), what="engine unload"
    )
    gone = httpx.post(f"{gw.url}/v1/completions", json={"model": v1, **PROMPT})
    assert gone.status_code == 404
    assert any(
        e["action"] == "expire" for e in httpx.get(f"{gw.url}/admin/history", headers=TOKEN).json()["events"]
    )


def test_two_concurrent_admin_writes_one_gets_409(
    start_gateway: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, v2) = trained_registry
    gw = start_gateway(f"routes:\n  banking:\n    stable: {v1}\n", registry, ["http://127.0.0.1:9"])
    revision = _status(gw.url)["revision"]
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def write(weight: int) -> None:
        barrier.wait()
        r = httpx.post(
            f"{gw.url}/admin/routes/banking/weights",
            headers=TOKEN,
            json={"weights": {v2: weight}, "revision": revision},
        )
        codes.append(r.status_code)

    threads = [threading.Thread(target=write, args=(w,)) for w in (10, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409]
    assert _status(gw.url)["revision"] == revision + 1
