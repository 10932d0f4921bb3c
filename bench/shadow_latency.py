"""Issue 6: does a 100% shadow delay the client? Latency with shadow on over shadow off, one run.

    python bench/shadow_latency.py                 the fake upstream (20 ms service time), ~1.5 minutes
    python bench/shadow_latency.py --real-engine   the same against a real vLLM engine, once

Two `lorafleet gateway` processes, pinned to the same core, with the same route except its shadow:
off (v2 only pinned: live, no traffic) and on (`shadow: {version: v2, percent: 100}`: every request
is mirrored). Both keep the same versions loaded, so their reconcile loops never unload each other's. They
are measured in turn, round by round. The fake upstream answers after a fixed service time, so a
shadow that blocked the client would add that time to the client's latency; what a shadow that
runs in the background costs is only the gateway's CPU for the extra request, which shows as
queueing once the gateway's core is busy (hence concurrency 1 and a moderate concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
from fakes import LoadSpec, Server


def shadow_counts(url: str) -> dict[str, float]:
    """lorafleet_shadow_requests_total by outcome, from the gateway's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    counts: dict[str, float] = {}
    for m in re.finditer(r"^lorafleet_shadow_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        outcome = re.search(r'outcome="([^"]*)"', m.group(1))
        key = outcome.group(1) if outcome else "?"
        counts[key] = counts.get(key, 0.0) + float(m.group(2))
    return counts


def f(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


class Bench:
    def __init__(self, lg: fakes.LoadGenClient) -> None:
        self.lg = lg
        self.cells: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def run(self, name: str, gw: Server, url: str, key: str, spec: LoadSpec) -> None:
        result = self.lg.run(spec, gw)
        if result["errors"]:
            print(
                f"  {name} {key}: {result['errors']} errors, first: {result['first_error']}", file=sys.stderr
            )
        self.cells.setdefault((key, name), []).append(result)

    def report(self, out: fakes.Tee, keys: list[str], digits: int = 2) -> None:
        out(
            f"{'mode':<12} {'shadow':<7} {'p50 ms':>9} {'p99 ms':>9} {'ttft50':>9} {'req/s':>7} {'cpu us/req':>10} {'n':>6} {'err':>4}"
        )
        for key in keys:
            for name in ("off", "on"):
                cells = self.cells[(key, name)]
                lat = [x for c in cells for x in c["lat"]]
                ttft = [x for c in cells for x in c["ttft"]]
                n = len(lat)
                rps = statistics.median(len(c["lat"]) / c["elapsed_s"] for c in cells)
                cpu = sum(c["cpu_s"] for c in cells) / n * 1e6 if n else float("nan")
                out(
                    f"{key:<12} {name:<7} {f(fakes.pct(lat, 50), digits):>9} {f(fakes.pct(lat, 99), digits):>9} "
                    f"{f(fakes.pct(ttft, 50), digits) if ttft else '-':>9} {f(rps, 0):>7} {f(cpu, 0):>10} {n:>6} "
                    f"{sum(c['errors'] for c in cells):>4}"
                )
        out()
        out("ratio shadow on / off (p50 and p99 pooled over rounds; p50 per round: median [min-max]):")
        for key in keys:
            on, off = self.cells[(key, "on")], self.cells[(key, "off")]
            lat_on = [x for c in on for x in c["lat"]]
            lat_off = [x for c in off for x in c["lat"]]
            per_round = [
                fakes.pct(a["lat"], 50) / fakes.pct(b["lat"], 50)
                for a, b in zip(on, off, strict=True)
                if b["lat"]
            ]
            line = (
                f"  {key:<12} p50 {f(fakes.pct(lat_on, 50) / fakes.pct(lat_off, 50), 3)}  "
                f"p99 {f(fakes.pct(lat_on, 99) / fakes.pct(lat_off, 99), 3)}  "
                f"per round {f(statistics.median(per_round), 3)} [{f(min(per_round), 3)}-{f(max(per_round), 3)}]"
            )
            ttft_on = [x for c in on for x in c["ttft"]]
            ttft_off = [x for c in off for x in c["ttft"]]
            if ttft_on and ttft_off:
                line += f"  TTFT p50 {f(fakes.pct(ttft_on, 50) / fakes.pct(ttft_off, 50), 3)}"
            out(line)


def run_fake(args: argparse.Namespace, out: fakes.Tee) -> None:
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-shadow-"))
    out(fakes.machine_header("shadow latency (issue 6), fake upstream"))
    out(f"layout: {layout.describe()}; both gateways on core {layout.sut}")
    service = args.service_ms / 1e3
    config = fakes.UpstreamConfig(chunks=8, service_s=service, ttft_s=service, itl_s=0.001)
    out(
        f"fake upstream: JSON answers after {args.service_ms:g} ms; streams: first token after {args.service_ms:g} ms, "
        "8 chunks 1 ms apart"
    )
    servers: list[Server] = []
    lg = fakes.LoadGenClient(layout.loadgen)
    try:
        names = fakes.register_versions(work / "registry")
        upstream, up_url = fakes.start_upstream(layout.upstream, work / "upstream.log", config)
        servers.append(upstream)
        gateways: dict[str, tuple[Server, str]] = {}
        for name, shadow in (("off", None), ("on", names[1])):
            routes = fakes.routes_yaml(names[0], shadow=shadow, pinned=None if shadow else names[1])
            gw, url = fakes.start_gateway(
                layout.sut,
                work / f"gw-{name}",
                work / "registry",
                up_url,
                routes,
                work / f"gw-{name}.log",
                log_level=args.gateway_log_level,
            )
            servers.append(gw)
            gateways[name] = (gw, url)
        out(
            f"route 'bench': stable {names[0]}; shadow on: every request mirrored to {names[1]} (non-streaming)"
        )
        out(f"logs: {work}")
        bench = Bench(lg)
        modes = [(1, False), (1, True), (args.concurrency, False)]
        keys = [f"c={c} {'stream' if s else 'json'}" for c, s in modes]
        for name, (gw, url) in gateways.items():  # warm-up
            bench.run(
                name,
                gw,
                url,
                "warm-up",
                LoadSpec(url=url, body=fakes.chat_body("bench", False), concurrency=4, duration_s=1),
            )
        before = shadow_counts(gateways["on"][1])
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for (c, stream), key in zip(modes, keys, strict=True):
                order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                for name in order:
                    gw, url = gateways[name]
                    spec = LoadSpec(
                        url=url,
                        body=fakes.chat_body("bench", stream),
                        stream=stream,
                        concurrency=c,
                        duration_s=args.seconds,
                    )
                    bench.run(name, gw, url, key, spec)
        after = shadow_counts(gateways["on"][1])
    finally:
        lg.close()
        for s in reversed(servers):
            s.stop()
    out()
    out(f"{args.rounds} rounds, interleaved")
    bench.report(out, keys)
    shadowed = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}
    primaries = sum(
        len(c["lat"]) for (k, n), cells in bench.cells.items() if n == "on" and k != "warm-up" for c in cells
    )
    out()
    out(
        f"shadow requests during the measurement (lorafleet_shadow_requests_total by outcome): {shadowed}; "
        f"client requests to the shadow-on gateway: {primaries}"
    )
    out("(a 'dropped' shadow found all 16 shadow slots busy: shadow_max_concurrency)")
    out()
    out(
        f"A blocking shadow would add about {args.service_ms:g} ms (the fake's service time) to every request: a"
    )
    out("ratio near 1.0 at concurrency 1 means the client does not wait for it. At higher concurrency the")
    out(
        "shadow's CPU on the gateway's one core (one more upstream call, read and compared per request) shows"
    )
    out("as queueing: cpu us/req is the gateway's CPU per client request, shadow work included.")
    load = os.getloadavg()
    out(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


async def run_real(args: argparse.Namespace, out: fakes.Tee) -> None:
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-shadow-real-"))
    out(fakes.machine_header("shadow latency (issue 6), real vLLM engine"))
    out(f"both gateways pinned to core {layout.sut}; the engine uses every core (it is not pinned)")
    from lorafleet import basemodel

    adapter = await asyncio.to_thread(fakes.make_lora_adapter, basemodel.resolve(None), work / "adapter")
    names = fakes.register_versions(work / "registry", adapter_dir=adapter)
    lg = fakes.LoadGenClient(None)
    servers: list[Server] = []
    try:
        async with fakes.real_engine(work / "engine.log") as engine_url:
            gateways: dict[str, tuple[Server, str]] = {}
            for name, shadow in (("off", None), ("on", names[1])):
                routes = fakes.routes_yaml(names[0], shadow=shadow, pinned=None if shadow else names[1])
                gw, url = await asyncio.to_thread(
                    fakes.start_gateway,
                    layout.sut,
                    work / f"gw-{name}",
                    work / "registry",
                    engine_url,
                    routes,
                    work / f"gw-{name}.log",
                )
                servers.append(gw)
                gateways[name] = (gw, url)
            for name in names:
                await asyncio.to_thread(fakes.warm_up, engine_url, name)
            bench = Bench(lg)
            keys = ["c=1 json", "c=1 stream"]
            out(
                f"{args.real_requests} requests per cell, concurrency 1, max_tokens {args.real_tokens}, "
                "alternating off/on every 2 requests"
            )
            for key in keys:
                stream = key.endswith("stream")
                for i in range(max(1, args.real_requests // 2)):
                    for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                        gw, url = gateways[name]
                        spec = LoadSpec(
                            url=url,
                            body=fakes.chat_body("bench", stream, max_tokens=args.real_tokens),
                            stream=stream,
                            concurrency=1,
                            requests=2,
                        )
                        await asyncio.to_thread(bench.run, name, gw, url, key, spec)
                        # let the shadow finish before the next pair, as a client's think time would
                        await asyncio.sleep(args.real_gap_s)
            counts = shadow_counts(gateways["on"][1])
            bench.report(out, keys, digits=1)
            out()
            out(f"shadow requests (by outcome): {counts}")
            out(
                f"Each pair of requests is followed by {args.real_gap_s:g} s of quiet so the shadow of the last one"
            )
            out(
                "can finish. On one CPU engine a shadow request competes with the next client request for the"
            )
            out(
                "same cores (vLLM batches them), so a ratio above 1 here is engine contention, not the gateway"
            )
            out("waiting: the fake-upstream run isolates the gateway.")
    finally:
        lg.close()
        for s in servers:
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="Length of one cell.")
    parser.add_argument("--concurrency", type=int, default=8, help="The moderate concurrency (default 8).")
    parser.add_argument("--service-ms", type=float, default=20.0, help="The fake upstream's service time.")
    parser.add_argument("--gateway-log-level", default="warning", help="info shows why a shadow failed.")
    parser.add_argument("--real-engine", action="store_true")
    parser.add_argument("--real-requests", type=int, default=10)
    parser.add_argument("--real-tokens", type=int, default=8)
    parser.add_argument("--real-gap-s", type=float, default=1.5)
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args()
    out = fakes.Tee()
    if args.real_engine:
        asyncio.run(run_real(args, out))
        name = "shadow_latency-real"
    else:
        run_fake(args, out)
        name = "shadow_latency"
    if args.save:
        print(f"saved {out.save(name)}", file=sys.stderr)


if __name__ == "__main__":
    main()
