"""Issue 15: where the gateway's CPU goes, this tree against an earlier commit, sampled by py-spy.

    python bench/gateway_profile.py --baseline 43f6cb3      about 2 minutes; py-spy in bench/.venv-pyspy

Both gateways (this tree's `lorafleet gateway` and the baseline's, from a git worktree), the same
settings as bench/gateway_overhead.py's `gateway`, in front of the fake upstream, pinned to the same
core, take the same load in turn, round after round (c=64 streams by default). py-spy samples each
one's event-loop thread while it serves. Reported per round: requests, CPU per request (psutil);
then, per 1,000 requests, the samples of each function where the loop spent them (self time), the
functions whose cost differs most first: a regression between the two shows up by name.
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
from fakes import LoadSpec

LOOP_FRAME = "Runner.run (asyncio/runners.py"  # every frame of the event-loop thread sits under it


def _frame(raw: str) -> str:
    """`fn (/abs/path/site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py)`."""
    raw = re.sub(r" \((?:/[^)]*/)?(?:site-packages/)?", " (", raw)
    return re.sub(r":\d+\)$", ")", raw)


def loop_samples(path: Path) -> tuple[collections.Counter[str], int]:
    """Self samples per function of the event-loop thread, from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";")]
        if not any(f.startswith(LOOP_FRAME) for f in frames):
            continue  # a worker thread, mostly waiting for work
        own[frames[-1]] += int(count)
        total += int(count)
    return own, total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="The commit to compare against.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=12, help="Length of one gateway's turn.")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", dest="stream", action="store_false", help="JSON answers, not streams.")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second.")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args()
    spy = fakes.ensure_pyspy()
    if spy is None:
        sys.exit("error: py-spy could not be installed into bench/.venv-pyspy")
    out = fakes.Tee()
    kind = "streams" if args.stream else "JSON"
    out(fakes.machine_header(f"gateway profile: this tree against {args.baseline} (issue 15)"))
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-profile-"))
    out(f"layout: {layout.describe()}")
    out(
        f"load: c={args.concurrency} {kind}, {args.seconds} s per gateway per round, {args.rounds} rounds; py-spy at {args.rate} Hz"
    )
    names = fakes.register_versions(work / "registry")
    config = fakes.UpstreamConfig(chunks=8, ttft_s=0.005, itl_s=0.001)
    servers: list[fakes.Server] = []
    lg = fakes.LoadGenClient(layout.loadgen)
    before = fakes.worktree(args.baseline, work / "before")
    cells: dict[str, list[tuple[int, float, Path]]] = {"gateway": [], "gateway-before": []}
    try:
        upstream, up_url = fakes.start_upstream(layout.upstream, work / "upstream.log", config)
        servers.append(upstream)
        routes = fakes.routes_yaml(names[0], weighted=names[1])
        gateways = {}
        for name, source in (("gateway", None), ("gateway-before", before)):
            gw, url = fakes.start_gateway(
                layout.sut,
                work / name,
                work / "registry",
                up_url,
                routes,
                work / f"{name}.log",
                source=source,
            )
            servers.append(gw)
            gateways[name] = (gw, url)

        def load(url: str, seconds: float) -> dict[str, object]:
            spec = LoadSpec(
                url=url,
                body=fakes.chat_body("bench", args.stream, max_tokens=16),
                stream=args.stream,
                concurrency=args.concurrency,
                duration_s=seconds,
            )
            return lg.run(spec)

        for _, url in gateways.values():  # warm-up: connections, pools, caches
            load(url, 2)
        for r in range(args.rounds):
            order = list(gateways.items()) if r % 2 == 0 else list(reversed(gateways.items()))
            for name, (gw, url) in order:
                samples = work / f"{name}-{r}.txt"
                cpu0 = gw.cpu_s()
                sampler = subprocess.Popen(
                    [str(spy), "record", "--pid", str(gw.proc.pid), "--rate", str(args.rate), "--format",
                     "raw", "--output", str(samples), "--duration", str(args.seconds)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(0.5)  # attached before the load starts
                result = load(url, args.seconds - 1)
                cpu_s = gw.cpu_s() - cpu0
                sampler.wait(60)
                n = len(result["lat"])  # type: ignore[arg-type]
                cells[name].append((n, cpu_s, samples))
                out(
                    f"round {r + 1} {name:<15} {n:6d} requests, {result['errors']} errors, {1e6 * cpu_s / n:5.0f} us CPU/request"
                )
    finally:
        lg.close()
        for s in reversed(servers):
            s.stop()
        fakes.remove_worktree(work / "before")
    per_k: dict[str, collections.Counter[str]] = {}
    loop_k: dict[str, float] = {}
    out()
    for name, rows in cells.items():
        own: collections.Counter[str] = collections.Counter()
        total = requests = 0
        for n, _, path in rows:
            got, t = loop_samples(path)
            own.update(got)
            total += t
            requests += n
        per_k[name] = collections.Counter({k: 1000 * v / requests for k, v in own.items()})
        loop_k[name] = 1000 * total / requests
        cpu = [1e6 * c / n for n, c, _ in rows]
        out(
            f"{name:<15} CPU/request median {statistics.median(cpu):.0f} us (rounds {', '.join(f'{c:.0f}' for c in cpu)}); "
            f"event-loop samples per 1,000 requests {loop_k[name]:.1f}"
        )
    a, b = per_k["gateway"], per_k["gateway-before"]
    out(
        f"ratio of event-loop samples per request, this tree / {args.baseline}: {loop_k['gateway'] / loop_k['gateway-before']:.3f}"
    )
    out()
    out(
        f"self samples per 1,000 requests, largest differences first (this tree, {args.baseline}, difference)"
    )
    for key in sorted(set(a) | set(b), key=lambda k: -abs(a[k] - b[k]))[: args.top]:
        out(f"  {a[key]:7.2f} {b[key]:7.2f} {a[key] - b[key]:+7.2f}  {key[:120]}")
    out()
    out("where this tree's event loop spends its samples (per 1,000 requests)")
    for key, v in a.most_common(args.top):
        out(f"  {v:7.2f}  {key[:120]}")
    out(f"samples: {work}")
    if args.save:
        print(f"saved {out.save('gateway_profile')}", file=sys.stderr)


if __name__ == "__main__":
    main()
