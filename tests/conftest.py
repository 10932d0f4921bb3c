"""Session fixtures: the real base model, two real trained adapter versions, one real vLLM engine.

The engine starts once per test session (about 30-60 s on 2 cores) under lorafleet's own
Supervisor, so a test that kills it sees it restarted with its adapters. Gateways run in threads
on free ports (`start_gateway`), talking to that engine over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lorafleet import basemodel
from lorafleet.registry import NewVersion, Registry
from lorafleet.textstats import reference_stats
from tests.support import InThreadServer, PostgresServer, free_port, postgres_bin, read_demo
from training.csvimport import labels_system_prompt
from training.dataset import Example

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TinyTask:
    """A small real classification task from the demo data, and the examples it was trained on."""

    labels: list[str]
    system: str
    train: list[Example]
    test: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    return basemodel.prepare()


@pytest.fixture(scope="session")
def tiny_task() -> TinyTask:
    rows = read_demo()
    labels = sorted({label for _, label in rows})
    system = labels_system_prompt(labels)
    per_label: dict[str, list[str]] = {}
    for text, label in rows:
        per_label.setdefault(label, []).append(text)
    train = [Example.from_turns(t, lab, system) for lab in labels for t in per_label[lab][:2]]
    test = [(t, lab) for lab in labels for t in per_label[lab][2:4]]
    return TinyTask(labels, system, train, test)


def register(registry: Registry, task: str, adapter_dir: Path, tiny: TinyTask, base: Path) -> str:
    """Register a trained adapter folder as a new version, with the demo's reference statistics."""
    rows = read_demo()
    reference = reference_stats(
        [t for t, _ in rows], [lab for _, lab in rows], tiny.labels, system_prompt=tiny.system
    )
    new = NewVersion(adapter_dir=adapter_dir, base_model=str(base), labels=tiny.labels, reference=reference)
    return registry.register(task, new).name


@pytest.fixture(scope="session")
def trained_registry(
    tmp_path_factory: pytest.TempPathFactory, tiny_task: TinyTask, base_model_dir: Path
) -> tuple[Registry, list[str]]:
    """A registry holding two real versions of the task 'banking', each trained for a few steps."""
    from training.config import TrainConfig
    from training.dataset import write_jsonl
    from training.train import train

    root = tmp_path_factory.mktemp("registry")
    work = tmp_path_factory.mktemp("train")
    data = work / "train.jsonl"
    write_jsonl(data, tiny_task.train)
    registry = Registry(root)
    names = []
    for seed, epochs in ((0, 1.0), (1, 2.0)):
        out = work / f"adapter-{seed}"
        train(
            TrainConfig(epochs=epochs, batch_size=10, seed=seed, learning_rate=1e-3),
            data,
            None,
            out,
            progress=False,
        )
        names.append(register(registry, "banking", out, tiny_task, base_model_dir))
    return registry, names


class EngineThread:
    """lorafleet's Supervisor running one real vLLM engine, in a thread with its own event loop."""

    def __init__(self, port: int, model_dir: Path, log_file: Path) -> None:
        from serve.engine import Engine, Supervisor
        from serve.settings import EngineSettings

        self.settings = EngineSettings(
            port=port,
            max_loras=4,
            max_lora_rank=16,
            kv_cache_gib=1.0,
            log_file=str(log_file),
            restart_backoff_s=1.0,
        )
        self.supervisor = Supervisor(Engine(self.settings, model_dir), track_interval_s=1.0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self.url = self.settings.url

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.supervisor.run())
        self.loop.run_forever()

    def start(self, timeout_s: float = 400) -> None:
        self.thread.start()
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 400) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"engine did not become healthy; see {self.settings.log_file}")

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.supervisor.stop(), self.loop)
        fut.result(timeout=90)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def engine(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineThread]:
    log_file = tmp_path_factory.mktemp("engine") / "vllm.log"
    eng = EngineThread(free_port(), base_model_dir, log_file)
    eng.start()
    # The first request with logprobs after start is slow once (kernel warm-up): pay it here.
    httpx.post(
        f"{eng.url}/v1/chat/completions",
        json={
            "model": "base",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "logprobs": True,
            "top_logprobs": 5,
        },
        timeout=120,
    )
    yield eng
    eng.stop()


class FaultProxy:
    """Fault injection, named as such: a pass-through HTTP proxy in front of a real engine, in a
    thread. It plays `script`'s faults on the first completion requests (429 with Retry-After,
    500, a hang), answers 500 to the completion requests whose body `fail(body)` picks, with
    `break_after` set it cuts every stream after that many events (the connection dropped, as by
    an engine that crashed), and with `rewrite` set it replaces each JSON completion answer by
    `rewrite(answer)` (an engine answering in another shape). Everything else reaches the engine
    unchanged."""

    def __init__(
        self,
        upstream: str,
        fail: Callable[[bytes], bool] | None = None,
        break_after: int | None = None,
        rewrite: Callable[[bytes], bytes] | None = None,
        script: list[str] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail = fail
        self.break_after = break_after
        self.rewrite = rewrite
        # The n-th completion request meets script[n]: "429" (with Retry-After: 1), "500", "hang"
        # (an answer only after 30 s), or "ok"; past the script, every request passes.
        self.script = list(script or [])
        self.completions = 0
        self.failed = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="fault-proxy", daemon=True)
        self.thread.start()
        assert ready.wait(10), "the fault proxy did not start"

    def _run(self, ready: threading.Event) -> None:
        import aiohttp
        from aiohttp import web

        async def start() -> web.AppRunner:
            self._stopping = asyncio.Event()
            self.session = aiohttp.ClientSession(auto_decompress=False)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return runner

        asyncio.set_event_loop(self.loop)
        self.runner = self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        if request.path.endswith("completions"):
            self.completions += 1
            fault = self.script[self.completions - 1] if self.completions <= len(self.script) else "ok"
            if fault == "429":
                self.failed += 1
                error = {"error": {"message": "injected: rate limited", "type": "rate_limit_error"}}
                return web.json_response(error, status=429, headers={"Retry-After": "1"})
            if fault == "500":
                self.failed += 1
                return web.json_response(
                    {"error": {"message": "injected", "type": "server_error"}}, status=500
                )
            if fault == "hang":
                self.failed += 1
                with contextlib.suppress(TimeoutError):  # until 30 s have passed or the proxy stops
                    await asyncio.wait_for(self._stopping.wait(), 30)
        if request.path.endswith("completions") and self.fail is not None and self.fail(body):
            self.failed += 1
            error = {"error": {"message": "injected: adapter crashed", "type": "InternalServerError"}}
            return web.json_response(error, status=500)
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with self.session.request(
            request.method, self.upstream + request.rel_url.path_qs, data=body or None, headers=headers
        ) as resp:
            content_type = resp.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                answer = await resp.read()
                if self.rewrite is not None and request.path.endswith("completions"):
                    answer = self.rewrite(answer)
                return web.Response(body=answer, status=resp.status, headers={"Content-Type": content_type})
            out = web.StreamResponse(status=resp.status, headers={"Content-Type": content_type})
            await out.prepare(request)
            events = 0  # whole events passed on; TCP may bring the engine's events in any chunks
            async for chunk in resp.content.iter_any():
                cut = 0
                while self.break_after is not None and events < self.break_after:
                    end = chunk.find(b"\n\n", cut)
                    if end < 0:
                        break
                    cut, events = end + 2, events + 1
                if self.break_after is not None and events >= self.break_after:
                    await out.write(chunk[:cut])
                    assert request.transport is not None
                    request.transport.abort()
                    return out
                await out.write(chunk)
            await out.write_eof()
            return out

    def stop(self) -> None:
        async def close() -> None:
            self._stopping.set()  # a hanging handler returns: cleanup waits for every handler
            await self.runner.cleanup()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """fault_proxy(engine_url, fail=, break_after=, rewrite=) -> a running FaultProxy (stopped after the test)."""
    started: list[FaultProxy] = []

    def start(upstream: str, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., InThreadServer]]:
    """Start a gateway: start_gateway(routes_yaml, registry=..., engines=[...], **settings)."""
    from router.app import create_app
    from router.server import GatewayHttpProtocol
    from router.settings import GatewaySettings

    started: list[InThreadServer] = []

    def start(
        routes_yaml: str,
        registry: Registry,
        engines: list[str],
        app_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> InThreadServer:
        routes_file = tmp_path / f"routes-{len(started)}.yaml"
        routes_file.write_text(routes_yaml)
        settings = GatewaySettings(
            routes_file=routes_file,
            registry=registry.root,
            engines=engines,
            admin_token=ADMIN_TOKEN,
            reload_interval_s=0.2,
            **{"reconcile_interval_s": 1.0, **kwargs},
        )
        gw = InThreadServer(create_app(settings, **(app_kwargs or {})), http=GatewayHttpProtocol)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def require_tool(path: str | None, reason: str) -> str:
    """`path` if an external tool was found; else skip the test saying `reason`, or fail it in CI
    (the CI environment variable set), so that CI cannot pass by skipping."""
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this test (the CI environment variable is set)")
        pytest.skip(reason)
    return path


@pytest.fixture(name="require_tool", scope="session")
def require_tool_fixture() -> Callable[[str | None, str], str]:
    """require_tool(path or None, reason) -> the path; for tests that cannot import this module."""
    return require_tool


# --- a real Prometheus server -----------------------------------------------------------

PROMETHEUS = shutil.which("prometheus")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_prometheus(
    scrape_targets: list[str],
    tmp_path: Path,
    *,
    scrape_interval_s: float = 1.0,
    rule_files: list[Path] | None = None,
    ready_timeout_s: float = 60.0,
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start Prometheus on a free loopback port scraping `host:port` targets; return (url, process).

    The caller stops the process (terminate, then kill). Its data and log live under `tmp_path`.
    """
    prometheus = require_tool(
        PROMETHEUS, "prometheus is not installed (Debian package `prometheus`, see scripts/setup.sh)"
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    interval = f"{round(scrape_interval_s * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "lorafleet", "static_configs": [{"targets": scrape_targets}]}],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log_file = tmp_path / "prometheus.log"
    last_error = ""
    for _ in range(3):  # a free port can be taken between choosing it and binding it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    return url, process
            time.sleep(0.1)
        _stop(process)
        last_error = log_file.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Prometheus did not become ready; its log:\n{last_error}")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    """Call with scrape targets (`host:port`) to get a running Prometheus' URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> str:
        url, process = start_prometheus(targets, tmp_path / f"prometheus-{len(started)}")
        started.append(process)
        return url

    yield start
    for process in started:
        _stop(process)


# --- a real PostgreSQL server -----------------------------------------------------------


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server per session; `postgres.new_database()` gives each test its own."""
    bindir = require_tool(
        str(postgres_bin()) if postgres_bin() else None,
        "PostgreSQL is not installed (Debian package `postgresql`, see scripts/setup.sh)",
    )
    server = PostgresServer(tmp_path_factory.mktemp("postgres"), Path(bindir))
    yield server
    server.remove()
