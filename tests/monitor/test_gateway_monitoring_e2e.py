"""Monitoring through the real gateway, the real engine and a real Prometheus server."""

from __future__ import annotations

import csv
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorafleet.registry import Registry
from tests.support import free_port, spawn_gateway, versions_loaded, wait_until

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
TOKEN = {"authorization": "Bearer test-admin-token"}
MESSAGES = [{"role": "user", "content": "I still have not received my new card, where is it?"}]


def _sample(metrics_text: str, name: str, **labels: str) -> float | None:
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(part.split("=", 1) for part in line[len(name) + 1 : line.index("}")].split(","))
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _hand_entropy(content: list[dict[str, Any]]) -> float:
    """H_k of each token, from its top-k logprobs, the remaining mass lumped into one pseudo-token."""
    per_token = []
    for token in content:
        probs = [math.exp(t["logprob"]) for t in token["top_logprobs"]]
        rest = 1 - sum(probs)
        h = -sum(p * math.log(p) for p in probs if p > 0)
        if rest > 1e-12:
            h -= rest * math.log(rest)
        per_token.append(h)
    return sum(per_token) / len(per_token)


def test_entropy_equals_the_hand_computed_value_from_the_engines_logprobs(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, _) = trained_registry
    gw = start_gateway(f"routes:\n  banking:\n    stable: {v1}\n", registry, [engine.url], entropy_top_k=5)
    wait_until(lambda: versions_loaded(gw.url, [v1]), what="adapter loaded")
    direct = httpx.post(
        f"{engine.url}/v1/chat/completions",
        json={
            "model": v1,
            "messages": MESSAGES,
            "max_tokens": 6,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 5,
        },
        timeout=60,
    ).json()
    expected = _hand_entropy(direct["choices"][0]["logprobs"]["content"])
    reply = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "banking", "messages": MESSAGES, "max_tokens": 6, "temperature": 0},
        timeout=60,
    ).json()
    assert reply["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert reply["choices"][0]["logprobs"] is None
    metrics = httpx.get(f"{gw.url}/metrics").text
    observed = _sample(metrics, "lorafleet_response_token_entropy_nats_sum", route="banking", version=v1)
    assert _sample(metrics, "lorafleet_response_token_entropy_nats_count", route="banking", version=v1) == 1
    assert observed == pytest.approx(expected, abs=1e-3)


def test_prometheus_scrapes_the_gateway_and_answers_per_version_queries(
    start_gateway: Any,
    engine: Any,
    trained_registry: tuple[Registry, list[str]],
    prometheus: Callable[[list[str]], str],
) -> None:
    registry, (v1, v2) = trained_registry
    gw = start_gateway(f"routes:\n  banking:\n    stable: {v1}\n    pinned: [{v2}]\n", registry, [engine.url])
    wait_until(lambda: versions_loaded(gw.url, [v1, v2]), what="adapters loaded")
    prom = prometheus([f"127.0.0.1:{gw.port}"])
    for model, n in ((v1, 3), (v2, 2)):
        for _ in range(n):
            r = httpx.post(
                f"{gw.url}/v1/completions",
                json={"model": model, "prompt": "card", "max_tokens": 2},
                timeout=60,
            )
            assert r.status_code == 200

    def query(promql: str) -> dict[str, float]:
        body = httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert body["status"] == "success", body
        return {item["metric"].get("version", ""): float(item["value"][1]) for item in body["data"]["result"]}

    promql = 'sum by (version) (lorafleet_router_requests_total{route="banking"})'
    wait_until(lambda: query(promql) == {v1: 3.0, v2: 2.0}, timeout_s=30, what="the scrape")
    p95 = query(
        'histogram_quantile(0.95, sum by (version, le) (lorafleet_router_request_duration_seconds_bucket{route="banking"}))'
    )
    assert set(p95) == {v1, v2} and all(v > 0 for v in p95.values())
    up = query("lorafleet_engine_up")
    assert list(up.values()) == [1.0]
    # vLLM's own /metrics stays scrapeable beside lorafleet's.
    assert "vllm:" in httpx.get(f"{engine.url}/metrics").text


def test_feedback_gives_live_accuracy_and_survives_a_restart(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]], tmp_path: Path
) -> None:
    registry, (v1, _) = trained_registry
    state = tmp_path / "state"
    routes = f"routes:\n  banking:\n    stable: {v1}\n"
    gw = start_gateway(routes, registry, [engine.url], state_dir=state)
    wait_until(lambda: versions_loaded(gw.url, [v1]), what="adapter loaded")
    ids = []
    for i in range(4):
        r = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={
                "model": "banking",
                "messages": [{"role": "user", "content": f"card question {i}"}],
                "max_tokens": 4,
            },
            timeout=60,
        )
        ids.append(r.json()["id"])
    verdicts: list[dict[str, Any]] = [
        {"correct": True},
        {"correct": True},
        {"correct": False},
        {"label": "card_arrival"},
    ]
    for cid, verdict in zip(ids, verdicts, strict=True):
        r = httpx.post(f"{gw.url}/v1/feedback", json={"completion_id": cid, **verdict})
        assert r.status_code == 201, r.text
        assert r.json()["version"] == v1
    status = httpx.get(f"{gw.url}/admin/monitor", headers=TOKEN).json()["versions"][0]
    assert status["feedback"]["total"] == 4
    before = status["live_accuracy"]
    gw.stop()

    again = start_gateway(routes, registry, [engine.url], state_dir=state)
    # The gauges are back from the persisted feedback at start-up, before any feedback or status call.
    metrics = httpx.get(f"{again.url}/metrics").text
    assert _sample(metrics, "lorafleet_live_accuracy_ratio", route="banking", version=v1) == before
    repeat = httpx.post(f"{again.url}/v1/feedback", json={"completion_id": ids[0], "correct": True})
    assert repeat.status_code == 200 and repeat.json()["correct"] is True
    conflict = httpx.post(f"{again.url}/v1/feedback", json={"completion_id": ids[0], "correct": False})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"
    unknown = httpx.post(f"{again.url}/v1/feedback", json={"completion_id": "chatcmpl-nope", "correct": True})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "completion_id"
    for bad in (
        {"correct": True},
        {"completion_id": ids[1]},
        {"completion_id": ids[1], "correct": "yes"},
        [1],
    ):
        r = httpx.post(f"{again.url}/v1/feedback", json=bad)
        assert r.status_code == 400, (bad, r.text)
    status = httpx.get(f"{again.url}/admin/monitor", headers=TOKEN).json()["versions"][0]
    assert status["feedback"]["total"] == 4
    low, high = status["live_accuracy_interval"]
    assert low < status["live_accuracy"] < high


def _queries(path: Path, limit: int) -> list[str]:
    with path.open(newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh)][:limit]


def test_shifted_traffic_raises_input_drift_and_in_distribution_traffic_does_not(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, _) = trained_registry
    gw = start_gateway(
        f"routes:\n  banking:\n    stable: {v1}\n",
        registry,
        [engine.url],
        drift_window=200,
        drift_min_samples=150,
    )
    wait_until(lambda: versions_loaded(gw.url, [v1]), what="adapter loaded")

    def send(texts: list[str]) -> None:
        with httpx.Client(timeout=60) as client:
            for text in texts:
                r = client.post(
                    f"{gw.url}/v1/completions", json={"model": "banking", "prompt": text, "max_tokens": 1}
                )
                assert r.status_code == 200

    def psi(feature: str) -> float | None:
        return _sample(
            httpx.get(f"{gw.url}/metrics").text, "lorafleet_drift_psi", version=v1, feature=feature
        )

    # In distribution: queries of the same ten intents held out of the demo data (BANKING77's test split).
    demo_labels = {row["label"] for row in csv.DictReader((ROOT / "data/banking77/demo.csv").open())}
    # BANKING77's test split lies in the shared folder beside the checkout, where there is one.
    test_csv = ROOT.parent / "shared" / "datasets" / "banking77" / "test.csv"
    held_out: list[str] = []
    if test_csv.exists():
        with test_csv.open(newline="") as fh:
            held_out = [row["text"] for row in csv.DictReader(fh) if row["category"] in demo_labels]
    if len(held_out) < 200:
        held_out = _queries(ROOT / "data/banking77/demo.csv", 200)
    send(held_out[:200])
    wait_until(lambda: psi("input_vocabulary") is not None, timeout_s=15, what="drift published")
    assert (psi("input_vocabulary") or 0) < 0.2
    # Shifted: queries of ten intents the adapter never saw.
    send(_queries(ROOT / "data/banking77/shifted.csv", 200))
    wait_until(lambda: (psi("input_vocabulary") or 0) >= 0.2, timeout_s=15, what="the drift signal")


def _gateways_report(procs: list[subprocess.Popen[bytes]], urls: list[str], logs: Path, engine: Any) -> str:
    """What each spawned gateway did (exit status, what it lists, the end of its log), and the engine."""
    engine_log = Path(engine.settings.log_file).read_text(errors="replace")[-3000:]
    lines = [f"engine {engine.url}: restarts {engine.supervisor.restarts}; log:\n{engine_log}"]
    for proc, url, name in zip(procs, urls, ("a", "b"), strict=True):
        try:
            models = httpx.get(f"{url}/v1/models", timeout=5).text[:2000]
        except httpx.HTTPError as exc:
            models = f"unreachable: {exc!r}"
        log = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
        lines.append(f"gateway {name} at {url}: exit status {proc.poll()}\n/v1/models: {models}\nlog:\n{log}")
    return "\n".join(lines)


def test_two_gateway_processes_one_prometheus_one_controller(
    engine: Any,
    trained_registry: tuple[Registry, list[str]],
    tmp_path: Path,
    prometheus: Callable[[list[str]], str],
) -> None:
    """The controller in gateway A advances a canary on traffic only gateway B served, read from Prometheus."""
    registry, (v1, v2) = trained_registry
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        f"routes:\n  banking:\n    stable: {v1}\n    canary:\n      version: {v2}\n      steps:\n"
        "        - set_weight: 50\n"
        "        - analysis: {min_requests: 8, max_p95_latency_ratio: 100, max_entropy_shift_nats: 5, interval_s: 1, inconclusive_limit: 0}\n"
    )
    engine.wait_healthy()  # the supervisor may be restarting it
    port_a, port_b = free_port(), free_port()
    a_url, b_url = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    prom = prometheus([f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"])
    procs = [
        spawn_gateway(
            port_a, routes, registry.root, engine.url, tmp_path / "a.log", "--prometheus-url", prom
        ),
        spawn_gateway(
            port_b, routes, registry.root, engine.url, tmp_path / "b.log", "--controller", "external"
        ),
    ]
    try:
        try:
            wait_until(
                lambda: versions_loaded(a_url, [v1, v2]) and versions_loaded(b_url, [v1, v2]),
                timeout_s=180,
                what="both gateways up",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n{_gateways_report(procs, [a_url, b_url], tmp_path, engine)}"
            ) from None
        wait_until(
            lambda: (
                httpx.get(f"{b_url}/admin/status", headers=TOKEN).json()["routes"]["banking"]["canary"][
                    "weight"
                ]
                == 50
            ),
            what="the controller's first step",
        )

        def scraped_at_zero() -> bool:
            # increase() counts from the first sample Prometheus has: it must see the series at 0 first.
            query = f'lorafleet_router_requests_total{{version="{v2}",arm="canary",code_class="2xx"}}'
            result = httpx.get(f"{prom}/api/v1/query", params={"query": query}).json()["data"]["result"]
            return len(result) == 2 and all(r["value"][1] == "0" for r in result)

        wait_until(scraped_at_zero, what="Prometheus to scrape both gateways")
        with httpx.Client(timeout=60) as client:
            served = [
                client.post(
                    f"{b_url}/v1/completions",
                    json={"model": "banking", "prompt": "card", "max_tokens": 1, "user": f"u{i}"},
                )
                for i in range(40)
            ]
        assert all(r.status_code == 200 for r in served)
        assert sum(r.headers["x-lorafleet-version"] == v2 for r in served) >= 10
        wait_until(
            lambda: (
                httpx.get(f"{a_url}/admin/status", headers=TOKEN).json()["routes"]["banking"]["stable"] == v2
            ),
            timeout_s=120,
            what="promotion decided from Prometheus",
        )
        a_metrics = httpx.get(f"{a_url}/metrics").text
        served_by_a = _sample(
            a_metrics, "lorafleet_router_requests_total", version=v2, arm="canary", code_class="2xx"
        )
        assert served_by_a == 0.0  # A served none of it: its series exists, at zero
        assert 'lorafleet_rollout_gate_decisions_total{result="pass",route="banking"} 1.0' in a_metrics
        wait_until(
            lambda: (
                httpx.get(f"{b_url}/admin/status", headers=TOKEN).json()["routes"]["banking"]["stable"] == v2
            ),
            what="replica B reading the promotion",
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
