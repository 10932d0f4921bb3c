"""Fixtures for the monitor tests: a real Prometheus server and a real metrics exporter.

    start_prometheus(scrape_targets, tmp_path) -> (url, process)   a plain function
    prometheus       fixture: a function (targets -> url) that starts servers, stopped afterwards
    exporters        fixture: a function that serves lorafleet's metrics on a fresh registry over
                     HTTP (one call per gateway replica), stopped afterwards

Prometheus is the Debian build at /usr/bin/prometheus (scripts/setup.sh installs it); tests that
need it are skipped when it is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from monitor.metrics import Metrics, build_metrics

PROMETHEUS = shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package `prometheus`, see scripts/setup.sh)")
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
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [
                    PROMETHEUS,
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
