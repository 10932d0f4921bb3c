"""Serving against the real vLLM engine: runtime adapter loading, failures that leave the rest serving,
and a crashed engine restarted by the supervisor with its adapters back."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorafleet.registry import Registry
from serve.adapters import AdapterClient
from serve.errors import AdapterLoadError
from serve.fleet import Fleet
from tests.support import wait_until

pytestmark = pytest.mark.engine

TOKEN = {"authorization": "Bearer test-admin-token"}


def test_load_and_unload_are_idempotent(engine: Any, trained_registry: tuple[Registry, list[str]]) -> None:
    registry, (v1, _) = trained_registry
    path = registry.get(v1).adapter_path

    async def scenario() -> tuple[dict[str, str], dict[str, str]]:
        async with httpx.AsyncClient(timeout=60) as http:
            client = AdapterClient(engine.url, http)
            await client.load("idempotent-check", path)
            await client.load("idempotent-check", path)
            loaded = await client.loaded()
            await client.unload("idempotent-check")
            await client.unload("idempotent-check")
            return loaded, await client.loaded()

    loaded, after = asyncio.run(scenario())
    assert loaded["idempotent-check"] == str(path)
    assert "idempotent-check" not in after


def _broken_versions(registry: Registry, good: str, tmp: Path) -> dict[str, str]:
    """Register three broken copies of a good version; return name -> what is wrong with it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorafleet import basemodel

    source = registry.get(good)
    broken: dict[str, str] = {}

    def register(kind: str, make: Callable[[Path], None]) -> None:
        with registry.new_version("broken") as draft:
            for name in ("version.json", "README.md"):
                shutil.copy2(source.path / name, draft.path / name)
            draft.adapter_path.mkdir()
            make(draft.adapter_path)
        broken[str(draft.ref)] = kind

    def missing(folder: Path) -> None:
        shutil.copy2(source.adapter_path / "adapter_config.json", folder / "adapter_config.json")

    def corrupt(folder: Path) -> None:
        shutil.copy2(source.adapter_path / "adapter_config.json", folder / "adapter_config.json")
        (folder / "adapter_model.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file" * 100)

    big = tmp / "rank64"
    model = AutoModelForCausalLM.from_pretrained(basemodel.resolve(None))
    get_peft_model(
        model, LoraConfig(r=64, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    ).save_pretrained(big)

    def rank_too_large(folder: Path) -> None:
        for f in big.iterdir():
            shutil.copy2(f, folder / f.name)

    register("missing weights", missing)
    register("corrupt weights", corrupt)
    register("rank too large", rank_too_large)
    return broken


def test_adapters_that_fail_to_load_are_reported_and_the_rest_keeps_serving(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]], tmp_path: Path
) -> None:
    registry, (v1, _) = trained_registry
    broken = _broken_versions(registry, v1, tmp_path)
    routes = (
        "routes:\n"
        + f"  banking:\n    stable: {v1}\n"
        + f"  broken:\n    stable: {next(iter(broken))}\n    pinned: [{', '.join(list(broken)[1:])}]\n"
    )
    gw = start_gateway(routes, registry, [engine.url])

    def failures() -> dict[str, str]:
        found: dict[str, str] = {}
        for route in httpx.get(f"{gw.url}/admin/status", headers=TOKEN).json()["routes"].values():
            for v in route["versions"]:
                for reason in v["load_failures"].values():
                    found[v["version"]] = reason
        return found

    wait_until(lambda: set(failures()) == set(broken), 120, "all three failures reported")
    reasons = failures()
    for name, kind in broken.items():
        assert reasons[name], kind
    rank_version = next(n for n, k in broken.items() if k == "rank too large")
    assert "rank" in reasons[rank_version].lower()
    assert httpx.get(f"{engine.url}/health").status_code == 200
    ok = httpx.post(
        f"{gw.url}/v1/completions", json={"model": "banking", "prompt": "card", "max_tokens": 2}, timeout=60
    )
    assert ok.status_code == 200 and ok.headers["x-lorafleet-version"] == v1
    not_loaded = httpx.post(
        f"{gw.url}/v1/completions", json={"model": "broken", "prompt": "card", "max_tokens": 2}, timeout=60
    )
    assert (
        not_loaded.status_code == 503 and "no healthy engine holds" in not_loaded.json()["error"]["message"]
    )
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert (
        sum(
            f'lorafleet_adapter_load_failures_total{{engine="{engine.url}",version="{n}"}}' in metrics
            for n in broken
        )
        == 3
    )

    async def direct_error() -> str:
        async with httpx.AsyncClient(timeout=60) as http:
            try:
                await AdapterClient(engine.url, http).load("missing-dir", tmp_path / "nothing-here")
            except AdapterLoadError as exc:
                return exc.reason
        return ""

    assert str(tmp_path / "nothing-here") in asyncio.run(direct_error())


def test_a_crashed_engine_is_restarted_and_gets_its_adapters_back(
    start_gateway: Any, engine: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, v2) = trained_registry
    # v1 for the gateway's route; v2 loaded at runtime by hand, as `lorafleet serve load` does. This
    # gateway does not unload what its routes do not name (it runs no controller).
    gw = start_gateway(
        f"routes:\n  banking:\n    stable: {v1}\n", registry, [engine.url], controller="external"
    )
    httpx.post(
        f"{engine.url}/v1/load_lora_adapter",
        json={"lora_name": v2, "lora_path": str(registry.get(v2).adapter_path)},
        timeout=60,
    )
    wait_until(lambda: {v1, v2} <= set(engine.supervisor.held), 120, "the supervisor to see both loaded")
    restarts = engine.supervisor.restarts
    crashed = engine.supervisor.engine.process.pid
    os.kill(crashed, signal.SIGKILL)  # the API server alone: vLLM's engine-core processes outlive it
    wait_until(lambda: engine.supervisor.restarts == restarts + 1, 30, "the supervisor to notice")

    def group_gone() -> bool:
        try:
            os.killpg(crashed, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(group_gone, 30, "the crashed engine's leftover processes to be killed")
    engine.wait_healthy(400)

    def serves(url: str, model: str) -> bool:
        r = httpx.post(
            f"{url}/v1/completions", json={"model": model, "prompt": "card", "max_tokens": 1}, timeout=60
        )
        return r.status_code == 200

    # v1 back through the gateway's reconcile, v2 through the supervisor alone.
    wait_until(lambda: serves(gw.url, "banking") and serves(engine.url, v2), 120, "the adapters to be back")
    up = [
        line
        for line in httpx.get(f"{gw.url}/metrics").text.splitlines()
        if line.startswith("lorafleet_engine_up{")
    ]
    assert up and up[0].endswith(" 1.0")


def test_fleet_picks_only_healthy_engines_holding_the_version(
    engine: Any, trained_registry: tuple[Registry, list[str]]
) -> None:
    registry, (v1, _) = trained_registry
    dead = "http://127.0.0.1:9"

    async def scenario() -> tuple[str | None, str | None, list[dict[str, object]]]:
        async with httpx.AsyncClient(timeout=60) as http:
            fleet = Fleet([engine.url, dead], http)
            await fleet.reconcile({v1: registry.get(v1).adapter_path})
            holder = fleet.pick(v1)
            nobody = fleet.pick("banking-v9-20261125")
            return holder.url if holder else None, nobody.url if nobody else None, fleet.status()

    holder, nobody, status = asyncio.run(scenario())
    assert holder == engine.url and nobody is None
    by_url = {s["url"]: s for s in status}
    assert by_url[dead]["healthy"] is False and by_url[engine.url]["healthy"] is True
