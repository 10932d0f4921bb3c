"""Issue 17: what serving several adapter versions costs one real vLLM engine.

    python bench/multi_lora.py                about 4 minutes on 2 CPU cores
    python bench/multi_lora.py --shape qv8    smaller adapters: rank 8 on q_proj and v_proj only

One real CPU vLLM engine (serve.engine.Engine, the embedded SmolLM2-135M-Instruct, --max-loras 8,
--max-cpu-loras 8) and 12 real LoRA adapters of lorafleet's default shape (rank 16 on every
attention and MLP projection; untrained, B = 0: the engine does the same work as for a trained one).
Interleaved round by round, at the same concurrency and answer length:

    base          every request to the base model
    1 version     every request to one adapter
    4 versions    a uniform mix over 4 adapters
    8 versions    a uniform mix over 8 adapters (every batch slot of --max-loras 8)

Reported: requests/s and output tokens/s per cell, the ratio of each to `base` (goal: >= 0.9 with
4), and the time to first token of a request whose adapter is not resident against a warm one:
    not loaded      POST /v1/load_lora_adapter first (what the gateway's reconcile does), then the
                    request; and the load call's own time
    evicted         the adapter was loaded but pushed out of the engine's CPU cache by 8 others
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
import httpx

PROMPT = [{"role": "user", "content": "My card has not arrived yet, what should I do?"}]


def make_adapters(base: Path, out: Path, n: int, shape: str) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.defaults import ALPHA, PROJECTIONS, RANK

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    if shape == "qv8":
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    else:
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(PROJECTIONS), task_type="CAUSAL_LM")
    peft = get_peft_model(model, config)
    paths = []
    for i in range(n):
        path = out / f"adapter-{i}"
        peft.save_pretrained(path)
        paths.append(path)
    return paths


async def stream_ttft(http: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> tuple[float, int]:
    """(time to first token, tokens) of one streamed request."""
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    first = None
    tokens = 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and '"content":"' in line:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - start
    return (first if first is not None else time.perf_counter() - start), tokens


async def cell(
    http: httpx.AsyncClient, url: str, models: list[str], concurrency: int, seconds: float, max_tokens: int
) -> dict[str, float]:
    done = 0
    tokens = 0
    ttfts: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done, tokens
        i = k
        while time.perf_counter() < stop:
            ttft, n = await stream_ttft(http, url, models[i % len(models)], max_tokens)
            done += 1
            tokens += n
            ttfts.append(ttft)
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"rps": done / elapsed, "tps": tokens / elapsed, "ttft50": statistics.median(ttfts) * 1e3}


async def main_async(args: argparse.Namespace, out: fakes.Tee) -> None:
    from lorafleet import basemodel
    from serve.adapters import AdapterClient
    from serve.engine import Engine
    from serve.settings import EngineSettings

    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-multilora-"))
    base = basemodel.resolve(None)
    out(fakes.machine_header("multi-LoRA serving cost on one real engine (issue 17)"))
    adapters = make_adapters(base, work, 12, args.shape)
    settings = EngineSettings(
        port=fakes.free_port(),
        log_file=str(work / "engine.log"),
        max_loras=8,
        max_cpu_loras=8,
        max_lora_rank=16,
        kv_cache_gib=1.0,
    )
    engine = Engine(settings, base)
    out(
        f"engine: {settings.url}, --max-loras 8 --max-cpu-loras 8; adapters: 12 x rank 16 on every projection"
    )
    await engine.start()
    try:
        async with httpx.AsyncClient(timeout=300) as http:
            client = AdapterClient(settings.url, http)
            names = [f"v{i}" for i in range(12)]
            for name, path in zip(names[:8], adapters[:8], strict=True):
                await client.load(name, path)
            for model in ["base", *names[:8]]:  # warm every adapter once
                await stream_ttft(http, settings.url, model, 2)
            mixes = {
                "base": ["base"],
                "1 version": names[:1],
                "4 versions": names[:4],
                "8 versions": names[:8],
            }
            cells: dict[str, list[dict[str, float]]] = {k: [] for k in mixes}
            for r in range(args.rounds):
                order = list(mixes) if r % 2 == 0 else list(reversed(mixes))
                for name in order:
                    result = await cell(
                        http, settings.url, mixes[name], args.concurrency, args.seconds, args.max_tokens
                    )
                    cells[name].append(result)
                    out(
                        f"round {r + 1} {name:11s}: {result['rps']:6.2f} req/s, {result['tps']:7.1f} tokens/s, "
                        f"TTFT p50 {result['ttft50']:.0f} ms"
                    )
            out("")
            for name in mixes:
                if name == "base":
                    continue
                ratios = [c["tps"] / b["tps"] for c, b in zip(cells[name], cells["base"], strict=True)]
                out(
                    f"tokens/s {name} / base: median {statistics.median(ratios):.3f} "
                    f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
                    + ("; goal >= 0.9" if name == "4 versions" else "")
                )
            # Not resident: loaded now, then asked; against a warm adapter, alternately.
            warm, loaded, load_s = [], [], []
            for i, (name, path) in enumerate(zip(names[8:], adapters[8:], strict=True)):
                warm.append((await stream_ttft(http, settings.url, names[i], 2))[0] * 1e3)
                t = time.perf_counter()
                await client.load(name, path)
                load_s.append((time.perf_counter() - t) * 1e3)
                loaded.append((await stream_ttft(http, settings.url, name, 2))[0] * 1e3)
            # Evicted: the CPU cache holds 8; the 4 just used pushed v0-v3's weights out.
            evicted = [(await stream_ttft(http, settings.url, names[i], 2))[0] * 1e3 for i in range(4)]
            again = [(await stream_ttft(http, settings.url, names[i], 2))[0] * 1e3 for i in range(4)]
            out(
                f"not resident: load_lora_adapter {statistics.median(load_s):.0f} ms, then TTFT "
                f"{statistics.median(loaded):.0f} ms against {statistics.median(warm):.0f} ms warm "
                f"(added {statistics.median(loaded) - statistics.median(warm):+.0f} ms, "
                f"{statistics.median(load_s) + statistics.median(loaded) - statistics.median(warm):+.0f} ms with the load)"
            )
            out(
                f"evicted from the CPU cache: TTFT {statistics.median(evicted):.0f} ms, then "
                f"{statistics.median(again):.0f} ms once resident again "
                f"(added {statistics.median(evicted) - statistics.median(again):+.0f} ms)"
            )
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--shape",
        choices=["default", "qv8"],
        default="default",
        help="default: lorafleet's training default (r16, every projection); qv8: r8 on q_proj/v_proj",
    )
    parser.add_argument("--no-save", dest="save", action="store_false", help="Do not write bench/results/.")
    args = parser.parse_args()
    out = fakes.Tee()
    asyncio.run(main_async(args, out))
    if args.save:
        print(f"saved {out.save('multi_lora')}", file=sys.stderr)


if __name__ == "__main__":
    main()
