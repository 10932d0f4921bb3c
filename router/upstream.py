"""The gateway's connections to the engines, and the reading of their answers.

Two pools per process, opened in the app's lifespan:
- the request path forwards through router/http1.py's `Http1Pool`: aiohttp's client costs about
  120 us of CPU per forwarded request more, httpx's about 300 us more than aiohttp's
  (bench/gateway_overhead.py measures the three), and the gateway's throughput on one core is
  bounded by its CPU;
- the engine-management calls (health, adapter load/unload, Prometheus, peers) go through one
  `aiohttp.ClientSession`, directly or as an `httpx.AsyncClient` over it (`httpx-aiohttp`).

Transport exceptions become our own once, here: a refused connection or a timeout is an
`EngineFailure` that the gateway answers with another engine, the route's fallback or a 503/504.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson

from router.http1 import Http1Pool, Timeouts, UpstreamConnectionError
from router.settings import GatewaySettings

UPSTREAM_ERRORS = (aiohttp.ClientError, UpstreamConnectionError, asyncio.TimeoutError)


def build_pool(settings: GatewaySettings) -> Http1Pool:
    """The request path's pool: at most `max_connections` connections to each engine."""
    return Http1Pool(settings.max_connections)


def build_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The management calls' pool: `max_connections` connections in all and to any one engine."""
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections, limit_per_host=settings.max_connections, ttl_dns_cache=10
    )
    t = settings.timeouts
    timeout = aiohttp.ClientTimeout(
        total=None, connect=t.pool_s + t.connect_s, sock_connect=t.connect_s, sock_read=t.read_s
    )
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False, trust_env=False)


def build_client(settings: GatewaySettings, session: aiohttp.ClientSession) -> httpx.AsyncClient:
    """An httpx client over `session` (the same pool), for the engine-management calls."""
    from httpx_aiohttp import AiohttpTransport

    t = settings.timeouts
    timeout = httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s)
    return httpx.AsyncClient(timeout=timeout, transport=AiohttpTransport(client=session))


def forward_timeout(settings: GatewaySettings, remaining_s: float | None = None) -> Timeouts:
    """Timeouts of one forwarded request, none longer than the `remaining_s` of its deadline."""
    t = settings.timeouts
    cap = remaining_s if remaining_s is not None else float("inf")
    return Timeouts(pool_s=min(t.pool_s, cap), connect_s=min(t.connect_s, cap), read_s=min(t.read_s, cap))


@dataclass
class EngineFailure(Exception):
    """An engine did not answer usefully: the request may be retried on the fallback."""

    engine: str
    reason: str  # timeout, connect, status_5xx, not_loaded, no_engine
    detail: str
    status: int | None = None

    def __str__(self) -> str:
        return f"{self.engine}: {self.reason}: {self.detail}"


def classify(exc: BaseException, engine: str) -> EngineFailure:
    """A failed call to an engine (an exception of UPSTREAM_ERRORS) as a timeout or a connect failure."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):  # every client's timeouts (connect included) are TimeoutErrors
        return EngineFailure(engine, "timeout", detail)
    return EngineFailure(engine, "connect", detail)


def error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
        return str(data.get("error", {}).get("message") or data)
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500]


class SSEBuffer:
    """The `data:` payloads of server-sent events in a byte stream, fed chunk by chunk as it arrives."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads of every event that `chunk` completes."""
        *events, self._rest = (self._rest + chunk if self._rest else chunk).split(b"\n\n")
        payloads: list[bytes] = []
        for event in events:
            if event.startswith(b"data:") and b"\n" not in event:  # one line: the usual event
                payloads.append(event[5:].strip())
                continue
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    payloads.append(line[5:].strip())
        return payloads

    def close(self) -> list[bytes]:
        """The payload of a last event the stream ended without a blank line after."""
        rest, self._rest = self._rest.strip(), b""
        return [rest[5:].strip()] if rest.startswith(b"data:") else []


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"
