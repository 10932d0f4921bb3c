"""The request path's HTTP/1.1 client: POST a body to an engine, read the answer whole or as it comes.

The gateway forwards every completion request through one `Http1Pool`. It does only what that
needs: POST with a Content-Length, answers with a Content-Length, chunked or read to the close,
keep-alive connections pooled per engine. It is an asyncio Protocol over httptools (the parser
uvicorn serves with), so a forwarded request costs a write, a few parser callbacks and one wakeup;
aiohttp's client costs about 3x that CPU per request (bench/gateway_overhead.py, proxy-asgi
against proxy-lean), and the gateway's throughput on one core is bounded by its CPU.

Errors: a connection that cannot be made, or that closes before the answer is complete, raises
`UpstreamConnectionError`; a timeout raises `TimeoutError`. A request on a kept-alive connection
that the engine closed within 0.25 s of the write, before any of the answer (its keep-alive timer
ran out as the request went out), is sent once more on a new connection; one closed later may
have been worked on and is an error. Requests that find every connection busy wait in line, first
come first served. Engine-management calls (health, adapters) use aiohttp/httpx.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

_MAX_BUFFERED = 1 << 20  # bytes of an answer held before the engine's socket is paused
_STALE_WITHIN_S = 0.25  # a connection closed unanswered this soon after the request was written


class UpstreamConnectionError(ConnectionError):
    """The connection to the engine failed, or closed before the answer was complete."""


class PoolClosedError(UpstreamConnectionError):
    """The gateway is shutting down: nothing is wrong with the engine."""


@dataclass(frozen=True)
class Timeouts:
    """pool: the longest wait in line for a free connection (a re-send included); connect: making
    one; read: the longest gap between two arrivals of the answer's bytes (headers included)."""

    pool_s: float
    connect_s: float
    read_s: float


class _Origin:
    """One engine's pooled connections."""

    def __init__(self, url: str, limit: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = parts.scheme == "https"
        self.prefix = parts.path.rstrip("/")
        default = parts.port is None
        self.host_header = (
            (f"[{self.host}]" if ":" in self.host else self.host) + ("" if default else f":{self.port}")
        ).encode()
        self.limit = limit
        self.idle: collections.deque[tuple[_Connection, float]] = collections.deque()
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()


class Http1Pool:
    """Keep-alive connections to each engine, at most `limit` per engine; idle ones are closed
    after `idle_s` (below uvicorn's 5 s keep-alive, which vLLM serves with)."""

    def __init__(self, limit: int, idle_s: float = 4.0) -> None:
        self.limit = limit
        self.idle_s = idle_s
        self._origins: dict[str, _Origin] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _origin(self, base: str) -> _Origin:
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = _Origin(base, self.limit)
        return origin

    async def post(
        self, base: str, path: str, body: bytes, headers: dict[str, str], timeouts: Timeouts
    ) -> Http1Response:
        """POST `body` to `base` + `path`; the answer's status and headers have arrived when this
        returns. Call `release()` on it when done (after reading it, or to abandon it)."""
        origin = self._origin(base)
        head = _request_head(origin, path, body, headers)
        loop = asyncio.get_running_loop()
        in_line_until = loop.time() + timeouts.pool_s
        fresh = False
        while True:
            conn, reused = await self._acquire(origin, timeouts, in_line_until, fresh)
            response = Http1Response(conn, timeouts.read_s)
            conn.start(response)
            conn.transport.writelines((head, body))  # type: ignore[union-attr]
            sent = loop.time()
            try:
                await response._wait_head()
            except _StaleConnection:
                # Sent again only where the engine cannot have started on it: a kept-alive
                # connection that closed right away (its keep-alive timer ran out as we wrote).
                if reused and not fresh and loop.time() - sent < _STALE_WITHIN_S:
                    fresh = True
                    continue
                raise UpstreamConnectionError("the engine closed the connection before answering") from None
            except BaseException:
                conn.close()
                raise
            return response

    async def _acquire(
        self, origin: _Origin, timeouts: Timeouts, in_line_until: float, fresh: bool
    ) -> tuple[_Connection, bool]:
        """An idle connection (True), unless `fresh`, or a new one (False); waiting in line until
        `in_line_until` (the loop's clock) at most, then `timeouts.connect_s` to connect.

        Requests that find none wait in line: a connection given back, or the slot of one that
        closed, goes to the first in line, never to a request that came later.
        """
        if self._closed:
            raise PoolClosedError("the connection pool is closed")
        if not origin.waiters:
            if not fresh:
                now = time.monotonic()
                while origin.idle:
                    conn, since = origin.idle.pop()
                    if conn.reusable() and now - since < self.idle_s:
                        return conn, True
                    conn.close()
            if origin.open < origin.limit:
                origin.open += 1
                return await self._connect(origin, timeouts.connect_s), False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        origin.waiters.append(waiter)
        try:
            async with asyncio.timeout_at(in_line_until):
                given = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._pass_on(origin, waiter.result())  # given, but leaving: to the next in line
            else:
                with contextlib.suppress(ValueError):
                    origin.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(
                    f"no free connection to {origin.host}:{origin.port} within {timeouts.pool_s:g} s"
                ) from None
            raise
        if given is None:  # a slot, counted in origin.open for this request
            return await self._connect(origin, timeouts.connect_s), False
        return given, True

    async def _connect(self, origin: _Origin, timeout_s: float) -> _Connection:
        """A new connection in a slot already counted in `origin.open`, until it is lost."""
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.ssl:
            context = self._ssl = self._ssl or ssl.create_default_context()
        conn = _Connection(self, origin)
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: conn, origin.host, origin.port, ssl=context)
        except BaseException as exc:
            conn.forget()
            if isinstance(exc, TimeoutError):
                raise TimeoutError(
                    f"connecting to {origin.host}:{origin.port} took over {timeout_s:g} s"
                ) from None
            if isinstance(exc, OSError):
                raise UpstreamConnectionError(
                    f"cannot connect to {origin.host}:{origin.port}: {exc}"
                ) from exc
            raise
        return conn

    def _give_back(self, origin: _Origin, conn: _Connection) -> None:
        """A connection whose answer was read whole: to the first in line, else idle."""
        if self._closed or not conn.reusable():
            conn.close()  # its slot is passed on when it is lost
            return
        while origin.waiters:
            waiter = origin.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        origin.idle.append((conn, time.monotonic()))

    def _closed_one(self, origin: _Origin) -> None:
        """A connection was lost (or never made): its slot goes to the first in line, if any."""
        while origin.waiters:
            waiter = origin.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot stays counted, for that request
                return
        origin.open -= 1

    def _pass_on(self, origin: _Origin, given: _Connection | None) -> None:
        if given is None:
            self._closed_one(origin)
        else:
            self._give_back(origin, given)

    async def close(self) -> None:
        self._closed = True
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop()[0].close()
            while origin.waiters:
                waiter = origin.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(PoolClosedError("the connection pool is closed"))


def _request_head(origin: _Origin, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        b"POST ",
        (origin.prefix + path).encode(),
        b" HTTP/1.1\r\nHost: ",
        origin.host_header,
        b"\r\nContent-Length: ",
        str(len(body)).encode(),
        b"\r\n",
    ]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"\r\n")
    return b"".join(lines)


class _StaleConnection(Exception):
    """A reused connection closed before any byte of the answer: safe to send again."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Http1Pool, origin: _Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Http1Response | None = None
        self.usable = True  # open, idle-able and in a clean state between answers
        self._counted = True  # counted in origin.open until connection_lost
        self._read_to_close = False
        self._interim = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        response._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.usable = False
            response._fail(UpstreamConnectionError(f"the engine's answer is not valid HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget()
        response = self.response
        if response is None or response._complete:
            return
        if response.status and self._read_to_close and exc is None:
            response._finish()
        elif not response._received:
            response._fail(_StaleConnection())
        else:
            detail = f": {exc}" if exc else ""
            response._fail(UpstreamConnectionError(f"the engine closed the connection mid-answer{detail}"))

    def pause_writing(self) -> None:  # the request is written once; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks
    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and response._complete:  # a second answer to one request
            self.usable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is not None and not response._complete:
            response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None or response._complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints, ...): the real one follows
            response.headers = {}
            self._interim = True
            return
        response.status = status
        headers = response.headers
        self._read_to_close = "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )
        if not self.parser.should_keep_alive():
            self.usable = False
        response._head_arrived()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and not response._complete:
            response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        response = self.response
        if response is not None and not response._complete:
            response._finish()

    # ours
    def forget(self) -> None:
        """Closed or never made: no longer one of the origin's open connections (once)."""
        self.usable = False
        if self._counted:
            self._counted = False
            self.pool._closed_one(self.origin)

    def reusable(self) -> bool:
        return self.usable and self.transport is not None and not self.transport.is_closing()

    def start(self, response: Http1Response) -> None:
        self.response = response

    def done(self) -> None:
        """The answer was read whole: the connection may carry the next request."""
        self.response = None
        self.pool._give_back(self.origin, self)

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()


class Http1Response:
    """An engine's answer: `status`, `headers` (lower-case names), then `read()` or `iter_any()`."""

    def __init__(self, conn: _Connection, read_s: float) -> None:
        self._conn: _Connection | None = conn
        self._read_s = read_s
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._received = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._whole = False  # read() wants the whole body: never pause the socket

    # fed by the connection
    def _head_arrived(self) -> None:
        self._wake()

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _MAX_BUFFERED and not (self._paused or self._whole) and self._conn is not None:
            self._paused = True
            self._conn.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until the connection says something, or `read_s` passes."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._read_s, _expire, waiter, self._read_s)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _wait_head(self) -> None:
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    # for the caller
    async def read(self) -> bytes:
        """The whole body."""
        self._whole = True
        if self._paused and self._conn is not None:
            self._paused = False
            self._conn.transport.resume_reading()  # type: ignore[union-attr]
        while not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, a chunk (or what arrived together) at a time."""
        chunks = self._chunks
        while True:
            if chunks:
                data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
                chunks.clear()
                self._buffered = 0
                if self._paused and self._conn is not None:
                    self._paused = False
                    self._conn.transport.resume_reading()  # type: ignore[union-attr]
                yield data
                continue
            if self._complete:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    def release(self) -> None:
        """Give the connection back (the answer was read whole) or close it (it was not)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._complete and self._error is None and not self._paused:
            conn.done()
        else:
            conn.close()


def _expire(waiter: asyncio.Future[None], read_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"the engine sent nothing for {read_s:g} s"))
