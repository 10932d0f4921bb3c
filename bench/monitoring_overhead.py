"""Issue 7: what monitoring costs the gateway, in throughput and in memory over time.

    python bench/monitoring_overhead.py                      about 5 minutes on 2 shared cores
    python bench/monitoring_overhead.py --requests 20000     a shorter memory run

1. Throughput, in one run, interleaved: `lorafleet gateway` processes pinned to the same core,
   - on: the defaults, monitoring on: metrics, drift windows, answer log, and top-5 logprobs asked
     and scored for every request of a version up to ~50 a second (`entropy_max_per_s`), a random
     ~50 a second beyond;
   - every: the same with `entropy_max_per_s=0`: logprobs asked and scored for every request;
   - sampled: `entropy_max_per_s=0`, `entropy_sample_percent=10`;
   - off: monitoring off as far as the gateway can switch it off: `entropy_top_k=0` (no logprobs
     asked, no entropy). The rest of the monitor (Observer.record: metrics, the drift window,
     label matching, the answer log) has no switch; its cost per request is measured in-process
     and printed as a share of the gateway's CPU per request.
2. Memory: a fresh gateway (monitoring on) answers `--requests` requests (80% JSON, 20% streams),
   every one from a new user id with a new completion id; its RSS after 1,000 requests against
   after all of them (flat means the drift windows and the answer log's queue stay bounded), the
   answer log's size on disk, and the size of /metrics.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
from fakes import LoadSpec, Server
from gateway_overhead import _time_us, cost_breakdown


def f(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def throughput(
    args: argparse.Namespace,
    out: fakes.Tee,
    layout: fakes.Layout,
    work: Path,
    lg: fakes.LoadGenClient,
    up_url: str,
    names: list[str],
    servers: list[Server],
) -> float:
    """Requests/s and CPU per request, monitoring on against off; return the on-gateway's CPU per request."""
    routes = fakes.routes_yaml(names[0], weighted=names[1])
    gateways: dict[str, tuple[Server, str]] = {}
    # (entropy_top_k, entropy_sample_percent, entropy_max_per_s); the rest of the monitor has no switch.
    configs = {
        "on": ("5", "100", "50"),
        "every": ("5", "100", "0"),
        "sampled": ("5", "10", "0"),
        "off": ("0", "100", "0"),
    }
    if args.control:  # the floor: a second, identical off gateway; and a budget of 1 a second
        configs = {
            "on": configs["on"],
            "on1": ("5", "100", "1"),
            "off": configs["off"],
            "off2": configs["off"],
        }
    for name, (top_k, sample, max_per_s) in configs.items():
        gw, url = fakes.start_gateway(
            layout.sut,
            work / f"gw-{name}",
            work / "registry",
            up_url,
            routes,
            work / f"gw-{name}.log",
            env={
                "LORAFLEET_ROUTER_ENTROPY_TOP_K": top_k,
                "LORAFLEET_ROUTER_ENTROPY_SAMPLE_PERCENT": sample,
                "LORAFLEET_ROUTER_ENTROPY_MAX_PER_S": max_per_s,
            },
        )
        servers.append(gw)
        gateways[name] = (gw, url)
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    modes = [(False, "json"), (True, "stream")]

    def run(name: str, stream: bool, seconds: float) -> dict[str, Any]:
        gw, url = gateways[name]
        spec = LoadSpec(
            url=url,
            body=fakes.chat_body("bench", stream),
            stream=stream,
            concurrency=args.concurrency,
            duration_s=seconds,
        )
        result = lg.run(spec, gw)
        if result["errors"]:
            print(f"  {name}: {result['errors']} errors, first: {result['first_error']}", file=sys.stderr)
        return result

    for name in gateways:
        for stream, _ in modes:
            run(name, stream, 1.0)
    for r in range(args.rounds):
        print(f"throughput round {r + 1}/{args.rounds}", file=sys.stderr)
        for stream, key in modes:
            names_ = list(configs)
            for name in names_ if r % 2 == 0 else names_[::-1]:
                cells.setdefault((key, name), []).append(run(name, stream, args.seconds))
    out()
    out(
        f"throughput at concurrency {args.concurrency}, {args.rounds} rounds interleaved, {args.seconds:g} s per cell"
    )
    out(
        f"{'mode':<8} {'monitoring':<11} {'req/s':>8} {'cpu us/req':>10} {'p50 ms':>8} {'p99 ms':>8} {'n':>7}"
    )
    cpu_on = float("nan")
    for _, key in modes:
        for name in configs:
            cs = cells[(key, name)]
            n = sum(len(c["lat"]) for c in cs)
            rps = statistics.median(len(c["lat"]) / c["elapsed_s"] for c in cs)
            cpu = sum(c["cpu_s"] for c in cs) / n * 1e6
            lat = [x for c in cs for x in c["lat"]]
            if key == "json" and name == "on":
                cpu_on = cpu
            out(
                f"{key:<8} {name:<11} {f(rps, 0):>8} {f(cpu, 0):>10} {f(fakes.pct(lat, 50)):>8} "
                f"{f(fakes.pct(lat, 99)):>8} {n:>7}"
            )
    out()
    out("monitoring on (every, sampled) / off (per round: median [min-max]); target: loss under 5%")
    compared = [name for name in configs if name != "off"]
    for (_, key), which in [(m, w) for w in compared for m in modes]:
        on, off = cells[(key, which)], cells[(key, "off")]
        rps_ratio = [
            (len(a["lat"]) / a["elapsed_s"]) / (len(b["lat"]) / b["elapsed_s"])
            for a, b in zip(on, off, strict=True)
        ]
        cpu_ratio = [
            (b["cpu_s"] / len(b["lat"])) / (a["cpu_s"] / len(a["lat"])) for a, b in zip(on, off, strict=True)
        ]
        med, cmed = statistics.median(rps_ratio), statistics.median(cpu_ratio)
        out(
            f"  {which:<8}{key:<7} req/s ratio {f(med, 3)} [{f(min(rps_ratio), 3)}-{f(max(rps_ratio), 3)}] "
            f"(loss {f(100 * (1 - med), 1)}%)   CPU-per-request ratio off/on {f(cmed, 3)} "
            f"(loss {f(100 * (1 - cmed), 1)}%)"
        )
    out("share of the answered requests whose entropy was scored (from each gateway's /metrics):")
    for name, (_, url) in gateways.items():
        scored, answered = scored_share(url)
        share = f"{100 * scored / answered:.1f}%" if answered else "-"
        out(f"  {name:<8} {share:>6}  ({scored:,.0f} of {answered:,.0f})")
    for _, (gw, _) in gateways.items():
        gw.stop()
    return cpu_on


def scored_share(url: str) -> tuple[float, float]:
    """(answers with an entropy, answered requests) over every version, from a gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    scored = answered = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lorafleet_response_token_entropy_nats_count":
                scored += sample.value
            elif (
                sample.name == "lorafleet_router_requests_total" and sample.labels.get("code_class") == "2xx"
            ):
                answered += sample.value
    return scored, answered


def answer_log(state: Path) -> tuple[int, int]:
    """(rows in the answer log, bytes on disk of the SQLite file with its WAL)."""
    db = state / "feedback.sqlite3"
    size = sum(p.stat().st_size for p in state.glob("feedback.sqlite3*"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    return int(rows), size


def monitoring_costs(out: fakes.Tee, work: Path, layout: fakes.Layout, cpu_on: float) -> None:
    """The monitoring pieces of the request path, called in-process, as shares of the gateway's CPU."""
    from monitor.entropy import EntropyAccumulator
    from router.answer import read_answer

    rows = cost_breakdown(work / "breakdown")
    out()
    out(
        f"monitoring work on the request path, in-process on core {layout.sut} "
        f"(share: of the monitoring-on gateway's {f(cpu_on, 0)} us of CPU per JSON request)"
    )
    switchable = ("with_logprobs", "entropy", "without_logprobs")
    for _, what, us in rows:
        if "monitoring" in what:
            tag = "entropy_top_k=0 removes it" if what.startswith(switchable) else "no switch"
            out(f"  {us:7.1f} us  {100 * us / cpu_on:5.1f}%  {what:<55} ({tag})")
    out("  (with top-5 logprobs the engine's answer is several times larger: more bytes to read and decode)")
    out("  the entropy part grows with the answer's length (top-5 logprobs, in-process, per request):")
    for tokens in (8, 64, 256):
        fake = fakes.FakeOpenAIUpstream(fakes.UpstreamConfig(chunks=tokens))
        with_lp, without = fake.completion_body("m", 0, 5), fake.completion_body("m", 0, None)
        extra = _time_us(lambda b=with_lp: read_answer(b), 300) - _time_us(
            lambda b=without: read_answer(b), 300
        )
        answer = read_answer(with_lp)
        assert answer is not None

        def score(a: Any = answer) -> float | None:
            acc = EntropyAccumulator()
            acc.add(a.choices[0].tokens())
            return acc.value()

        ent = _time_us(score, 300)
        out(
            f"    {tokens:>4} tokens: answer {len(with_lp):>6} bytes with logprobs ({len(without)} without); "
            f"extra read_answer {f(extra, 1)} us + logprobs decode and entropy {f(ent, 1)} us"
        )


def memory(
    args: argparse.Namespace,
    out: fakes.Tee,
    layout: fakes.Layout,
    work: Path,
    lg: fakes.LoadGenClient,
    up_url: str,
    names: list[str],
    servers: list[Server],
) -> None:
    routes = fakes.routes_yaml(names[0], weighted=names[1])
    state = work / "gw-memory"
    gw, url = fakes.start_gateway(
        layout.sut, state, work / "registry", up_url, routes, work / "gw-memory.log"
    )
    servers.append(gw)
    checkpoints = sorted(
        {1000, *[c for c in (10_000, 25_000, 50_000, 75_000) if c < args.requests], args.requests}
    )
    out()
    out(
        f"memory: one fresh gateway (monitoring on), {args.requests:,} requests at concurrency {args.concurrency}, "
        "80% JSON / 20% streams, a new user id and completion id each"
    )
    out(
        f"{'requests':>9} {'RSS MiB':>8} {'answer rows':>11} {'log MiB':>8} {'/metrics KiB':>12} {'errors':>6}"
    )
    done = 0
    errors = 0
    rss: dict[int, int] = {}
    for target in checkpoints:
        while done < target:
            batch = min(target - done, 5000)
            for stream, n in ((False, batch - batch // 5), (True, batch // 5)):
                if n == 0:
                    continue
                spec = LoadSpec(
                    url=url,
                    body=fakes.chat_body("bench", stream),
                    stream=stream,
                    concurrency=args.concurrency,
                    requests=n,
                )
                result = lg.run(spec)
                errors += result["errors"]
                done += n
        rss[target] = gw.rss_bytes()
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            metrics_size = len(r.read())
        time.sleep(0.5)  # the answer log is flushed every 0.2 s
        rows, size = answer_log(state)
        out(
            f"{target:>9,} {rss[target] / 2**20:>8.1f} {rows:>11,} {size / 2**20:>8.1f} {metrics_size / 1024:>12.1f} {errors:>6}"
        )
    last = checkpoints[-1]
    out()
    out(
        f"RSS after {last:,} / after 1,000 requests: {f(rss[last] / rss[1000], 3)} "
        f"(+{f((rss[last] - rss[1000]) / 2**20, 1)} MiB)"
    )
    if len(checkpoints) > 2:
        mid = checkpoints[len(checkpoints) // 2]
        out(
            f"RSS after {last:,} / after {mid:,}: {f(rss[last] / rss[mid], 3)} (growth in the second half of the run)"
        )
    out("The answer log grows on disk by design: one row per answered request, kept for the retention")
    out(
        "(30 days by default, pruned when the store opens and hourly while the gateway runs), whatever the traffic."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=100_000, help="Requests of the memory run.")
    parser.add_argument("--no-save", dest="save", action="store_false")
    parser.add_argument(
        "--control",
        action="store_true",
        help="Compare on, on with a budget of 1 a second, off and a second identical off (the noise floor).",
    )
    args = parser.parse_args()
    out = fakes.Tee()
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-monitoring-"))
    out(fakes.machine_header("monitoring overhead (issue 7), fake upstream"))
    out(f"layout: {layout.describe()}")
    out(
        "fake upstream: no service time; streams: first token after 5 ms, 8 chunks 1 ms apart; logprobs when asked"
    )
    out(f"route 'bench': 90/10 weighted split; logs: {work}")
    lg = fakes.LoadGenClient(layout.loadgen)
    servers: list[Server] = []
    try:
        names = fakes.register_versions(work / "registry")
        upstream, up_url = fakes.start_upstream(
            layout.upstream, work / "upstream.log", fakes.UpstreamConfig(ttft_s=0.005, itl_s=0.001)
        )
        servers.append(upstream)
        cpu_on = throughput(args, out, layout, work, lg, up_url, names, servers)
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {layout.sut})
        try:
            monitoring_costs(out, work, layout, cpu_on)
        finally:
            os.sched_setaffinity(0, saved)
        memory(args, out, layout, work, lg, up_url, names, servers)
    finally:
        lg.close()
        for s in reversed(servers):
            s.stop()
    load = os.getloadavg()
    out(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.save:
        print(f"saved {out.save('monitoring_overhead')}", file=sys.stderr)


if __name__ == "__main__":
    main()
