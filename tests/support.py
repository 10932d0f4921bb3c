"""What the tests share beside fixtures: a free port, an ASGI app served in a thread, a fake engine.

free_port()          a loopback port nothing listens on (yet)
truncated_model(src, dst, layers)
                     a second real base model: the first `layers` decoder layers of `src`
wait_until(pred)     poll until pred() is true (HTTP errors count as not yet), or fail naming what
versions_loaded(url, versions)
                     a gateway lists every one of `versions` as loaded on some engine
spawn_gateway(...)   `lorafleet gateway` as its own process, with short test intervals
InThreadServer(app)  the app served by uvicorn in a thread on a free port (lifespan on):
                     .url, .port, .app, .stop()
FakeEngine(config)   fault injection, named as such: the benchmarks' FAKE OpenAI upstream
                     (bench/fakes.py) in a thread; `refuse()` turns it into an engine that
                     refuses connections. What lorafleet promises is tested against the real
                     engine (tests/conftest.py's `engine` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bench.fakes import FakeOpenAIUpstream, UpstreamConfig, _UpstreamConnection

ROOT = Path(__file__).resolve().parents[1]
DEMO_CSV = ROOT / "data" / "banking77" / "demo.csv"
SHIFTED_CSV = ROOT / "data" / "banking77" / "shifted.csv"


def read_demo(path: Path = DEMO_CSV) -> list[tuple[str, str]]:
    with path.open(newline="") as fh:
        return [(row["text"], row["label"]) for row in csv.DictReader(fh)]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 90, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def versions_loaded(url: str, versions: list[str]) -> bool:
    response = httpx.get(f"{url}/v1/models", timeout=5)
    if response.status_code != 200:  # starting up
        return False
    data = response.json()["data"]
    return set(versions) <= {m["id"] for m in data if m["lorafleet"].get("loaded_on")}


def spawn_gateway(
    port: int,
    routes: Path,
    registry: Path,
    engine_url: str,
    log: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`lorafleet gateway` in its own process (admin token `test-admin-token`), its output to `log`."""
    full_env = {
        **os.environ,
        "LORAFLEET_ROUTER_ADMIN_TOKEN": "test-admin-token",
        "LORAFLEET_ROUTER_RELOAD_INTERVAL_S": "0.2",
        "LORAFLEET_ROUTER_CONTROLLER_INTERVAL_S": "0.5",
        "LORAFLEET_ROUTER_RECONCILE_INTERVAL_S": "1",
        **(env or {}),
    }
    cmd = [
        str(Path(sys.executable).parent / "lorafleet"),
        "gateway",
        "--routes", str(routes),
        "--registry", str(registry),
        "--engine", engine_url,
        "--port", str(port),
        "--log-level", "warning",
        *extra,
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)


def truncated_model(source: Path, target: Path, layers: int) -> Path:
    """A real, different base model: `source` with only its first `layers` decoder layers, written
    as a new model folder (safetensors rewritten byte for byte, config and tokenizer copied)."""
    import json
    import struct

    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy2(f, target / f.name)
    config = json.loads((source / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for weights in source.glob("*.safetensors"):
        with weights.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
            data = fh.read()
        kept: dict[str, Any] = {"__metadata__": header.pop("__metadata__", {"format": "pt"})}
        chunks, offset = [], 0
        for name in sorted(header, key=lambda n: header[n]["data_offsets"][0]):
            parts = name.split(".")
            if "layers" in parts and int(parts[parts.index("layers") + 1]) >= layers:
                continue
            start, end = header[name]["data_offsets"]
            chunks.append(data[start:end])
            kept[name] = {**header[name], "data_offsets": [offset, offset + end - start]}
            offset += end - start
        raw = json.dumps(kept, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with (target / weights.name).open("wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            for chunk in chunks:
                out.write(chunk)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InThreadServer:
    """An ASGI app served by uvicorn in a thread, on a free port (optionally under a root path)."""

    def __init__(
        self,
        app: Any,
        root_path: str = "",
        port: int | None = None,
        http: type[asyncio.Protocol] | None = None,
    ) -> None:
        """`http`: uvicorn's HTTP protocol class (the gateway's GatewayHttpProtocol), or its default."""
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            root_path=root_path,
            http=http or "auto",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="in-thread-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class FakeEngine:
    """Fault injection, named as such: the benchmarks' FAKE OpenAI upstream, in a thread, which
    `refuse()` turns into an engine that refuses connections (listener and open connections closed)."""

    def __init__(self, config: UpstreamConfig | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream = FakeOpenAIUpstream(config)
        self.connections: list[_UpstreamConnection] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                self.loop.create_server(self._connection, "127.0.0.1", self.port)
            )
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="fake-engine", daemon=True)
        self.thread.start()
        ready.wait(10)

    def _connection(self) -> _UpstreamConnection:
        conn = _UpstreamConnection(self.upstream)
        self.connections.append(conn)
        return conn

    def refuse(self) -> None:
        def close() -> None:
            self.server.close()
            for conn in self.connections:
                if conn.transport is not None:
                    conn.transport.close()

        self.loop.call_soon_threadsafe(close)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.05)
        raise AssertionError("the fake engine still accepts connections")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), if it is installed."""
    found = shutil.which("pg_config")
    if found:
        bindir = subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip()
        if bindir and (Path(bindir) / "initdb").exists():
            return Path(bindir)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


class PostgresServer:
    """A throwaway PostgreSQL server (trust authentication, loopback only, no fsync)."""

    USER = "lorafleet"

    def __init__(self, folder: Path, bindir: Path) -> None:
        self._as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_owner:
            # pytest's folders are root's own (0700): the postgres user needs one it can reach.
            folder = Path(tempfile.mkdtemp(prefix="lorafleet-pg-"))
            shutil.chown(folder, "postgres")
        self.folder, self.bindir = folder, bindir
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql://{self.USER}@127.0.0.1:{self.port}/postgres"
        self._databases = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.USER, "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_owner, str(self.bindir / program), *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop it (if it runs) and delete its files."""
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"
