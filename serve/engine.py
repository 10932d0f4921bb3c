"""One vLLM OpenAI server process with LoRA enabled, and its supervisor.

`Engine` starts the process (`python -m vllm.entrypoints.openai.api_server`; the wheel's `vllm`
console script does not work with the CPU build), waits until `/health` answers, and stops it
(terminate, wait, kill). `Supervisor` keeps an engine running: a crashed engine is restarted with
exponential backoff and gets back every adapter that was loaded on it.

vLLM is never imported here: it runs in its own process, so neither serve nor router import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from lorafleet.baseid import alias, identify
from lorafleet.errors import BaseModelError
from serve.adapters import AdapterClient
from serve.errors import EngineStartError, ServeError
from serve.settings import Device, EngineSettings

log = logging.getLogger("lorafleet.serve")

_TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def cuda_available() -> bool:
    """True when an NVIDIA GPU is visible (without importing torch)."""
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidiactl").exists()


def served_names(settings: EngineSettings, model_dir: Path) -> list[str]:
    """The names the engine serves its base under: the configured one, then lorafleet's alias that
    says which base it is (`lorafleet-base@NAME@FINGERPRINT`), read by every gateway."""
    try:
        return [settings.served_model_name, alias(identify(model_dir))]
    except BaseModelError as exc:
        log.warning("the engine's base model cannot be fingerprinted (%s): gateways cannot verify it", exc)
        return [settings.served_model_name]


def build_command(settings: EngineSettings, model_dir: Path) -> list[str]:
    """The vLLM command line for these settings."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        *served_names(settings, model_dir),
        "--enable-lora",
        "--max-loras",
        str(settings.max_loras),
        "--max-lora-rank",
        str(settings.max_lora_rank),
        "--max-model-len",
        str(settings.max_model_len),
        "--dtype",
        settings.dtype,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--disable-uvicorn-access-log",
    ]
    if settings.max_cpu_loras:
        cmd += ["--max-cpu-loras", str(settings.max_cpu_loras)]
    if _device(settings) is Device.CUDA:
        cmd += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    return cmd + list(settings.extra_args)


def _device(settings: EngineSettings) -> Device:
    if settings.device is Device.AUTO:
        return Device.CUDA if cuda_available() else Device.CPU
    return settings.device


def build_env(settings: EngineSettings) -> dict[str, str]:
    """The engine's environment: runtime LoRA updates on; on the CPU, the KV cache size and allocators."""
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if _device(settings) is Device.CPU:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{settings.kv_cache_gib:g}"
        preload = [str(_TCMALLOC)] if _TCMALLOC.exists() else []
        iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
        if iomp.exists():
            preload.append(str(iomp))
        if preload and "LD_PRELOAD" not in env:
            env["LD_PRELOAD"] = ":".join(preload)
    return env


class Engine:
    """One vLLM server process."""

    def __init__(self, settings: EngineSettings, model_dir: Path) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.process: asyncio.subprocess.Process | None = None
        self._log_handle: int | None = None

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _check_port(self) -> None:
        """A port another server holds would answer /health for it: refuse before spawning."""
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.settings.host, self.settings.port))
            except OSError as exc:
                raise EngineStartError(
                    f"cannot start an engine on {self.url}: {exc.strerror or exc}",
                    hint="another process listens there: stop it, or choose another --port",
                ) from None

    def log_tail(self, lines: int = 12) -> str:
        """The last lines of the engine's log file, if it has one ('' otherwise)."""
        if not self.settings.log_file:
            return ""
        try:
            with open(self.settings.log_file, "rb") as f:  # appended to over every restart: read its end
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16_384))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def kill_leftovers(self) -> None:
        """vLLM's engine-core and worker processes can outlive the server they belong to (a crash,
        a kill -9): kill what is left of its process group."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def start(self) -> None:
        """Spawn the server and wait until /health answers 200, or raise EngineStartError."""
        self._check_port()
        cmd = build_command(self.settings, self.model_dir)
        out: int | None = None
        if self.settings.log_file:
            Path(self.settings.log_file).parent.mkdir(parents=True, exist_ok=True)
            out = os.open(self.settings.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._log_handle = out
        log.info("starting engine on %s: %s", self.url, " ".join(cmd))
        self.process = await asyncio.create_subprocess_exec(
            *cmd,
            env=build_env(self.settings),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.settings.startup_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    self.kill_leftovers()
                    tail = self.log_tail()
                    raise EngineStartError(
                        f"engine on {self.url} exited with code {self.process.returncode} while starting"
                        + (f"; the end of its log:\n{tail}" if tail else ""),
                        hint=f"see its log{' in ' + self.settings.log_file if self.settings.log_file else ''}",
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        log.info("engine on %s is healthy (pid %s)", self.url, self.process.pid)
                        return
                await asyncio.sleep(0.5)
        await self.stop()
        raise EngineStartError(
            f"engine on {self.url} was not healthy within {self.settings.startup_timeout_s:.0f} s",
            hint="raise --startup-timeout-s, or check the engine log",
        )

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self) -> None:
        """Terminate the process group, wait, then kill what is left."""
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.settings.stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self.kill_leftovers()
        if self._log_handle is not None:
            os.close(self._log_handle)
            self._log_handle = None


class Supervisor:
    """Keeps one engine running; restores its adapters after a crash.

    The adapters restored are the ones given at start and the ones the engine held when last
    looked at (every `track_interval_s`): those loaded at runtime (`lorafleet serve load`, a
    gateway's reconcile) come back too.
    """

    def __init__(
        self,
        engine: Engine,
        adapters: dict[str, Path] | None = None,
        on_event: Callable[[str], None] | None = None,
        track_interval_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.wanted: dict[str, Path] = dict(adapters or {})
        self.held: dict[str, Path] = {}  # what the engine held when last looked at
        self.track_interval_s = track_interval_s
        self.restarts = 0
        self._stopping = False
        self._on_event = on_event or (lambda msg: log.info("%s", msg))

    async def _restore_adapters(self) -> None:
        async with httpx.AsyncClient(timeout=60.0) as http:
            client = AdapterClient(self.engine.url, http)
            loaded = await client.loaded()
            for name, path in {**self.held, **self.wanted}.items():
                if name in loaded:
                    continue
                try:
                    await client.load(name, path)
                    self._on_event(f"loaded adapter {name} on {self.engine.url}")
                except Exception as exc:  # one bad adapter must not stop the others
                    self._on_event(f"adapter {name} failed to load on {self.engine.url}: {exc}")

    async def _track_adapters(self) -> None:
        async with httpx.AsyncClient(timeout=10.0) as http:
            client = AdapterClient(self.engine.url, http)
            while True:
                await asyncio.sleep(self.track_interval_s)
                with contextlib.suppress(httpx.HTTPError, ServeError):
                    self.held = {name: Path(root) for name, root in (await client.loaded()).items()}

    async def run(self) -> None:
        """Start the engine and restart it whenever it exits, until `stop()`."""
        settings = self.engine.settings
        delay = settings.restart_backoff_s
        ever_healthy = False
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.engine.start()
                ever_healthy = True
                self._on_event(f"engine on {self.engine.url} is healthy")
                await self._restore_adapters()
                tracker = asyncio.create_task(self._track_adapters())
                try:
                    code = await self.engine.wait()
                finally:
                    tracker.cancel()
                self.engine.kill_leftovers()
            except EngineStartError as exc:
                if not ever_healthy:
                    raise  # a bad flag, a taken port, a broken model: restarting will not help
                code = -1
                self._on_event(str(exc))
            if self._stopping:
                break
            if time.monotonic() - started > 5 * settings.restart_backoff_max_s:
                delay = settings.restart_backoff_s  # it ran long enough: start the backoff over
            self.restarts += 1
            self._on_event(
                f"engine on {self.engine.url} exited (code {code}); restart {self.restarts} in {delay:.0f} s"
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.restart_backoff_max_s)

    async def stop(self) -> None:
        self._stopping = True
        await self.engine.stop()
