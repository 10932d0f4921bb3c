"""The gateway's one HTTP client to the engines, and the reading of their answers.

One `httpx.AsyncClient` per process, opened in the app's lifespan, with explicit timeouts from the
settings. Its transport is aiohttp's (`httpx-aiohttp`) by default: httpx's own connection pool
costs about 5x more CPU per request under concurrency (bench/gateway_overhead.py measures both),
and the gateway's throughput on one core is bounded by it. Tests may pass any httpx transport.

httpx's exceptions become our own once, here: a refused connection or a timeout is an
`EngineFailure` that the gateway answers with another engine, the route's fallback or a 503/504.
httpx-aiohttp reports a refused connection and a server that hung up as `httpx.ConnectTimeout`
(its exception map picks the wrong one of two matches), so the cause is looked at too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson

from router.settings import GatewaySettings, Transport


def build_client(
    settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    t = settings.timeouts
    timeout = httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s)
    limits = httpx.Limits(
        max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
    )
    if transport is None and settings.transport is Transport.AIOHTTP:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    return httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)


@dataclass
class EngineFailure(Exception):
    """An engine did not answer usefully: the request may be retried on the fallback."""

    engine: str
    reason: str  # timeout, connect, status_5xx, not_loaded, no_engine
    detail: str
    status: int | None = None

    def __str__(self) -> str:
        return f"{self.engine}: {self.reason}: {self.detail}"


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def classify(exc: httpx.HTTPError, engine: str) -> EngineFailure:
    detail = f"{type(exc).__name__}: {exc}"
    for cause in _causes(exc)[1:]:
        if isinstance(cause, TimeoutError):  # aiohttp's timeouts (connect included) are TimeoutErrors
            return EngineFailure(engine, "timeout", detail)
        if isinstance(
            cause, ConnectionError | aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError
        ):
            return EngineFailure(engine, "connect", detail)
    if isinstance(exc, httpx.TimeoutException):
        return EngineFailure(engine, "timeout", detail)
    return EngineFailure(engine, "connect", detail)


def error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
        return str(data.get("error", {}).get("message") or data)
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500]


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Server-sent events from a byte stream: each `data: ...` payload, as soon as its event is complete."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + 2 :]
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip()
    if buffer.strip().startswith(b"data:"):
        yield buffer.strip()[5:].strip()


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"
