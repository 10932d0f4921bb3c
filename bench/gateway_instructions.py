"""Issue 15: the gateway's work per request against the minimal aiohttp proxy's, counted in
instructions by valgrind's callgrind: a number that does not move with the machine's load.

    python bench/gateway_instructions.py                     about 6 minutes
    python bench/gateway_instructions.py --baseline d567542  and the gateway of an earlier commit

requests/s on a shared machine moves by tens of percent between runs (bench/gateway_overhead.py
measures it, round against round, in one run). This counts what each server executes instead: the
system under test runs under `valgrind --tool=callgrind` with instrumentation off (warm-up at about
a fifth of its speed), then for each measurement its counters are zeroed, instrumentation turned on,
a fixed number of requests sent at concurrency 64 by the load generator (outside valgrind), and the
counters dumped. Two sizes, `--requests` and three times that, and their difference divided by the
difference in requests: what a run costs whatever its size (64 connections opened and closed, the
first and last batches) cancels out.

What it counts: user-space instructions of the whole process, Python, C extensions and libc, every
thread. What it does not: the kernel's side of system calls (strace shows how many), cache misses,
branch mispredictions. Under callgrind the server runs ~50x slower than the load, so it always finds
many requests ready at each turn of its loop: the instructions per request are those of a saturated
server, the regime of bench/gateway_overhead.py's c=64. Work done on a clock (the gateway's
reconcile loop and metrics windows) is counted per second of the slowed run: the idle rate is
measured and taken out. So is the gateway's rate limit on entropy (`entropy_max_per_s`, 50 a second
per version): at ~50 requests a second under callgrind it would score most answers, where at
c=64's thousands a second it scores a few percent; the gateways here score a fixed share instead,
`--entropy-percent` (3, about what the limit leaves at c=64 in bench/gateway_overhead.py).
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
from fakes import LoadSpec, Server

TOTALS = re.compile(rb"^totals: (\d+)", re.M)


@dataclass
class Counted:
    name: str
    server: Server
    url: str
    model: str
    dumps: Path
    per_request: dict[str, list[float]] = field(default_factory=dict)
    idle_per_s: float = float("nan")

    def _control(self, *args: str) -> None:
        run = subprocess.run(
            ["callgrind_control", *args, str(self.server.proc.pid)], capture_output=True, text=True
        )
        if run.returncode != 0 or "OK." not in run.stdout:
            raise RuntimeError(
                f"callgrind_control {' '.join(args)} for {self.name}: {run.stdout}{run.stderr}"
            )

    def count(self, work: Callable[[], object]) -> tuple[int, float]:
        """Instructions the server executes while `work()` runs, and for how many seconds."""
        before = set(self.dumps.parent.glob(self.dumps.name + "*"))
        self._control("-z")
        self._control("-i", "on")
        started = time.monotonic()
        work()
        seconds = time.monotonic() - started
        self._control("-i", "off")
        self._control("-d")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = set(self.dumps.parent.glob(self.dumps.name + "*")) - before
            for path in new:
                found = TOTALS.search(path.read_bytes())
                if found:
                    return int(found.group(1)), seconds
            time.sleep(0.2)
        raise RuntimeError(f"no callgrind dump from {self.name} in {self.dumps.parent}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", help="Also count `lorafleet gateway` of this commit.")
    parser.add_argument("--requests", type=int, default=500, help="The small size; the large is 3x.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--idle-s", type=float, default=10.0, help="How long the idle rate is counted.")
    parser.add_argument(
        "--entropy-percent", type=int, default=3, help="Share of requests the gateways score (entropy)."
    )
    parser.add_argument("--ttft-ms", type=float, default=5.0, help="The fake upstream's time to first token.")
    parser.add_argument("--itl-ms", type=float, default=1.0, help="Its time between stream chunks.")
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        sys.exit("error: valgrind is not installed (Debian: apt-get install valgrind)")
    out = fakes.Tee()
    out(fakes.machine_header("gateway instructions per request, callgrind (issue 15)"))
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-instr-"))
    out(f"layout: {layout.describe()}")
    config = fakes.UpstreamConfig(chunks=8, ttft_s=args.ttft_ms / 1e3, itl_s=args.itl_ms / 1e3)
    small, large = args.requests, 3 * args.requests
    out(
        f"load: c={args.concurrency}, JSON and streams ({config.chunks} chunks, first after {args.ttft_ms:g} ms, "
        f"then {args.itl_ms:g} ms apart), {small} and {large} requests "
        f"per measurement, {args.rounds} rounds; instructions per request = difference / {large - small}"
    )
    names = fakes.register_versions(work / "registry")
    servers: list[Server] = []
    counted: list[Counted] = []
    lg = fakes.LoadGenClient(layout.loadgen)
    before = fakes.worktree(args.baseline, work / "before") if args.baseline else None

    def load(target: Counted, stream: bool, n: int) -> None:
        spec = LoadSpec(
            url=target.url,
            body=fakes.chat_body(target.model, stream, max_tokens=16),
            stream=stream,
            concurrency=args.concurrency,
            requests=n,
        )
        result = lg.run(spec)
        if result["errors"] or len(result["lat"]) != n:
            raise RuntimeError(
                f"{target.name}: {len(result['lat'])} of {n} answered, first error: {result['first_error']}"
            )

    def grind(name: str) -> tuple[list[str], Path]:
        dumps = work / f"{name}.callgrind"
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dumps}"], dumps

    try:
        upstream, up_url = fakes.start_upstream(layout.upstream, work / "upstream.log", config)
        servers.append(upstream)
        wrap, dumps = grind("proxy")
        proxy, url = fakes.start_proxy(layout.sut, up_url, work / "proxy.log", wrap=wrap, timeout_s=300)
        servers.append(proxy)
        counted.append(Counted("proxy", proxy, url, names[0], dumps))
        routes = fakes.routes_yaml(names[0], weighted=names[1])
        entropy = {
            "LORAFLEET_ROUTER_ENTROPY_MAX_PER_S": "0",
            "LORAFLEET_ROUTER_ENTROPY_SAMPLE_PERCENT": str(args.entropy_percent),
        }
        gateways: list[tuple[str, Path | None]] = [("gateway", None)]
        if before is not None:
            gateways.append(("gateway-before", before))
        for name, source in gateways:
            wrap, dumps = grind(name)
            gw, url = fakes.start_gateway(
                layout.sut,
                work / name,
                work / "registry",
                up_url,
                routes,
                work / f"{name}.log",
                env=entropy,
                source=source,
                wrap=wrap,
                timeout_s=300,
            )
            servers.append(gw)
            counted.append(Counted(name, gw, url, "bench", dumps))
        if before is not None:
            out(f"gateway-before: `lorafleet gateway` of {args.baseline} (a git worktree), same settings")
        out(
            f"route 'bench': stable {names[0]} 90%, weighted {names[1]} 10%; entropy on {args.entropy_percent}% "
            f"of requests; logs and dumps: {work}"
        )
        for t in counted:  # warm-up, uninstrumented: connections, pools, caches, lazy imports
            for stream in (False, True):
                load(t, stream, small)
        for t in counted:
            idle, seconds = t.count(functools.partial(time.sleep, args.idle_s))
            t.idle_per_s = idle / seconds
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for stream in (False, True):
                kind = "stream" if stream else "json"
                order = counted[r % len(counted) :] + counted[: r % len(counted)]
                for t in order:
                    started = time.monotonic()
                    a, a_s = t.count(functools.partial(load, t, stream, small))
                    b, b_s = t.count(functools.partial(load, t, stream, large))
                    raw = (b - a) / (large - small)
                    per = raw - t.idle_per_s * (b_s - a_s) / (large - small)
                    t.per_request.setdefault(kind, []).append(per)
                    out(
                        f"round {r + 1} {kind:<6} {t.name:<15} {a / 1e6:7.1f} M in {a_s:4.1f} s / {small}, "
                        f"{b / 1e6:7.1f} M in {b_s:4.1f} s / {large}: {raw / 1e3:6.1f} k instructions/request, "
                        f"{per / 1e3:6.1f} k without the idle rate ({time.monotonic() - started:.0f} s)"
                    )
    finally:
        lg.close()
        for s in reversed(servers):
            s.stop()
        if before is not None:
            fakes.remove_worktree(work / "before")
    out()
    out(
        "instructions per request without the idle rate (median of rounds [min-max]); "
        "idle: instructions per second with no load"
    )
    for t in counted:
        cells = []
        for kind, values in t.per_request.items():
            cells.append(
                f"{kind} {statistics.median(values) / 1e3:6.1f} k [{min(values) / 1e3:.1f}-{max(values) / 1e3:.1f}]"
            )
        out(f"  {t.name:<15} {'; '.join(cells)}; idle {t.idle_per_s / 1e3:.0f} k/s")
    out()
    out(
        "ratios, per round (same round, same load), a's instructions per request over b's (> 1: b executes less)"
    )
    by_name = {t.name: t for t in counted}
    for a, b in (("proxy", "gateway"), ("proxy", "gateway-before"), ("gateway-before", "gateway")):
        if a not in by_name or b not in by_name:
            continue
        for kind, values in by_name[b].per_request.items():
            ratios = [x / y for x, y in zip(by_name[a].per_request[kind], values, strict=True)]
            out(
                f"  {a} / {b:<15} {kind:<6} {statistics.median(ratios):.3f}x "
                f"[{min(ratios):.3f}-{max(ratios):.3f}]"
            )
    if args.save:
        print(f"saved {out.save('gateway_instructions')}", file=sys.stderr)


if __name__ == "__main__":
    main()
