"""Issue 15: which HTTP client should the gateway forward through? Http1Pool against maintained ones.

    python bench/upstream_clients.py          about 4 minutes

The same minimal pass-through (bench/fakes.py: uvicorn + a plain ASGI callable, the gateway's own
stack) forwards to the fake upstream through each client, pinned alone to one core, interleaved
round by round in one run:

    http1pool   router/http1.py's Http1Pool, the gateway's own client (proxy-lean)
    aiohttp     one aiohttp ClientSession tuned for a proxy (no DNS lookups after the first, no
                decompression, no default headers, 64 KiB reads)
    httpcore    httpcore's AsyncConnectionPool used directly (httpx's transport, without httpx)
    pyreqwest   pyreqwest, Rust's reqwest/hyper under Python (installed for the benchmark only, into
                bench/.clients; never a project dependency)

The rule issue 15 sets: a maintained client replaces Http1Pool if it keeps >= 0.85x of Http1Pool's
requests/s at concurrency 64 (JSON and streams). Also printed: p50 latency at concurrency 1 and the
CPU each client's proxy spent per request (robust to other load on the core).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
from gateway_overhead import Mode, Target, f, measure, paired, pooled

CLIENTS = {
    "http1pool": "lean-proxy",
    "aiohttp": "aiohttp-proxy",
    "httpcore": "httpcore-proxy",
    "pyreqwest": "pyreqwest-proxy",
}
PYREQWEST = "pyreqwest==0.15.1"
MIN_RATIO = 0.85


def ensure_pyreqwest(target: Path = fakes.BENCH / ".clients") -> Path | None:
    """bench/.clients with pyreqwest in it (pip --target), or None when it cannot be installed."""
    if (target / "pyreqwest").is_dir():
        return target
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), PYREQWEST],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"pyreqwest could not be installed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--c1-seconds", type=float, default=2.0)
    parser.add_argument("--cn-seconds", type=float, default=3.0)
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args()

    out = fakes.Tee()
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-clients-"))
    out(fakes.machine_header("upstream clients (issue 15), fake upstream"))
    out(f"layout: {layout.describe()}")
    config = fakes.UpstreamConfig(chunks=8, ttft_s=0.005, itl_s=0.001)
    out("fake upstream: JSON answers at once; streams: first token after 5 ms, 8 chunks 1 ms apart")
    servers: list[fakes.Server] = []
    lg = fakes.LoadGenClient(layout.loadgen)
    try:
        upstream, up_url = fakes.start_upstream(layout.upstream, work / "upstream.log", config)
        servers.append(upstream)
        targets: list[Target] = []
        clients_dir = ensure_pyreqwest()
        for name, kind in CLIENTS.items():
            env = None
            if name == "pyreqwest":
                if clients_dir is None:
                    out("pyreqwest skipped: not installable here")
                    continue
                env = {"PYTHONPATH": str(clients_dir)}
            server, url = fakes.start_proxy(layout.sut, up_url, work / f"{name}.log", kind, env=env)
            servers.append(server)
            targets.append(Target(name, url, "bench", server))
        out(f"logs: {work}")
        for t in targets:
            for mode in (Mode(8, False, 1.0), Mode(8, True, 1.0), Mode(args.concurrency, False, 0.5)):
                measure(lg, t, mode)
        modes = [
            Mode(1, False, args.c1_seconds),
            Mode(args.concurrency, False, args.cn_seconds),
            Mode(args.concurrency, True, args.cn_seconds),
        ]
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for mode in modes:
                order = targets[r % len(targets) :] + targets[: r % len(targets)]
                for t in order:
                    t.cells.setdefault(mode.key, []).append(measure(lg, t, mode))
    finally:
        lg.close()
        for s in reversed(servers):
            s.stop()

    out()
    out(f"{args.rounds} rounds, interleaved; latencies pooled over rounds, req/s the median round")
    out(f"{'mode':<12} {'client':<10} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'cpu us/req':>10} {'err':>4}")
    for mode in modes:
        for t in targets:
            s = pooled(t.cells[mode.key])
            out(
                f"{mode.key:<12} {t.name:<10} {f(s['p50'], 3):>8} {f(s['p99'], 3):>8} {f(s['rps'], 0):>8} "
                f"{f(s['cpu_us'], 0):>10} {s['errors']:>4}"
            )
    out()
    out(f"against http1pool at concurrency {args.concurrency} (per-round ratios: median [min-max]):")
    base = next(t for t in targets if t.name == "http1pool")
    keep: dict[str, bool] = {}
    for t in targets:
        if t is base:
            continue
        ok = True
        for mode in modes[1:]:
            med, lo, hi = paired(t.cells[mode.key], base.cells[mode.key], "rps")
            cpu, _, _ = paired(base.cells[mode.key], t.cells[mode.key], "cpu")
            ok &= med >= MIN_RATIO
            out(
                f"  {t.name:<10} {mode.key:<12} req/s {f(med)} [{f(lo)}-{f(hi)}]   "
                f"CPU-per-request ratio http1pool/{t.name}: {f(cpu)}"
            )
        keep[t.name] = ok
    out()
    passing = [name for name, ok in keep.items() if ok]
    if passing:
        out(f"rule (>= {MIN_RATIO}x of Http1Pool's req/s, JSON and streams): met by {', '.join(passing)}")
    else:
        out(
            f"rule (>= {MIN_RATIO}x of Http1Pool's req/s, JSON and streams): met by none; "
            "Http1Pool stays the one implementation"
        )
    if args.save:
        print(f"saved {out.save('upstream_clients')}", file=sys.stderr)


if __name__ == "__main__":
    main()
