"""`make demo`: the whole loop on the embedded base model and the BANKING77 demo data.

    1. prepare the base model; check, audit and split the data; train two versions (v1: half an epoch,
       v2: the full preset); evaluate base vs v1 vs v2 on the held-out test split; register both
    2. start a vLLM engine, the gateway and Prometheus
    3. send traffic through the `openai` SDK with a 90/10 split, and score each version's answers
    4. run a canary from v1 to v2 that advances on the gate's real signals, until it is promoted
    5. send shifted traffic (intents the adapters never saw) and watch the drift signal rise
    6. post feedback: live accuracy per version
    7. roll back to v1, and end with a per-version summary and where to look

Every process it starts is stopped at the end (with --keep-running: at Ctrl-C), also on Ctrl-C,
SIGTERM or SIGHUP, after which it exits with 130. A canary the gate rolled back, or one that did not
finish in time, is reported as such and makes the demo exit 1. Everything it writes is under
out/demo/ (registry, routes, logs). `python -m lorafleet.demo --help` lists the knobs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from lorafleet.cli._output import format_table
from lorafleet.registry import Registry
from lorafleet.textstats import match_label

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "banking77"
TOKEN = "demo-admin-token"
CANARY_TIMEOUT_S = 600
# Drift windows of the demo's gateway; the shifted traffic fills one.
DRIFT_WINDOW = 120
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(message: str = "") -> None:
    print(message, flush=True)


def header(title: str) -> None:
    say()
    say(f"=== {title} " + "=" * max(0, 72 - len(title)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lorafleet_cmd() -> list[str]:
    script = Path(sys.executable).parent / "lorafleet"
    return (
        [str(script)] if script.exists() else [sys.executable, "-c", "from lorafleet.cli import main; main()"]
    )


class Processes:
    """Child processes in their own process groups, all stopped on exit (and on Ctrl-C)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.children.append((name, proc))
        return proc

    def stop_all(self) -> None:
        # A second Ctrl-C (or a SIGTERM) in the middle of this would leave children running.
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
        try:
            self._stop_all()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_all(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.children):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            say(f"stopped {name}")
        self.children.clear()


def wait_for(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what}: the process exited with code {proc.returncode}; see out/demo/logs/")
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if check():
                return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}; see out/demo/logs/")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as fh:
        return [(row["text"], row["label"]) for row in csv.DictReader(fh)]


class Gateway:
    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)

    def status(self) -> dict[str, Any]:
        return self.admin.get("/admin/status").json()  # type: ignore[no-any-return]

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.admin.post(path, json=body)
        if r.status_code >= 400:
            raise SystemExit(f"{path}: {r.status_code} {r.text}")
        return r.json()  # type: ignore[no-any-return]

    def monitor(self) -> dict[str, Any]:
        return self.admin.get("/admin/monitor").json()  # type: ignore[no-any-return]


def send_traffic(
    client: Any,
    model: str,
    examples: list[tuple[list[dict[str, str]], str]],
    users: list[str],
    workers: int = 8,
    offset: int = 0,
) -> list[tuple[str, str, str, str]]:
    """Send example offset+i as user `users[i]`; return (completion id, version, answer, expected)."""

    def one(i: int) -> tuple[str, str, str, str]:
        messages, expected = examples[(offset + i) % len(examples)]
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_tokens=16, temperature=0, user=users[i]
        )
        reply = raw.parse()
        return reply.id, raw.headers["x-lorafleet-version"], reply.choices[0].message.content or "", expected

    pool = ThreadPoolExecutor(workers)
    try:
        return list(pool.map(one, range(len(users))))
    finally:
        # On Ctrl-C (or a failed request) the queued requests are dropped, not sent first.
        pool.shutdown(wait=False, cancel_futures=True)


def per_version(results: list[tuple[str, str, str, str]], labels: list[str]) -> list[list[Any]]:
    served: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for _, version, answer, expected in results:
        served[version] += 1
        right[version] += match_label(answer, labels) == expected
    return [[v, served[v], f"{right[v] / served[v]:.1%}"] for v in sorted(served)]


@contextlib.contextmanager
def background(fn: Callable[[threading.Event], None]) -> Iterator[None]:
    """Run fn(stop) in a thread; set `stop` at the end, and wait for it unless interrupted."""
    stop = threading.Event()
    thread = threading.Thread(target=fn, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        stop.set()
        raise
    stop.set()
    thread.join(timeout=120)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lorafleet.demo", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "out" / "demo", help="Where everything goes (wiped first)."
    )
    parser.add_argument("--requests", type=int, default=200, help="Requests in the 90/10 split.")
    parser.add_argument("--v1-epochs", type=float, default=0.5, help="Epochs of version 1.")
    parser.add_argument("--skip-training", action="store_true", help="Reuse the versions already in --out.")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="Keep the engine, gateway and Prometheus up after the summary, until Ctrl-C.",
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    out: Path = args.out
    registry_dir, logs = out / "registry", out / "logs"
    if not args.skip_training and out.exists():
        shutil.rmtree(out)
    for d in (registry_dir, logs):
        d.mkdir(parents=True, exist_ok=True)
    registry = Registry(registry_dir)
    procs = Processes(logs)
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    interrupted = False
    problems: list[str] = []
    try:
        v1, v2, labels, test_examples = train_versions(args, registry, out)
        problems = serve_and_roll_out(args, registry, out, procs, v1, v2, labels, test_examples)
    except KeyboardInterrupt:
        interrupted = True
        say("\ninterrupted: stopping everything")
    finally:
        procs.stop_all()
        for s, handler in previous.items():
            signal.signal(s, handler)
    say(f"\ndemo finished in {(time.monotonic() - started) / 60:.1f} minutes; files in {out}")
    if interrupted:
        sys.exit(130)
    if problems:
        say("\nthe demo did not go as planned:")
        for problem in problems:
            say(f"  - {problem}")
        sys.exit(1)


def train_versions(
    args: argparse.Namespace, registry: Registry, out: Path
) -> tuple[str, str, list[str], list[tuple[list[dict[str, str]], str]]]:
    from lorafleet import basemodel
    from training.config import load_config
    from training.pipeline import finetune

    header("1. base model, data, two trained versions")
    say(f"base model: {basemodel.prepare()}")
    work = out / "work"
    if args.skip_training and len(registry.versions("banking")) >= 2:
        v1, v2 = (v.name for v in registry.versions("banking")[-2:])
        say(f"reusing {v1} and {v2}")
    else:
        preset = load_config(DATA / "train.yaml")
        first = finetune(
            DATA / "demo.csv",
            "banking",
            registry,
            preset.model_copy(update={"epochs": args.v1_epochs}),
            work_dir=work,
            log=say,
        )
        second = finetune(
            DATA / "demo.csv", "banking", registry, preset, skip_baseline=True, work_dir=work, log=say
        )
        v1, v2 = first.version, second.version
        rows = []
        for name, summary in (
            ("base (same prompt)", first.report.summary.get("base")),
            (v1, first.report.summary.get("tuned")),
            (v2, second.report.summary.get("tuned")),
        ):
            if summary:
                rows.append(
                    [name, f"{summary['accuracy']:.1%}", f"{summary['macro_f1']:.3f}", summary["examples"]]
                )
        header("evaluation on the held-out test split")
        say(format_table(["model", "accuracy", "macro-F1", "examples"], rows))
    test = [
        (row["messages"][:-1], row["messages"][-1]["content"])
        for row in read_jsonl(work / "split" / "test.jsonl")
    ]
    labels = registry.get(v2).reference().labels.labels  # type: ignore[union-attr]
    return v1, v2, labels, test


def serve_and_roll_out(
    args: argparse.Namespace,
    registry: Registry,
    out: Path,
    procs: Processes,
    v1: str,
    v2: str,
    labels: list[str],
    test: list[tuple[list[dict[str, str]], str]],
) -> list[str]:
    """Steps 2 to 7; returns what did not go as planned (empty: everything did)."""
    import openai

    problems: list[str] = []

    header("2. engine, gateway, Prometheus")
    engine_port, gw_port, prom_port = free_port(), free_port(), free_port()
    engine_url, gw_url, prom_url = (f"http://127.0.0.1:{p}" for p in (engine_port, gw_port, prom_port))
    engine = procs.start("engine", [*lorafleet_cmd(), "serve", "engine", "--port", str(engine_port)])
    say(f"engine starting on {engine_url} (vLLM, LoRA enabled; about a minute on 2 cores)")
    routes = out / "routes.yaml"
    routes.write_text(
        f"routes:\n  banking:\n    stable: {v1}\n    weights: {{{v2}: 10}}\n    fallback: base\n"
    )
    gw_env = {
        "LORAFLEET_ROUTER_ADMIN_TOKEN": TOKEN,
        "LORAFLEET_ROUTER_DRIFT_WINDOW": str(DRIFT_WINDOW),
        "LORAFLEET_ROUTER_DRIFT_MIN_SAMPLES": str(DRIFT_WINDOW * 5 // 6),
        "LORAFLEET_ROUTER_CONTROLLER_INTERVAL_S": "1",
        "LORAFLEET_ROUTER_PROMETHEUS_URL": prom_url,
    }
    gateway_cmd = [
        *lorafleet_cmd(), "gateway", "--routes", str(routes), "--registry", str(registry.root),
        "--engine", engine_url, "--port", str(gw_port), "--log-level", "warning",
    ]  # fmt: skip
    prometheus = shutil.which("prometheus")
    if not prometheus:
        say("prometheus is not installed: the gate reads the gateway's own metrics instead")
        gw_env.pop("LORAFLEET_ROUTER_PROMETHEUS_URL")
    gateway_proc = procs.start("gateway", gateway_cmd, gw_env)
    if prometheus:
        config = out / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
            f"rule_files: [{ROOT / 'monitor' / 'rules' / 'lorafleet-alerts.yml'}]\n"
            "scrape_configs:\n"
            f"  - job_name: lorafleet\n    static_configs: [{{targets: ['127.0.0.1:{gw_port}']}}]\n"
            f"  - job_name: vllm\n    static_configs: [{{targets: ['127.0.0.1:{engine_port}']}}]\n"
        )
        procs.start(
            "prometheus",
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={out / 'prometheus'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        )  # fmt: skip
    wait_for(lambda: httpx.get(f"{engine_url}/health").status_code == 200, 600, "the engine", engine)
    gw = Gateway(gw_url)
    wait_for(
        lambda: all(v["loaded_on"] for v in gw.status()["routes"]["banking"]["versions"]),
        120,
        "the gateway",
        gateway_proc,
    )
    say(f"engine {engine_url}   gateway {gw_url}/v1   prometheus {prom_url if prometheus else '(none)'}")
    client = openai.OpenAI(base_url=f"{gw_url}/v1", api_key="demo", max_retries=0, timeout=120)
    # The first requests after start warm the engine's LoRA kernels up.
    send_traffic(client, "banking", test[:4], [f"warmup-{i}" for i in range(4)], workers=2)

    header(f"3. {args.requests} requests through the openai SDK, split 90/10")
    users = [f"user-{i}" for i in range(args.requests)]
    results = send_traffic(client, "banking", test, users)
    say(format_table(["version", "requests", "accuracy"], per_version(results, labels)))

    header(f"4. canary {v2}: steps 25% -> 50% -> promote, each gated on real signals")
    gw.post("/admin/routes/banking/weights", {"weights": {}, "reason": "make room for the canary"})
    gw.post(
        "/admin/routes/banking/canary",
        {
            "version": v2,
            "weights": [25, 50],
            "step_duration_s": 10,
            "min_requests": 10,
            "reason": "demo canary",
        },
    )
    canary_results: list[tuple[str, str, str, str]] = []
    traffic_errors: list[str] = []

    def canary_traffic(stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            batch = [f"canary-user-{i + j}" for j in range(16)]
            try:
                canary_results.extend(send_traffic(client, "banking", test, batch, offset=i))
            except Exception as exc:  # reported below; after a stop the gateway is going away
                if not stop.is_set():
                    traffic_errors.append(repr(exc))
                return
            i += 16

    with background(canary_traffic):
        stuck = follow_canary(gw, CANARY_TIMEOUT_S)
    route = gw.status()["routes"]["banking"]
    promoted = stuck is None and route["stable"] == v2
    if stuck is not None:
        problems.append(f"the canary of {v2} did not finish within {CANARY_TIMEOUT_S} s ({stuck}); aborted")
        gw.post("/admin/routes/banking/abort", {"reason": "demo: the canary did not finish in time"})
        say(f"NOT PROMOTED: {problems[-1]}")
    elif promoted:
        say(f"promoted: stable is now {v2} (previous {route['previous']})")
    else:
        last = gw.admin.get("/admin/history", params={"route": "banking"}).json()["events"][-1]
        problems.append(
            f"the gate rolled the canary {v2} back ({last['action']}: {last['reason']}); "
            f"stable is still {route['stable']}"
        )
        say(f"ROLLED BACK: {problems[-1]}")
    if traffic_errors:
        problems.append(f"canary traffic stopped on an error: {traffic_errors[0]}")
        say(f"canary traffic stopped early: {traffic_errors[0]}")
    say(format_table(["version", "requests", "accuracy"], per_version(canary_results, labels)))

    header("5. shifted traffic: intents the adapters never saw")
    shifted = [
        ([*test[0][0][:-1], {"role": "user", "content": text}], label)
        for text, label in read_csv(DATA / "shifted.csv")[:DRIFT_WINDOW]
    ]
    send_traffic(client, "banking", shifted, [f"shifted-{i}" for i in range(len(shifted))])
    time.sleep(3)
    for v in gw.monitor()["versions"]:
        features = v["drift"]["features"]
        if features:
            drift = ", ".join(f"{k} PSI {f['psi']:.2f} ({f['level']})" for k, f in features.items())
            say(f"  {v['version']}: {drift}")

    header("6. feedback: the right label for each answer, joined to the version that answered")
    posted: Counter[int] = Counter()
    for cid, _, _, expected in results + canary_results:
        r = httpx.post(
            f"{gw_url}/v1/feedback", json={"completion_id": cid, "label": expected, "source": "demo"}
        )
        posted[r.status_code] += 1
    say(f"feedback posted: {dict(posted)}")

    header("7. roll back to the previous stable version, then the summary")
    if promoted:
        gw.post("/admin/routes/banking/rollback", {"reason": "demo: undo in one change"})
        route = gw.status()["routes"]["banking"]
        say(f"stable is {route['stable']} again; {route['previous']} stays pinnable while retiring")
    else:
        say(f"nothing to roll back: {v2} was never promoted, stable is {route['stable']}")
    rows = []
    for v in gw.monitor()["versions"]:
        acc = v["live_accuracy"]
        worst = max(v["drift"]["features"].items(), key=lambda kv: kv[1]["psi"], default=None)
        rows.append(
            [
                v["version"],
                v["state"],
                v["requests"],
                f"{v['error_ratio']:.1%}" if v["error_ratio"] is not None else "",
                f"{v['p95_latency_s']:.2f}" if v["p95_latency_s"] is not None else "",
                f"{v['mean_entropy_nats']:.3f}" if v["mean_entropy_nats"] is not None else "",
                f"{worst[0]} {worst[1]['psi']:.2f}" if worst else "",
                f"{acc:.1%} of {v['feedback']['total']}" if acc is not None else "",
            ]
        )
    say(
        format_table(
            [
                "version",
                "state",
                "requests",
                "errors",
                "p95 s",
                "entropy",
                "worst drift PSI",
                "live accuracy",
            ],
            rows,
        )
    )
    history = gw.admin.get("/admin/history", params={"route": "banking"}).json()["events"]
    say("\nroute history: " + " -> ".join(e["action"] for e in history))
    when = "until Ctrl-C" if args.keep_running else "only while the demo runs: --keep-running keeps them up"
    say(f"\nwhere to look ({when}):")
    say(f"  metrics:     {gw_url}/metrics   (vLLM's own: {engine_url}/metrics)")
    say(f"  status:      LORAFLEET_ADMIN_TOKEN={TOKEN} lorafleet monitor status --gateway {gw_url}")
    if prometheus:
        say(f"  Prometheus:  {prom_url}/graph?g0.expr={quote(PROMQL[0])}")
        for query in PROMQL:
            say(f"    {query}")
    say("  dashboard:   monitor/dashboards/lorafleet.json (import into Grafana)")
    say(f"  logs:        {out / 'logs'}")
    if args.keep_running:
        keep_running(procs)
    return problems


PROMQL = (
    "sum by (version) (rate(lorafleet_router_requests_total[1m]))",
    "max by (version, feature) (lorafleet_drift_psi)",
    "lorafleet_live_accuracy_ratio",
)


def follow_canary(gw: Gateway, timeout_s: float) -> str | None:
    """Print each change of the canary's state until it ends (None), or its state at the deadline."""
    deadline = time.monotonic() + timeout_s
    seen = ""
    while True:
        canary = gw.status()["routes"]["banking"]["canary"]
        if canary is None:
            return None
        progress = canary["progress"] or {}
        line = f"weight {canary['weight']}%, step {progress.get('step', 0) + 1}"
        if decision := progress.get("last_decision"):
            line += f", last gate: {decision['result']}"
        if progress.get("paused"):
            line += f", paused: {progress.get('pause_reason')}"
        if line != seen:
            say(f"  {time.strftime('%H:%M:%S')}  {line}")
            seen = line
        if time.monotonic() >= deadline:
            return line
        time.sleep(1)


def keep_running(procs: Processes) -> None:
    """Wait for Ctrl-C (a normal end here), or until one of the processes exits by itself."""
    say("\neverything keeps running: press Ctrl-C to stop it")
    try:
        while True:
            for name, proc in procs.children:
                if proc.poll() is not None:
                    say(f"{name} exited with code {proc.returncode}; see its log. Stopping the rest")
                    return
            time.sleep(1)
    except KeyboardInterrupt:
        say("")


if __name__ == "__main__":
    main()
