"""Issues 5 and 15: what the gateway adds to a request, against a direct call, a minimal proxy,
LiteLLM's proxy and vllm-router, and (with --baseline REF) against its own code at an earlier commit.

    python bench/gateway_overhead.py                 the fake upstream, about 3-4 minutes
    python bench/gateway_overhead.py --real-engine   direct vs gateway against a real vLLM engine, once

In one run, interleaved round by round (the machine is shared, so nothing is compared across runs),
at concurrency 1 and 64, JSON and SSE streaming, each system under test pinned alone to one core:

    direct        the load generator straight to the fake upstream (FakeOpenAIUpstream, bench/fakes.py)
    proxy         the minimal pass-through proxy (PassThroughProxy): the practical limit of Python here
    proxy-asgi    the same pass-through on uvicorn + plain ASGI + aiohttp client
    proxy-lean    the same pass-through on the gateway's own stack: uvicorn + plain ASGI + the
                  gateway's HTTP client (router/http1.py Http1Pool)
    proxy-fastapi the same pass-through on uvicorn + FastAPI + httpx (over httpx-aiohttp): the stack
                  the design first named, which the gateway's completion endpoints no longer use
    gateway       `lorafleet gateway` with its defaults: a route with a 90/10 weighted split, monitoring
                  on (drift windows, answer log, metrics, entropy from top-5 logprobs on up to ~50
                  requests a second per version: entropy_max_per_s)
    gateway-everyentropy  the same with LORAFLEET_ROUTER_ENTROPY_MAX_PER_S=0: entropy on every request
    gateway-noentropy  the same with LORAFLEET_ROUTER_ENTROPY_TOP_K=0: no logprobs asked, no entropy
                  (issue 7's monitoring cost taken out of issue 5's routing cost)
    vllm-router   the Rust router from PyPI (own venv under bench/), round_robin over the one worker
    litellm       LiteLLM's proxy (`litellm[proxy]`, own venv under bench/), one worker, the model
                  routed to the fake upstream as an OpenAI-compatible API: the Python peer users pick
    gateway-before  with --baseline REF: `lorafleet gateway` of that commit (a git worktree), same
                  settings: a change's cost or gain, measured in the same run

Reported per cell: p50/p99 latency, p50/p99 time to first token (streams), requests/s, and the
CPU time the system under test spent per request (psutil; robust against other load on the core).
Then the ratios: added p50 latency and added TTFT at concurrency 1 (target < 1 ms), requests/s of
the gateway over the proxy at concurrency 64 (target >= 0.8), and what each stack costs alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
from fakes import LoadSpec, Server


@dataclass
class Target:
    name: str
    url: str
    model: str
    server: Server | None = None  # None: nothing between the client and the upstream
    cells: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Mode:
    concurrency: int
    stream: bool
    seconds: float

    @property
    def key(self) -> str:
        return f"c={self.concurrency} {'stream' if self.stream else 'json'}"


def measure(lg: fakes.LoadGenClient, target: Target, mode: Mode, max_tokens: int = 16) -> dict[str, Any]:
    spec = LoadSpec(
        url=target.url,
        body=fakes.chat_body(target.model, mode.stream, max_tokens=max_tokens),
        stream=mode.stream,
        concurrency=mode.concurrency,
        duration_s=mode.seconds,
    )
    result = lg.run(spec, target.server)
    if result["errors"]:
        print(f"  {target.name} {mode.key}: {result['errors']} errors, first: {result['first_error']}")
    return result


def pooled(cells: list[dict[str, Any]]) -> dict[str, float]:
    lat = [x for c in cells for x in c["lat"]]
    ttft = [x for c in cells for x in c["ttft"]]
    n = sum(len(c["lat"]) for c in cells)
    rps = [len(c["lat"]) / c["elapsed_s"] for c in cells if c["elapsed_s"]]
    cpu = sum(c["cpu_s"] for c in cells)
    user = sum(c["user_s"] for c in cells)
    return {
        "p50": fakes.pct(lat, 50),
        "p99": fakes.pct(lat, 99),
        "ttft50": fakes.pct(ttft, 50) if ttft else float("nan"),
        "ttft99": fakes.pct(ttft, 99) if ttft else float("nan"),
        "rps": statistics.median(rps) if rps else float("nan"),
        "cpu_us": cpu / n * 1e6 if n else float("nan"),
        "user_us": user / n * 1e6 if n else float("nan"),
        "n": n,
        "errors": sum(c["errors"] for c in cells),
    }


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], what: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of a/b for requests/s ('rps'), CPU per request ('cpu') or
    its user-space part ('user')."""

    def value(c: dict[str, Any]) -> float:
        n = len(c["lat"])
        if what == "rps":
            return n / c["elapsed_s"] if c["elapsed_s"] else float("nan")
        return c["cpu_s" if what == "cpu" else "user_s"] / n if n else float("nan")

    ratios = [value(x) / value(y) for x, y in zip(a, b, strict=True) if value(y)]
    if not ratios:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(ratios), min(ratios), max(ratios)


def f(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def run_fake(args: argparse.Namespace, out: fakes.Tee) -> None:
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-"))
    out(fakes.machine_header("gateway overhead (issue 5), fake upstream"))
    out(f"layout: {layout.describe()}")
    config = fakes.UpstreamConfig(chunks=8, ttft_s=args.ttft_ms / 1e3, itl_s=args.itl_ms / 1e3)
    out(
        f"fake upstream: JSON answers at once; streams: headers at once, first token after {args.ttft_ms:g} ms, "
        f"{config.chunks} content chunks {args.itl_ms:g} ms apart; top-k logprobs when asked"
    )
    servers: list[Server] = []
    lg = fakes.LoadGenClient(layout.loadgen)
    try:
        names = fakes.register_versions(work / "registry")
        upstream, up_url = fakes.start_upstream(layout.upstream, work / "upstream.log", config)
        servers.append(upstream)
        targets = [Target("direct", up_url, names[0])]
        proxy, proxy_url = fakes.start_proxy(layout.sut, up_url, work / "proxy.log")
        servers.append(proxy)
        targets.append(Target("proxy", proxy_url, names[0], proxy))
        aproxy, aproxy_url = fakes.start_proxy(layout.sut, up_url, work / "proxy-asgi.log", "asgi-proxy")
        servers.append(aproxy)
        targets.append(Target("proxy-asgi", aproxy_url, names[0], aproxy))
        lproxy, lproxy_url = fakes.start_proxy(layout.sut, up_url, work / "proxy-lean.log", "lean-proxy")
        servers.append(lproxy)
        targets.append(Target("proxy-lean", lproxy_url, names[0], lproxy))
        fproxy, fproxy_url = fakes.start_proxy(
            layout.sut, up_url, work / "proxy-fastapi.log", "fastapi-proxy"
        )
        servers.append(fproxy)
        targets.append(Target("proxy-fastapi", fproxy_url, names[0], fproxy))
        routes = fakes.routes_yaml(names[0], weighted=names[1])
        gateways: list[tuple[str, dict[str, str], Path | None]] = [
            ("gateway", {}, None),
            ("gateway-everyentropy", {"LORAFLEET_ROUTER_ENTROPY_MAX_PER_S": "0"}, None),
            ("gateway-noentropy", {"LORAFLEET_ROUTER_ENTROPY_TOP_K": "0"}, None),
        ]
        if args.baseline:
            before = fakes.worktree(args.baseline, work / "before")
            gateways.append(("gateway-before", {}, before))
            out(f"gateway-before: `lorafleet gateway` of {args.baseline} (a git worktree), same settings")
        for name, env, source in gateways:
            gw, gw_url = fakes.start_gateway(
                layout.sut,
                work / name,
                work / "registry",
                up_url,
                routes,
                work / f"{name}.log",
                env=env,
                source=source,
            )
            servers.append(gw)
            targets.append(Target(name, gw_url, "bench", gw))
        if args.litellm:
            exe = fakes.ensure_litellm()
            if exe is not None:
                try:
                    ll, ll_url = fakes.start_litellm(exe, layout.sut, up_url, work / "litellm.log", names[0])
                    servers.append(ll)
                    targets.append(Target("litellm", ll_url, names[0], ll))
                except RuntimeError as exc:
                    out(f"litellm skipped: it did not start ({exc})")
        else:
            out("litellm skipped (--no-litellm)")
        if args.vllm_router:
            exe = fakes.ensure_vllm_router()
            if exe is not None:
                try:
                    vr, vr_url = fakes.start_vllm_router(exe, layout.sut, up_url, work / "vllm-router.log")
                    servers.append(vr)
                    targets.append(Target("vllm-router", vr_url, names[0], vr))
                except RuntimeError as exc:
                    out(f"vllm-router skipped: it did not start ({exc})")
        else:
            out("vllm-router skipped (--no-vllm-router)")
        out(f"route 'bench': stable {names[0]} 90%, weighted {names[1]} 10%; gateway = `lorafleet gateway`")
        out(f"logs: {work}")
        if args.only:
            wanted = set(args.only.split(",")) | {"direct", "gateway"}  # the report's references
            for t in targets:
                if t.name not in wanted and t.server is not None:
                    t.server.stop()
            targets = [t for t in targets if t.name in wanted]
            out(f"targets: {', '.join(t.name for t in targets)} (--only)")
        for t in targets:  # warm-up: connections, pools, caches
            for mode in (Mode(8, False, 1.0), Mode(8, True, 1.0), Mode(args.concurrency, False, 0.5)):
                measure(lg, t, mode)
        modes = [
            Mode(1, False, args.c1_seconds),
            Mode(1, True, args.c1_seconds),
            Mode(args.concurrency, False, args.cn_seconds),
            Mode(args.concurrency, True, args.cn_seconds),
        ]
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for mode in modes:
                order = targets[r % len(targets) :] + targets[: r % len(targets)]
                for t in order:
                    t.cells.setdefault(mode.key, []).append(measure(lg, t, mode))
        stats = report(out, targets, modes, args)
    finally:
        lg.close()
        for s in reversed(servers):
            s.stop()
        if args.baseline:
            fakes.remove_worktree(work / "before")
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {layout.sut})
    try:
        rows = cost_breakdown(work / "breakdown")
    finally:
        os.sched_setaffinity(0, saved)
    per_req = stats[(modes[2].key, "gateway")]["cpu_us"]
    out()
    out(f"where the gateway's CPU goes: its per-request functions called in-process on core {layout.sut}")
    out(f"(share: of the gateway's {f(per_req, 0)} us of CPU per request at {modes[2].key})")
    for where, what, us in rows:
        out(f"  {us:7.1f} us  {100 * us / per_req:5.1f}%  {where:<20} {what}")
    load = os.getloadavg()
    out(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def report(
    out: fakes.Tee, targets: list[Target], modes: list[Mode], args: argparse.Namespace
) -> dict[tuple[str, str], dict[str, float]]:
    out()
    out(f"{args.rounds} rounds, interleaved; latencies pooled over rounds, req/s the median round")
    out(
        f"{'mode':<12} {'target':<21} {'p50 ms':>8} {'p99 ms':>8} {'ttft50':>8} {'ttft99':>8} "
        f"{'req/s':>8} {'cpu us/req':>10} {'user':>5} {'n':>7} {'err':>4}"
    )
    stats: dict[tuple[str, str], dict[str, float]] = {}
    for mode in modes:
        for t in targets:
            s = pooled(t.cells[mode.key])
            stats[(mode.key, t.name)] = s
            out(
                f"{mode.key:<12} {t.name:<21} {f(s['p50'], 3):>8} {f(s['p99'], 3):>8} {f(s['ttft50'], 3):>8} "
                f"{f(s['ttft99'], 3):>8} {f(s['rps'], 0):>8} {f(s['cpu_us'], 0):>10} {f(s['user_us'], 0):>5} "
                f"{s['n']:>7} {s['errors']:>4}"
            )
    by_name = {t.name: t for t in targets}
    c1j, c1s = modes[0].key, modes[1].key
    cnj, cns = modes[2].key, modes[3].key
    out()
    out("added latency at concurrency 1 (p50 of the target minus p50 direct; target for the gateway < 1 ms):")
    for name in [t.name for t in targets if t.name != "direct"]:
        added = stats[(c1j, name)]["p50"] - stats[(c1j, "direct")]["p50"]
        added_s = stats[(c1s, name)]["p50"] - stats[(c1s, "direct")]["p50"]
        ttft = stats[(c1s, name)]["ttft50"] - stats[(c1s, "direct")]["ttft50"]
        out(
            f"  {name:<21} json p50 +{f(added, 3)} ms   stream TTFT p50 +{f(ttft, 3)} ms   stream total p50 +{f(added_s, 3)} ms"
        )
    if "litellm" in by_name and "gateway" in by_name:
        added_gw = stats[(c1j, "gateway")]["p50"] - stats[(c1j, "direct")]["p50"]
        added_ll = stats[(c1j, "litellm")]["p50"] - stats[(c1j, "direct")]["p50"]
        out(
            f"  added p50 at concurrency 1, JSON: gateway / litellm = {f(added_gw / added_ll, 3)} "
            "(goal: under a fifth, 0.2)"
        )
    out()
    out(f"throughput at concurrency {args.concurrency} (per-round ratios: median [min-max]):")
    pairs = [
        ("gateway", "proxy", "target >= 1.1 (issue 15)"),
        ("gateway-everyentropy", "proxy", "entropy on every request: entropy_max_per_s=0"),
        ("gateway-noentropy", "proxy", "routing and metrics on, no logprobs asked: entropy_top_k=0"),
        ("proxy-lean", "proxy", "the gateway's stack alone, no lorafleet logic"),
        ("gateway", "proxy-lean", "what lorafleet's request path adds to its stack"),
        ("proxy-lean", "proxy-asgi", "the gateway's HTTP client against aiohttp's, both on plain ASGI"),
        ("proxy-fastapi", "proxy-asgi", "FastAPI + httpx against plain ASGI + aiohttp"),
    ]
    if "vllm-router" in by_name:
        pairs.append(("vllm-router", "proxy", "the Rust peer over the Python proxy"))
    if "gateway-before" in by_name:
        pairs.append(("gateway", "gateway-before", f"this code against {args.baseline}"))
    if "litellm" in by_name:
        pairs.append(("gateway", "litellm", "the Python peer users would pick (goal >= 3)"))
    for a, b, note in pairs:
        if a not in by_name or b not in by_name:
            continue
        for key in (cnj, cns):
            med, lo, hi = paired(by_name[a].cells[key], by_name[b].cells[key], "rps")
            cpu_med, _, _ = paired(by_name[b].cells[key], by_name[a].cells[key], "cpu")
            user_med, _, _ = paired(by_name[b].cells[key], by_name[a].cells[key], "user")
            out(
                f"  req/s {a} / {b:<8} {key:<12} {f(med)} [{f(lo)}-{f(hi)}]   "
                f"CPU-per-request ratio {b}/{a}: {f(cpu_med)} (user {f(user_med)})   ({note})"
            )
    out()
    out("cpu us/req: user and system time of the system under test per request; user: its user-space part.")
    out("The CPU-per-request ratio is the throughput ratio the two would reach each on a dedicated core;")
    out("req/s is what they reached here, with other work on the machine. direct shares its core with the")
    out("load generator, so it is a floor on latency, not a throughput reference.")
    return stats


def _time_us(fn: Any, loops: int = 2000) -> float:
    """Best of 5 runs of `loops` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best * 1e6


def cost_breakdown(work: Path) -> list[tuple[str, str, float]]:
    """The gateway's own per-request pieces, called in-process: (where, what, microseconds per request).

    These are the functions router/gateway.py calls on every request, with the fake upstream's
    bodies; framework (uvicorn, Starlette, FastAPI) and socket costs are not in it.
    """
    import orjson
    from prometheus_client import CollectorRegistry

    from lorafleet.registry import Registry
    from monitor.entropy import EntropyAccumulator
    from monitor.feedback import open_store
    from monitor.metrics import Arm, build_metrics
    from router.answer import read_answer, with_logprobs, without_logprobs
    from router.ids import new_request_id
    from router.observe import Observer, Outcome
    from router.relay import SSEBuffer, StreamWatch
    from router.requests import CHAT, decode_request
    from router.settings import GatewaySettings
    from router.upstream import forward_timeout

    names = fakes.register_versions(work / "registry")
    upstream = fakes.FakeOpenAIUpstream()
    raw_request = fakes.chat_body("bench", False, user="user-1").encode()
    body = orjson.loads(raw_request)
    upstream_body, _ = with_logprobs(body, chat=True, top_k=5)
    raw_answer = upstream.completion_body(names[0], 0, 5).replace(b"@ID@", b"chatcmpl-1")
    answer = read_answer(raw_answer)
    assert answer is not None and answer.choices
    choice = answer.choices[0]
    events = [e for e in upstream.stream_events(names[0], 0, 5, True) if b"[DONE]" not in e]
    plain_events = [e for e in upstream.stream_events(names[0], 0, None, True) if b"[DONE]" not in e]
    metrics = build_metrics(CollectorRegistry())
    feedback = open_store(work / "feedback.sqlite3")
    observer = Observer(metrics, Registry(work / "registry"), feedback)
    observer.set_known({("bench", n): "stable" for n in names})
    n = [0]

    def record() -> None:
        n[0] += 1
        observer.record(
            Outcome(
                "bench",
                names[0],
                Arm.STABLE,
                200,
                0.01,
                input_text=body["messages"][0]["content"],
                answer="card_arrival",
                completion_id=f"c{n[0]}",
                prompt_tokens=40,
                completion_tokens=8,
                entropy=0.3,
            )
        )

    def entropy() -> float | None:
        acc = EntropyAccumulator()
        acc.add(choice.tokens())
        return acc.value()

    def relay_events() -> bytes:
        watch = StreamWatch(chat=True, start=0.0, rewrite=True, keep_top=None, asked_usage=False)
        return b"".join(watch.relay(SSEBuffer().feed(e)) for e in events)

    def relay_plain() -> str:
        watch = StreamWatch(chat=True, start=0.0, rewrite=False, keep_top=None, asked_usage=False)
        for e in plain_events:
            watch.relay(SSEBuffer().feed(e))
        return watch.answer()

    settings = GatewaySettings()
    rows = [
        ("openai_api.read_json", "orjson.loads of the request", _time_us(lambda: orjson.loads(raw_request))),
        (
            "gateway.complete",
            "decode_request: typed decode and checks of the request",
            _time_us(lambda: decode_request(CHAT, raw_request, settings)),
        ),
        ("gateway.complete", "request id (new_request_id)", _time_us(new_request_id)),
        (
            "gateway.complete",
            "with_logprobs (monitoring)",
            _time_us(lambda: with_logprobs(body, chat=True, top_k=5)),
        ),
        (
            "forward.send",
            "orjson.dumps of the forwarded body",
            _time_us(lambda: orjson.dumps({**upstream_body, "model": names[0]})),
        ),
        (
            "forward.send",
            "the deadline-capped Timeouts",
            _time_us(lambda: forward_timeout(settings, 100.0)),
        ),
        (
            "gateway.complete",
            "read_answer: typed decode of the answer (top-5 logprobs kept raw)",
            _time_us(lambda: read_answer(raw_answer)),
        ),
        (
            "gateway._observe_answer",
            "entropy: decode the logprobs, score them (monitoring)",
            _time_us(entropy),
        ),
        ("gateway._observe_answer", "Observer.record (monitoring)", _time_us(record)),
        (
            "gateway.complete",
            "without_logprobs: cut out of the bytes (monitoring)",
            _time_us(lambda: without_logprobs(raw_answer, answer)),
        ),
        (
            "relay.Relay.data",
            f"SSEBuffer.feed over one stream ({len(events)} events)",
            _time_us(lambda: [SSEBuffer().feed(e) for e in events], 500),
        ),
        (
            "relay.Relay.data",
            "per stream: SSEBuffer + StreamWatch.relay (decode, entropy, cut logprobs: each event)",
            _time_us(relay_events, 500),
        ),
        (
            "relay.Relay.data",
            "per stream without logprobs (most streams): SSEBuffer + StreamWatch.relay, the text",
            _time_us(relay_plain, 500),
        ),
    ]
    feedback.close()
    return rows


async def run_real(args: argparse.Namespace, out: fakes.Tee) -> None:
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-real-"))
    out(fakes.machine_header("gateway overhead (issue 5), real vLLM engine"))
    out(
        f"gateway pinned to core {layout.sut}; the engine and the load generator are not pinned (vLLM uses every core)"
    )
    from lorafleet import basemodel

    adapter = await asyncio.to_thread(fakes.make_lora_adapter, basemodel.resolve(None), work / "adapter")
    names = fakes.register_versions(work / "registry", adapter_dir=adapter)
    lg = fakes.LoadGenClient(None)
    servers: list[Server] = []
    try:
        async with fakes.real_engine(work / "engine.log") as engine_url:
            routes = fakes.routes_yaml(names[0], weighted=names[1])
            gw, gw_url = await asyncio.to_thread(
                fakes.start_gateway,
                layout.sut,
                work / "gateway",
                work / "registry",
                engine_url,
                routes,
                work / "gateway.log",
            )
            servers.append(gw)
            for name in names:
                await asyncio.to_thread(fakes.warm_up, engine_url, name)
            direct = Target("direct", engine_url, names[0])
            direct_lp = Target("direct+logprobs", engine_url, names[0])
            gateway = Target("gateway", gw_url, "bench", gw)
            targets = [direct, direct_lp, gateway]
            modes = [Mode(1, False, 0), Mode(1, True, 0)]
            tokens = args.real_tokens
            out(
                f"{args.real_requests} requests per cell, concurrency 1, max_tokens {tokens}, interleaved in blocks of 3"
            )
            out("direct+logprobs: direct with the top-5 logprobs the gateway asks for on the client's behalf")
            for mode in modes:
                for _ in range(max(1, args.real_requests // 3)):
                    for t in targets:
                        extra = {"logprobs": True, "top_logprobs": 5} if t is direct_lp else {}
                        spec = LoadSpec(
                            url=t.url,
                            body=fakes.chat_body(t.model, mode.stream, max_tokens=tokens, **extra),
                            stream=mode.stream,
                            concurrency=1,
                            requests=3,
                        )
                        res = await asyncio.to_thread(lg.run, spec, t.server)
                        t.cells.setdefault(mode.key, []).append(res)
            out(f"{'mode':<12} {'target':<16} {'p50 ms':>9} {'p99 ms':>9} {'ttft50':>9} {'n':>4} {'err':>4}")
            stats = {}
            for mode in modes:
                for t in targets:
                    s = pooled(t.cells[mode.key])
                    stats[(mode.key, t.name)] = s
                    out(
                        f"{mode.key:<12} {t.name:<16} {f(s['p50'], 1):>9} {f(s['p99'], 1):>9} "
                        f"{f(s['ttft50'], 1):>9} {s['n']:>4} {s['errors']:>4}"
                    )
            j, st = modes[0].key, modes[1].key
            out()
            for base in ("direct", "direct+logprobs"):
                out(
                    f"gateway against {base}: added p50 (json) "
                    f"{f(stats[(j, 'gateway')]['p50'] - stats[(j, base)]['p50'], 1)} ms, ratio "
                    f"{f(stats[(j, 'gateway')]['p50'] / stats[(j, base)]['p50'], 3)}; added TTFT p50 (stream) "
                    f"{f(stats[(st, 'gateway')]['ttft50'] - stats[(st, base)]['ttft50'], 1)} ms"
                )
            out(
                "The gateway asks the engine for top-5 logprobs (entropy monitoring), so against plain direct"
            )
            out(
                "calls the added time includes the engine computing logprobs; against direct+logprobs it is the"
            )
            out(
                "proxying alone. One CPU engine on 2 shared cores: a difference within a few percent of a request"
            )
            out("is run-to-run noise (see p99).")
    finally:
        lg.close()
        for s in servers:
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="The high concurrency (default 64).")
    parser.add_argument("--c1-seconds", type=float, default=2.0, help="Length of a concurrency-1 cell.")
    parser.add_argument("--cn-seconds", type=float, default=3.0, help="Length of a high-concurrency cell.")
    parser.add_argument("--itl-ms", type=float, default=1.0, help="Gap between the fake's stream chunks.")
    parser.add_argument(
        "--ttft-ms", type=float, default=5.0, help="The fake's time to first token (prefill)."
    )
    parser.add_argument("--no-vllm-router", dest="vllm_router", action="store_false")
    parser.add_argument(
        "--no-litellm", dest="litellm", action="store_false", help="Leave LiteLLM's proxy out."
    )
    parser.add_argument(
        "--baseline", metavar="REF", help="Also run the gateway of this git commit (before a change)."
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="Measure only these targets (comma-separated, e.g. direct,proxy,gateway,gateway-before).",
    )
    parser.add_argument(
        "--real-engine", action="store_true", help="Direct vs gateway against a real vLLM engine."
    )
    parser.add_argument("--real-requests", type=int, default=15)
    parser.add_argument("--real-tokens", type=int, default=8)
    parser.add_argument("--no-save", dest="save", action="store_false", help="Do not write bench/results/.")
    args = parser.parse_args()
    out = fakes.Tee()
    if args.real_engine:
        asyncio.run(run_real(args, out))
        name = "gateway_overhead-real"
    else:
        run_fake(args, out)
        name = "gateway_overhead"
    if args.save:
        print(f"saved {out.save(name)}", file=sys.stderr)


if __name__ == "__main__":
    main()
