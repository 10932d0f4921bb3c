"""The gateway's two ways to the engines, and the one place their failures become ours.

    Transport        the request path's seam: POST a completion to an engine, read the answer whole
                     or as it comes. `build_transport` makes the default, router/http1.py's
                     Http1Pool (bench/upstream_clients.py: no maintained client kept 0.85x of its
                     requests/s); `create_app(transport=...)` takes another, so that fault tests
                     can inject one.
    build_client     one httpx.AsyncClient for everything beside the request path: engine health
                     and adapter load/unload (serve/), Prometheus (the canary gate), gateway peers.

Transport errors become an `EngineFailure` once, here (`classify`): the gateway answers it with
another engine, the route's fallback, or a 503/504.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
import orjson

from router.http1 import (
    BodySink,
    DeadlineExceededError,
    Http1Pool,
    PoolClosedError,
    PoolStats,
    Timeouts,
    UpstreamConnectionError,
    UpstreamDisconnectedError,
    UpstreamProtocolError,
)
from router.settings import GatewaySettings

# What a Transport and its answers raise; anything else is a bug, not an engine's failure.
UPSTREAM_ERRORS = (UpstreamConnectionError, TimeoutError)


class UpstreamResponse(Protocol):
    """An engine's answer; its status and headers (names in lower case) have arrived."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...
    def iter_any(self) -> AsyncIterator[bytes]: ...
    def pipe(self, sink: BodySink) -> None: ...
    def hold(self) -> None: ...
    def unhold(self) -> None: ...
    def release(self) -> None: ...


class Transport(Protocol):
    """How the gateway sends a completion request to an engine (`base`: the engine's URL)."""

    async def post(
        self,
        base: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeouts: Timeouts,
        deadline: float | None = None,
    ) -> UpstreamResponse: ...
    def stats(self, base: str) -> PoolStats: ...
    def forget(self, base: str) -> None: ...
    async def close(self) -> None: ...


def build_transport(settings: GatewaySettings) -> Transport:
    """The request path's pool: at most `max_connections` connections to each engine."""
    return Http1Pool(settings.max_connections, max_answer_bytes=settings.max_answer_bytes)


def build_client(settings: GatewaySettings) -> httpx.AsyncClient:
    """The client of the calls beside forwarding, with the gateway's timeouts."""
    t = settings.timeouts
    timeout = httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s)
    limits = httpx.Limits(max_connections=settings.max_connections, max_keepalive_connections=32)
    return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)


def forward_timeout(settings: GatewaySettings, remaining_s: float | None = None) -> Timeouts:
    """Timeouts of one forwarded request, none longer than the `remaining_s` of its deadline."""
    t = settings.timeouts
    cap = remaining_s if remaining_s is not None else float("inf")
    return Timeouts(pool_s=min(t.pool_s, cap), connect_s=min(t.connect_s, cap), read_s=min(t.read_s, cap))


class FailureReason(enum.StrEnum):
    """Why an engine gave no usable answer (the `reason` of lorafleet_router_fallbacks_total)."""

    TIMEOUT = "timeout"  # connecting, waiting in line, or a silence of `timeouts.read_s`
    DEADLINE = "deadline"  # the request's deadline passed (the client's timeout, or request_s)
    CONNECT = "connect"  # cannot connect: the engine is taken out of rotation
    DISCONNECTED = "disconnected"  # closed the connection after the request was sent
    BAD_ANSWER = "bad_answer"  # not HTTP, or an answer the gateway cannot read
    STATUS_5XX = "status_5xx"
    NOT_LOADED = "not_loaded"  # no healthy engine holds the version, or the engine says 404


# What a client is told; the detail (which engine, which exception) goes to the log only.
_SAYS = {
    FailureReason.TIMEOUT: "it timed out (the gateway's timeouts.read_s, connect_s or pool_s)",
    FailureReason.DEADLINE: "it did not answer within the request's deadline",
    FailureReason.CONNECT: "no engine holding it could be reached",
    FailureReason.DISCONNECTED: "the engine closed the connection before answering",
    FailureReason.BAD_ANSWER: "the engine's answer could not be read",
    FailureReason.STATUS_5XX: "the engine failed",
    FailureReason.NOT_LOADED: "no healthy engine holds it",
}


@dataclass
class EngineFailure(Exception):
    """An engine did not answer usefully: the request may be retried on the fallback."""

    engine: str
    reason: FailureReason
    detail: str
    status: int | None = None

    def __str__(self) -> str:
        return f"{self.engine}: {self.reason}: {self.detail}"

    @property
    def timed_out(self) -> bool:
        return self.reason in (FailureReason.TIMEOUT, FailureReason.DEADLINE)

    @property
    def public(self) -> str:
        """What a client may read of it: no engine address, no exception."""
        return _SAYS[self.reason]


def classify(exc: BaseException, engine: str) -> EngineFailure:
    """A failed call to an engine (an exception of UPSTREAM_ERRORS) as an EngineFailure."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, DeadlineExceededError):
        return EngineFailure(engine, FailureReason.DEADLINE, detail)
    if isinstance(exc, TimeoutError):  # every other timeout of the pool (connect included) is one
        return EngineFailure(engine, FailureReason.TIMEOUT, detail)
    if isinstance(exc, UpstreamDisconnectedError):
        return EngineFailure(engine, FailureReason.DISCONNECTED, detail)
    if isinstance(exc, UpstreamProtocolError):
        return EngineFailure(engine, FailureReason.BAD_ANSWER, detail)
    return EngineFailure(engine, FailureReason.CONNECT, detail)


def engine_is_down(failure: EngineFailure, exc: BaseException) -> bool:
    """A failure that takes the engine out of rotation until its next health check."""
    return failure.reason is FailureReason.CONNECT and not isinstance(exc, PoolClosedError)


def error_message(body: bytes) -> str:
    """The message of an engine's error answer (for the log)."""
    try:
        data = orjson.loads(body)
        return str(data.get("error", {}).get("message") or data)
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500]
