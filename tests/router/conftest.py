"""Fixtures for gateways over real HTTP without the vLLM engine (the real-engine fixtures are in
tests/conftest.py).

versions      module fixture: a registry with two registered versions of the task 'banking'
              (dummy adapter files), and their names
gateway       fixture: gateway(routes_yaml, engines=[...], root_path="", port=None, **settings) -> a running
              gateway (`Server`: .url, .port, .app); its admin token is "test-admin-token"
fake_engines  fixture: fake_engines(config=None) -> a FAKE engine (`FakeEngine`: .url, .refuse())
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from bench.fakes import FakeOpenAIUpstream, UpstreamConfig, _UpstreamConnection, register_versions
from lorafleet.registry import Registry
from router.app import create_app
from router.settings import GatewaySettings

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """An ASGI app served by uvicorn in a thread, on a free port (optionally under a root path)."""

    def __init__(self, app: Any, root_path: str = "", port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", root_path=root_path
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "gateway did not start"
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

        self.thread = threading.Thread(target=run, daemon=True)
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


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, list[str]]:
    """A registry with two registered versions of the task 'banking' (dummy adapter files)."""
    root = tmp_path_factory.mktemp("registry")
    return Registry(root), register_versions(root, task="banking", count=2)


@pytest.fixture
def gateway(tmp_path: Path, versions: tuple[Registry, list[str]]) -> Iterator[Callable[..., Server]]:
    """gateway(routes_yaml, engines=[...], root_path="", **settings) -> a running gateway, whose routes
    file is tmp_path / "routes-N.yaml" (N: 0 for the test's first gateway)."""
    registry, _ = versions
    started: list[Server] = []

    def start(
        routes_yaml: str | None,
        engines: list[str] | None = None,
        root_path: str = "",
        port: int | None = None,
        **kwargs: Any,
    ) -> Server:
        routes_file = tmp_path / f"routes-{len(started)}.yaml"
        if routes_yaml is not None:
            routes_file.write_text(routes_yaml)
        settings = GatewaySettings(
            routes_file=routes_file,
            registry=registry.root,
            engines=engines or [f"http://127.0.0.1:{free_port()}"],
            admin_token=ADMIN_TOKEN,
            **{"reconcile_interval_s": 60.0, **kwargs},
        )
        server = Server(create_app(settings), root_path=root_path, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fake_engines() -> Iterator[Callable[..., FakeEngine]]:
    """fake_engines(config=None) -> a FAKE engine on a free port, stopped after the test."""
    started: list[FakeEngine] = []

    def start(config: UpstreamConfig | None = None) -> FakeEngine:
        started.append(FakeEngine(config))
        return started[-1]

    yield start
    for engine in started:
        engine.stop()
