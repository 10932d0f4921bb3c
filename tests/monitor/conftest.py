"""Fixtures for the monitor tests: real metrics exporters (the `prometheus` fixture is in tests/conftest.py).

exporters        fixture: a function that serves lorafleet's metrics on a fresh registry over
                 HTTP (one call per gateway replica), stopped afterwards
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from monitor.metrics import Metrics, build_metrics


@dataclass
class Exporter:
    registry: CollectorRegistry
    metrics: Metrics
    target: str  # host:port, for a scrape config


@pytest.fixture
def exporters() -> Iterator[Callable[[], Exporter]]:
    """Call to serve lorafleet's metrics on a fresh registry at http://<target>/metrics."""
    servers: list[tuple[WSGIServer, threading.Thread]] = []

    def start() -> Exporter:
        registry = CollectorRegistry()
        metrics = build_metrics(registry)
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        return Exporter(registry, metrics, f"127.0.0.1:{server.server_port}")

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
