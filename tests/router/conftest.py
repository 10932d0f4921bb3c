"""Fixtures for gateways over real HTTP without the vLLM engine (the real-engine fixtures are in
tests/conftest.py).

versions      module fixture: a registry with two registered versions of the task 'banking'
              (dummy adapter files), and their names
gateway       fixture: gateway(routes_yaml, engines=[...], root_path="", port=None, **settings) -> a running
              gateway (`InThreadServer`: .url, .port, .app); its admin token is "test-admin-token"
fake_engines  fixture: fake_engines(config=None) -> a FAKE engine (`FakeEngine`: .url, .refuse())
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.fakes import UpstreamConfig, register_versions
from lorafleet.registry import Registry
from router.app import create_app
from router.server import GatewayHttpProtocol
from router.settings import GatewaySettings
from tests.support import FakeEngine, InThreadServer, free_port

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, list[str]]:
    """A registry with two registered versions of the task 'banking' (dummy adapter files)."""
    root = tmp_path_factory.mktemp("registry")
    return Registry(root), register_versions(root, task="banking", count=2)


@pytest.fixture
def gateway(tmp_path: Path, versions: tuple[Registry, list[str]]) -> Iterator[Callable[..., InThreadServer]]:
    """gateway(routes_yaml, engines=[...], root_path="", app_kwargs=None, **settings) -> a running
    gateway (create_app(settings, **app_kwargs)), whose routes file is tmp_path / "routes-N.yaml"
    (N: 0 for the test's first gateway)."""
    registry, _ = versions
    started: list[InThreadServer] = []

    def start(
        routes_yaml: str | None,
        engines: list[str] | None = None,
        root_path: str = "",
        port: int | None = None,
        app_kwargs: dict[str, Any] | None = None,
        http: type[asyncio.Protocol] | None = GatewayHttpProtocol,
        **kwargs: Any,
    ) -> InThreadServer:
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
        server = InThreadServer(
            create_app(settings, **(app_kwargs or {})),
            root_path=root_path,
            port=port,
            http=http,
        )
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
