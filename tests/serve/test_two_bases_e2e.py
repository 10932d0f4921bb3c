"""Fleet serving with two base models: three real vLLM engines behind one gateway.

Engines 1 and 2 serve the embedded SmolLM2-135M-Instruct; engine 3 serves a real, different model
made from it (its first 20 of 30 layers). An adapter trained on each base lands only on the engines
of its base, requests reach only those, a version of a base nobody serves is refused, a killed
engine's traffic moves to the other engine of the same base, and an engine that joins gets its
placement.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorafleet.baseid import BaseIdentity, identify
from lorafleet.registry import NewVersion, Registry
from tests.conftest import ADMIN_TOKEN, EngineThread, TinyTask
from tests.support import free_port, truncated_model, wait_until

pytestmark = pytest.mark.engine

TOKEN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _served_requests(url: str) -> float:
    """Requests the engine finished, from its own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


def _placed(gateway: str) -> dict[str, list[str]]:
    status = httpx.get(f"{gateway}/admin/status", headers=TOKEN, timeout=10).json()
    return {
        v["version"]: sorted(v["loaded_on"]) for route in status["routes"].values() for v in route["versions"]
    }


def _ask(gateway: str, route: str, n: int) -> httpx.Response:
    return httpx.post(
        f"{gateway}/v1/chat/completions",
        json={"model": route, "messages": [{"role": "user", "content": f"card {n}"}], "max_tokens": 2},
        timeout=120,
    )


@pytest.fixture(scope="module")
def small_base(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return truncated_model(base_model_dir, tmp_path_factory.mktemp("bases") / "SmolLM2-20L", 20)


@pytest.fixture(scope="module")
def two_engines(
    small_base: Path, base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[EngineThread]]:
    """A second engine of the embedded base and one of the small base, started together."""
    logs = tmp_path_factory.mktemp("engines")
    same = EngineThread(free_port(), base_model_dir, logs / "same.log")
    small = EngineThread(free_port(), small_base, logs / "small.log")
    starters = [threading.Thread(target=e.start) for e in (same, small)]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    engines = [same, small]
    yield engines
    for e in engines:
        if e.thread.is_alive():
            e.stop()


def _registry(
    root: Path, tiny_task: TinyTask, trained: tuple[Registry, list[str]], small_base: Path, work: Path
) -> Registry:
    """`big-v1` (an adapter of the embedded base) and `small-v1` (trained here on the small base)."""
    from training.config import TrainConfig
    from training.dataset import write_jsonl
    from training.train import train

    session_registry, (v1, _) = trained
    registry = Registry(root)
    big = session_registry.get(v1)
    registry.register(
        "big",
        NewVersion(adapter_dir=big.adapter_path, base_model=big.info().base_model, labels=tiny_task.labels),
    )
    data = work / "train.jsonl"
    write_jsonl(data, tiny_task.train)
    out = work / "small-adapter"
    train(
        TrainConfig(base_model=str(small_base), epochs=1.0, batch_size=10, learning_rate=1e-3, rank=8),
        data,
        None,
        out,
        progress=False,
    )
    registry.register(
        "small", NewVersion(adapter_dir=out, base_model=str(small_base), labels=tiny_task.labels)
    )
    return registry


def test_two_bases_placed_routed_refused_moved_and_joined(
    engine: EngineThread,
    two_engines: list[EngineThread],
    trained_registry: tuple[Registry, list[str]],
    tiny_task: TinyTask,
    small_base: Path,
    base_model_dir: Path,
    start_gateway: Any,
    tmp_path: Path,
) -> None:
    same, small = two_engines
    registry = _registry(tmp_path / "registry", tiny_task, trained_registry, small_base, tmp_path)
    big_v, small_v = registry.versions("big")[0].name, registry.versions("small")[0].name
    assert registry.get(small_v).info().base == identify(small_base)
    routes = f"routes:\n  big:\n    stable: {big_v}\n    fallback: base\n  small:\n    stable: {small_v}\n"
    gw = start_gateway(routes, registry, [engine.url, same.url, small.url])

    # 1. Each version lands on the engines of its base only.
    wait_until(
        lambda: _placed(gw.url) == {big_v: sorted([engine.url, same.url]), small_v: [small.url]},
        timeout_s=120,
        what="each adapter on the engines of its base",
    )
    models = {m["id"]: m for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}
    assert models[big_v]["parent"] == "SmolLM2-135M-Instruct" and models[small_v]["parent"] == "SmolLM2-20L"

    # 2. Requests reach only engines that hold the version.
    before = {e.url: _served_requests(e.url) for e in (engine, same, small)}
    for n in range(6):
        assert _ask(gw.url, "small", n).status_code == 200
    after = {e.url: _served_requests(e.url) for e in (engine, same, small)}
    assert after[small.url] - before[small.url] == 6
    assert after[engine.url] == before[engine.url] and after[same.url] == before[same.url]

    # 3. A version whose base no engine serves is refused when named in a route.
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    for f in registry.get(big_v).adapter_path.iterdir():
        (orphan / f.name).write_bytes(f.read_bytes())
    mistral = BaseIdentity(name="Mistral-7B-Instruct-v0.3", fingerprint="0123456789abcdef")
    orphan_v = registry.register(
        "orphan", NewVersion(adapter_dir=orphan, base_model="mistral", base=mistral)
    ).name
    refused = httpx.post(
        f"{gw.url}/admin/routes/orphan", headers=TOKEN, json={"stable": orphan_v}, timeout=30
    )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "base_not_served"
    assert orphan_v in error["message"] and "Mistral-7B-Instruct-v0.3" in error["message"]
    assert "SmolLM2-135M-Instruct" in error["message"] and "SmolLM2-20L" in error["message"]

    # 4. An engine killed: its traffic goes to the other engine of the same base, none to the other base.
    same.stop()
    for n in range(6):
        r = _ask(gw.url, "big", 100 + n)
        assert r.status_code == 200 and r.headers["x-lorafleet-version"] == big_v, r.text
    wait_until(lambda: _placed(gw.url)[big_v] == [engine.url], what="the dead engine out of the placement")

    # 5. An engine that joins (at the address the gateway names) gets its placement: the big adapter only.
    same = EngineThread(same.settings.port, base_model_dir, tmp_path / "rejoined.log")
    two_engines[0] = same  # the fixture stops it
    same.start()
    wait_until(
        lambda: _placed(gw.url) == {big_v: sorted([engine.url, same.url]), small_v: [small.url]},
        timeout_s=120,
        what="the joined engine's placement",
    )
    held = {m["id"] for m in httpx.get(f"{same.url}/v1/models").json()["data"]}
    assert big_v in held and small_v not in held
    assert identify(base_model_dir).fingerprint in {
        m.split("@")[-1] for m in held if m.startswith("lorafleet-base@")
    }
