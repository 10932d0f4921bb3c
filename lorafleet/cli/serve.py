"""`lorafleet serve`: run a vLLM engine with LoRA enabled; load and unload adapter versions on one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from lorafleet import basemodel
from lorafleet.cli._admin import AdminClient, TokenFileOpt
from lorafleet.cli._options import BaseModelOpt, JsonOpt, RegistryOpt, registry_path
from lorafleet.cli._output import info, print_json, print_table
from lorafleet.registry import Registry

app = typer.Typer(
    help="vLLM engines: run one, and load or unload adapter versions on it.", no_args_is_help=True
)

EngineOpt = Annotated[str, typer.Option("--engine", help="The engine's URL.")]


@app.command()
def engine(
    base_model: BaseModelOpt = None,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8100, help="Port to listen on."),
    served_model_name: str = typer.Option("base", help="Name the base model is served under."),
    max_loras: int = typer.Option(4, help="Adapters in one batch."),
    max_lora_rank: int | None = typer.Option(
        None,
        help="Largest LoRA rank accepted: 1, 8, 16, 32, 64, 128, 256, 320 or 512. Default: 16, or what the "
        "largest rank among the --adapter versions and the registry's needs.",
    ),
    max_cpu_loras: int | None = typer.Option(None, help="Adapters cached in memory."),
    max_model_len: int = typer.Option(2048, help="Context length."),
    kv_cache_gib: float = typer.Option(1.0, help="KV cache size on the CPU, GiB."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    adapter: list[str] = typer.Option([], "--adapter", help="A version to load at start (repeatable)."),
    registry: RegistryOpt = None,
    log_file: Path | None = typer.Option(None, help="Write the engine's output here."),
    startup_timeout_s: float = typer.Option(300.0, help="Seconds to wait for the engine to be healthy."),
) -> None:
    """Start a vLLM OpenAI server with LoRA enabled and keep it running (restarts it if it crashes)."""
    from serve.engine import Engine, Supervisor
    from serve.settings import (
        DEFAULT_MAX_LORA_RANK,
        Device,
        EngineSettings,
        LoraRankError,
        accepted_size,
        max_lora_rank_for,
    )

    try:
        chosen = Device(device.lower())
    except ValueError:
        raise typer.BadParameter(f"'{device}': use auto, cpu or cuda", param_hint="--device") from None
    if max_lora_rank is not None:
        try:
            accepted_size(max_lora_rank)
        except LoraRankError as exc:
            raise typer.BadParameter(str(exc), param_hint="--max-lora-rank") from None
    reg = Registry(registry_path(registry))
    versions = [reg.resolve(name) for name in adapter]
    # Given, the rank must hold the --adapter versions; else it is sized for them and for any
    # version of the registry a gateway may place here.
    held = versions if max_lora_rank is not None else [*versions, *reg.versions()]
    ranks = {v.name: v.info().lora_rank for v in held}
    try:
        rank = max_lora_rank_for(max_lora_rank, ranks)
    except LoraRankError as exc:
        raise typer.BadParameter(str(exc), param_hint="--adapter") from None
    if max_lora_rank is None and rank != DEFAULT_MAX_LORA_RANK:
        largest = max(ranks, key=lambda name: ranks[name])
        info(f"--max-lora-rank {rank}: {largest} has LoRA rank {ranks[largest]} (registry {reg.root})")
    settings = EngineSettings(
        base_model=base_model,
        host=host,
        port=port,
        served_model_name=served_model_name,
        max_loras=max_loras,
        max_lora_rank=rank,
        max_cpu_loras=max_cpu_loras,
        max_model_len=max_model_len,
        kv_cache_gib=kv_cache_gib,
        device=chosen,
        log_file=str(log_file) if log_file else None,
        startup_timeout_s=startup_timeout_s,
    )
    model_dir = basemodel.resolve(settings.base_model)
    supervisor = Supervisor(Engine(settings, model_dir), {v.name: v.adapter_path for v in versions}, info)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(supervisor.run())
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        info("stopping the engine")
        await supervisor.stop()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    info(f"engine: {settings.url} serving {model_dir} as '{settings.served_model_name}'")
    asyncio.run(main())


@app.command()
def status(
    engine: Annotated[
        list[str] | None,
        typer.Option("--engine", help="An engine URL, or dns+http://SERVICE:PORT (repeatable)."),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway", help="Ask a gateway instead: its engines and where it placed each version."
        ),
    ] = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """The fleet: each engine's base model, adapter slots, load and the adapters it holds."""
    if gateway is not None:
        data = AdminClient(gateway, token_file).call("GET", "/admin/status")
        engines = data["engines"]
    else:
        engines = asyncio.run(_engines(engine or ["http://127.0.0.1:8100"]))
        data = {"engines": engines}
    if json:
        print_json(data)
        return
    rows = []
    for e in engines:
        base = e.get("base")
        load = "" if e.get("running") is None else f"{e['running']} running, {e.get('waiting') or 0} waiting"
        rows.append(
            [
                e["url"],
                "up" if e["healthy"] else f"down: {e.get('last_error') or ''}"[:60],
                f"{base['name']} ({base['fingerprint']})"
                if base
                else f"{e.get('base_model') or '-'} (unverified)",
                e.get("slots") if e.get("slots") is not None else "-",
                load,
                ", ".join(e.get("adapters", [])) or "-",
            ]
        )
    print_table(["engine", "health", "base model", "slots", "load", "adapters"], rows)
    for name, route in data.get("routes", {}).items():
        for v in route.get("versions", []):
            if v.get("placement_problem"):
                info(f"{name}: {v['version']}: {v['placement_problem']}")
    for e in engines:
        for version, reason in (e.get("failures") or {}).items():
            info(f"{e['url']}: {version} failed to load: {reason}")


async def _engines(targets: list[str]) -> list[dict[str, object]]:
    import httpx

    from serve.fleet import Fleet

    async with httpx.AsyncClient(timeout=10) as http:
        fleet = Fleet(targets, http)
        await fleet.refresh()
        return fleet.status()


@app.command("base-id")
def base_id(
    folder: Annotated[
        Path | None, typer.Argument(help="A model folder (default: the embedded model).")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """A base model's name, fingerprint and the alias an engine serves it under, so that gateways
    can verify which base it is: `vllm ... --served-model-name base ALIAS`."""
    from lorafleet.baseid import alias, identify

    identity = identify(basemodel.resolve(str(folder) if folder else None))
    if json:
        print_json({**identity.model_dump(), "alias": alias(identity)})
        return
    print_table(["name", "fingerprint", "alias"], [[identity.name, identity.fingerprint, alias(identity)]])


@app.command()
def load(
    version: str = typer.Argument(..., help="A version name, or a task (its newest version)."),
    engine: EngineOpt = "http://127.0.0.1:8100",
    registry: RegistryOpt = None,
) -> None:
    """Load an adapter version from the registry onto a running engine (idempotent)."""
    import httpx

    from serve.adapters import AdapterClient

    v = Registry(registry_path(registry)).resolve(version)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            await AdapterClient(engine, http).load(v.name, v.adapter_path)

    asyncio.run(main())
    info(f"loaded {v.name} on {engine}")


@app.command()
def unload(
    version: str = typer.Argument(..., help="The version name."), engine: EngineOpt = "http://127.0.0.1:8100"
) -> None:
    """Unload an adapter version from a running engine (idempotent)."""
    import httpx

    from serve.adapters import AdapterClient

    async def main() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            await AdapterClient(engine, http).unload(version)

    asyncio.run(main())
    info(f"unloaded {version} from {engine}")
