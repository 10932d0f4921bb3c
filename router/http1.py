"""The request path's HTTP/1.1 client: POST a body to an engine, read the answer whole or as it comes.

The gateway forwards every completion request through one `Http1Pool` (the default `Transport` of
router/upstream.py). It does only what that needs: POST with a Content-Length, answers with a
Content-Length, chunked or read to the close, keep-alive connections pooled per engine. It is an
asyncio Protocol over httptools (the parser uvicorn serves with), so a forwarded request costs a
write, a few parser callbacks and one wakeup. bench/upstream_clients.py weighs it against
maintained clients (aiohttp, httpcore, pyreqwest) on the gateway's own request path.

When a request is sent twice. Never on a timing window: only when the connection provably carried
none of it. A kept-alive connection is checked before it is reused (a poll of its socket): one
the engine has closed (its keep-alive timer ran out) is dropped before anything is written.
One idle for under 0.25 s is not polled: no server's keep-alive timer is that short (uvicorn's
is 5 s, gunicorn's 2 s), and an engine that goes away is heard of by the loop within its turn,
which the poll would only narrow, not close. A busy pool reuses its connections within
milliseconds, so this saves a system call per request where it counts. A
request whose write had not completed when the connection closed (bytes of it still in the
pool's buffer, so the engine cannot have the whole request) is sent once more on a new
connection. A connection that closes after the whole request went out, before any byte of the
answer, may have been worked on: `UpstreamDisconnectedError`, never a second send.

Errors:
    UpstreamConnectionError         cannot connect, or closed before the request was sent
     +-- UpstreamDisconnectedError  closed after the request was sent (before or during the answer)
     +-- UpstreamProtocolError      not HTTP/1.1, or a protocol upgrade (101)
     |    +-- AnswerTooLargeError   a whole-body read went over `max_answer_bytes`
     +-- PoolClosedError            the gateway is shutting down: nothing is wrong with the engine
    TimeoutError                    connecting, waiting in line, or a silence of `read_s`
     +-- DeadlineExceededError      the request's deadline passed mid-answer

Connections: at most `limit` per engine; requests that find every one busy wait in line, first
come first served; idle ones are closed after `idle_s` (below uvicorn's 5 s keep-alive, which
vLLM serves with) by a timer, and `forget(base)` drops an engine that left the fleet. Writes
respect the socket's backpressure; a stream's reading pauses above 1 MiB unread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httptools

_MAX_BUFFERED = 1 << 20  # bytes of a stream held unread before the engine's socket is paused
_WRITE_PIECE = 1 << 16  # a large body is written this much at a time, waiting while the socket is full
DEFAULT_MAX_ANSWER_BYTES = 64 << 20
_READABLE = select.POLLIN | select.POLLRDHUP | select.POLLPRI
_POLL_AFTER_S = 0.25  # a connection idle for less is reused without a poll (see above)
# A timer may fire this much before its time (the loop's clock has millisecond steps): close
# enough to count as on time, so that it is never set again for a fraction of a millisecond.
_TIMER_SLACK_S = 0.001


class UpstreamConnectionError(ConnectionError):
    """The connection to the engine failed, or closed before the answer was complete."""


class UpstreamDisconnectedError(UpstreamConnectionError):
    """The engine closed the connection after the whole request was sent: it may have worked on it."""


class UpstreamProtocolError(UpstreamConnectionError):
    """The engine's answer is not one this client reads: not HTTP/1.1, or an upgrade."""


class AnswerTooLargeError(UpstreamProtocolError):
    """A whole answer was larger than the pool reads into memory."""


class DeadlineExceededError(TimeoutError):
    """The request's deadline passed before the answer was complete."""


class PoolClosedError(UpstreamConnectionError):
    """The gateway is shutting down: nothing is wrong with the engine."""


@dataclass(frozen=True)
class Timeouts:
    """pool: the longest wait in line for a free connection (a re-send included); connect: making
    one; read: the longest gap between two arrivals of the answer's bytes (headers included), and
    the longest wait for the socket to take more of the request."""

    pool_s: float
    connect_s: float
    read_s: float


@dataclass(frozen=True)
class PoolStats:
    """One engine's connections: open (in use or idle), idle, and requests waiting in line."""

    open: int = 0
    idle: int = 0
    waiting: int = 0


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
        self.sweep: asyncio.TimerHandle | None = None
        self.gone = False  # forgotten: its connections close when their answers are done


class Http1Pool:
    """Keep-alive connections to each engine, at most `limit` per engine."""

    def __init__(
        self, limit: int, idle_s: float = 4.0, max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    ) -> None:
        self.limit = limit
        self.idle_s = idle_s
        self.max_answer_bytes = max_answer_bytes
        self._origins: dict[str, _Origin] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _origin(self, base: str) -> _Origin:
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = _Origin(base, self.limit)
        return origin

    def stats(self, base: str) -> PoolStats:
        origin = self._origins.get(base)
        if origin is None:
            return PoolStats()
        return PoolStats(open=origin.open, idle=len(origin.idle), waiting=len(origin.waiters))

    async def post(
        self,
        base: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeouts: Timeouts,
        deadline: float | None = None,
    ) -> Http1Response:
        """POST `body` to `base` + `path`; the answer's status and headers have arrived when this
        returns. Call `release()` on it when done (after reading it, or to abandon it).

        `deadline` (time.monotonic()'s clock): no read of the answer outlives it (DeadlineExceededError)."""
        origin = self._origin(base)
        head = _request_head(origin, path, body, headers)
        loop = asyncio.get_running_loop()
        in_line_until = loop.time() + timeouts.pool_s
        resent = False
        while True:
            conn = await self._acquire(origin, timeouts, in_line_until)
            response = Http1Response(conn, loop, timeouts.read_s, self.max_answer_bytes, deadline)
            conn.start(response)
            try:
                if not conn.write(head, body):
                    await conn.send_rest(body, timeouts.read_s)
                await response._wait_head()
            except _NotSent:
                if not resent:  # the engine cannot hold the whole request: sending it again is safe
                    resent = True
                    continue
                raise UpstreamConnectionError(
                    "the engine closed the connection twice before the request was sent"
                ) from None
            except BaseException:
                conn.close()
                raise
            return response

    async def _acquire(self, origin: _Origin, timeouts: Timeouts, in_line_until: float) -> _Connection:
        """An idle connection the engine has not closed, or a new one; waiting in line until
        `in_line_until` (the loop's clock) at most, then `timeouts.connect_s` to connect.

        A connection given back, or the slot of one that closed, goes to the first in line, never
        to a request that came later.
        """
        if self._closed:
            raise PoolClosedError("the connection pool is closed")
        if not origin.waiters:
            now = time.monotonic()
            while origin.idle:
                conn, since = origin.idle.pop()
                idle = now - since
                if idle < self.idle_s and (
                    conn.reusable() if idle < _POLL_AFTER_S else not conn.peer_closed()
                ):
                    return conn
                conn.close()
            if origin.open < origin.limit:
                origin.open += 1
                return await self._connect(origin, timeouts.connect_s)
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
            return await self._connect(origin, timeouts.connect_s)
        if given.peer_closed():  # closed while handed over: its slot is passed on when it is lost
            given.close()
            return await self._acquire(origin, timeouts, in_line_until)
        return given

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
        if self._closed or origin.gone or not conn.reusable():
            conn.close()  # its slot is passed on when it is lost
            return
        while origin.waiters:
            waiter = origin.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        origin.idle.append((conn, time.monotonic()))
        if origin.sweep is None:
            origin.sweep = asyncio.get_running_loop().call_later(self.idle_s, self._sweep, origin)

    def _sweep(self, origin: _Origin) -> None:
        """Close the connections idle for `idle_s`; drop an engine with none left open."""
        origin.sweep = None
        now = time.monotonic()
        while origin.idle and now - origin.idle[0][1] >= self.idle_s:
            origin.idle.popleft()[0].close()
        if origin.idle:
            wait = self.idle_s - (now - origin.idle[0][1])
            origin.sweep = asyncio.get_running_loop().call_later(wait, self._sweep, origin)

    def _lost_idle(self, origin: _Origin, conn: _Connection) -> None:
        for i, (idle, _) in enumerate(origin.idle):
            if idle is conn:
                del origin.idle[i]
                return

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

    def forget(self, base: str) -> None:
        """An engine left the fleet: close its idle connections and drop it; requests in flight
        finish on theirs, which then close."""
        origin = self._origins.pop(base, None)
        if origin is None:
            return
        origin.gone = True
        if origin.sweep is not None:
            origin.sweep.cancel()
            origin.sweep = None
        while origin.idle:
            origin.idle.pop()[0].close()

    async def close(self) -> None:
        self._closed = True
        for origin in self._origins.values():
            if origin.sweep is not None:
                origin.sweep.cancel()
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


class _NotSent(Exception):
    """The connection closed while part of the request was still in the pool's buffer."""


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
        self._poller: select.poll | None = None  # the socket, to poll it while idle (plain TCP only)
        self._sent = True  # the current request left the pool's buffer whole
        self._drained: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # pause_writing/resume_writing then say exactly whether bytes wait in the pool's buffer.
        self.transport.set_write_buffer_limits(high=0)  # type: ignore[union-attr]
        sock = transport.get_extra_info("socket")
        if sock is not None and not self.origin.ssl:
            self._poller = select.poll()
            self._poller.register(sock.fileno(), _READABLE)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        response._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.usable = False
            response._fail(
                UpstreamProtocolError("the engine answered with a protocol upgrade (101 Switching Protocols)")
            )
            self.close()
        except httptools.HttpParserError as exc:
            self.usable = False
            response._fail(UpstreamProtocolError(f"the engine's answer is not valid HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        idle = self.response is None and self.usable
        self.forget()
        self._poller = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)  # the writer sees the loss in `_sent` and the response
        if idle:
            self.pool._lost_idle(self.origin, self)
        response = self.response
        if response is None or response._complete:
            return
        if response.status and self._read_to_close and exc is None:
            response._finish()
        elif not response._received and not self._sent:
            response._fail(_NotSent())
        elif not response._received:
            response._fail(
                UpstreamDisconnectedError(
                    "the engine closed the connection after the request was sent, before answering"
                )
            )
        else:
            detail = f": {exc}" if exc else ""
            response._fail(UpstreamDisconnectedError(f"the engine closed the connection mid-answer{detail}"))

    def pause_writing(self) -> None:
        self._sent = False

    def resume_writing(self) -> None:
        self._sent = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and response._complete:  # a second answer to one request
            self.usable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is not None and not response._complete:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            seen = response.headers.get(key)
            # Repeated fields combine into one, comma-separated (RFC 9110, 5.3).
            response.headers[key] = text if seen is None else f"{seen}, {text}"

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None or response._complete:
            return
        status = self.parser.get_status_code()
        if status == 101:
            self.usable = False
            response._fail(UpstreamProtocolError("the engine answered 101 Switching Protocols"))
            return
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
    def write(self, head: bytes, body: bytes) -> bool:
        """Write the request's head and (a small) body; True when all of it left the pool's buffer.
        Otherwise `send_rest` writes what is left, waiting while the socket is full."""
        transport = self.transport
        assert transport is not None
        self._sent = True
        if len(body) > _WRITE_PIECE:
            transport.write(head)
            return False
        transport.writelines((head, body))
        return self._sent

    async def send_rest(self, body: bytes, timeout_s: float) -> None:
        """After `write`: the rest of the request, respecting the socket's backpressure. Raises
        _NotSent if the connection closes before the last byte left the pool's buffer."""
        transport = self.transport
        assert transport is not None
        if len(body) > _WRITE_PIECE:
            view = memoryview(body)
            for start in range(0, len(view), _WRITE_PIECE):
                if not self._sent:
                    await self._drain(timeout_s)
                if transport.is_closing():
                    break
                transport.write(view[start : start + _WRITE_PIECE])
        if not self._sent:
            await self._drain(timeout_s)
        if transport.is_closing() and not self._sent:
            raise _NotSent

    async def _drain(self, timeout_s: float) -> None:
        self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained
        except TimeoutError:
            raise TimeoutError(f"the engine took no part of the request for {timeout_s:g} s") from None
        finally:
            self._drained = None
        if self.transport is None or (self.transport.is_closing() and not self._sent):
            raise _NotSent

    def peer_closed(self) -> bool:
        """The engine closed this idle connection (or sent bytes nobody asked for), as its socket
        says now: also when the loop has not run the event yet. Nothing is read."""
        if not self.reusable():
            return True
        # One poll(2) with no wait: an idle connection has nothing to read, unless the engine
        # closed it (or wrote what nobody asked for).
        return self._poller is not None and bool(self._poller.poll(0))

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


class BodySink(Protocol):
    """Where `Http1Response.pipe` hands an answer's body, from the connection's own callbacks."""

    def data(self, chunk: bytes) -> None: ...
    def end(self, error: BaseException | None) -> None: ...


class Http1Response:
    """An engine's answer: `status`, `headers` (lower-case names), then `read()`, `iter_any()` or
    `pipe()`."""

    def __init__(
        self,
        conn: _Connection,
        loop: asyncio.AbstractEventLoop,
        read_s: float,
        max_answer_bytes: int,
        until: float | None = None,
    ) -> None:
        # The loop given, not looked up at each wait: asyncio.get_running_loop() makes a getpid
        # system call each time on Python 3.11.
        self._loop = loop
        self._conn: _Connection | None = conn
        self._read_s = read_s
        self._until = until
        self._max_bytes = max_answer_bytes
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._received = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wait_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._whole = False  # read() wants the whole body: never pause the socket
        self._sink: BodySink | None = None  # pipe(): fed from the connection's callbacks
        self._held = False  # pipe(): the sink paused the reading

    # fed by the connection
    def _head_arrived(self) -> None:
        self._wake()

    def _feed(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            self._wait_since = time.monotonic()
            try:
                sink.data(data)
            except Exception as exc:  # the sink's bug: it hears of it in end(), the engine is let go
                self._fail(exc)
                if self._conn is not None:
                    self._conn.close()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._whole:
            if self._buffered > self._max_bytes and self._error is None:
                self._fail(AnswerTooLargeError(f"the engine's answer is over {self._max_bytes} bytes"))
                if self._conn is not None:
                    self._conn.close()
        elif self._buffered > _MAX_BUFFERED and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._stop_timer()
        self._wake()
        self._end_sink()

    def _fail(self, error: BaseException) -> None:
        if self._error is not None:
            return
        self._error = error
        self._stop_timer()
        self._wake()
        self._end_sink()

    def _end_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.end(self._error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until the connection says something, or `read_s` passes, or the deadline."""
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        now = self._wait_since = time.monotonic()
        if self._timer is None:
            self._set_timer(loop, now)
        try:
            await waiter
        finally:
            self._waiter = None

    # One timer for the whole answer, not one per wait (a stream waits once per event): when it
    # fires it fails the wait in progress if that wait is over its time, else it is set again.
    def _set_timer(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        self._timer = loop.call_later(self._time_left(now), self._check_time, loop)

    def _time_left(self, now: float) -> float:
        due = self._wait_since + self._read_s
        if self._until is not None and self._until < due:
            due = self._until
        return max(0.0, due - now)

    def _check_time(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        piping = self._sink is not None
        waiter = self._waiter
        if not piping and (waiter is None or waiter.done()):
            return  # not waiting: the next wait sets the timer again
        now = time.monotonic() + _TIMER_SLACK_S
        error: TimeoutError | None = None
        if self._until is not None and now >= self._until:
            error = DeadlineExceededError("the request's deadline passed")
        elif now - self._wait_since >= self._read_s and not self._held:
            error = TimeoutError(f"the engine sent nothing for {self._read_s:g} s")
        if error is None:
            if self._held:  # the sink's client is slow, not the engine: only the deadline counts
                self._wait_since = now
            self._set_timer(loop, now)
        elif piping:
            self._fail(error)
            if self._conn is not None:
                self._conn.close()
        else:
            assert waiter is not None
            waiter.set_exception(error)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _wait_head(self) -> None:
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    # for the caller
    async def read(self) -> bytes:
        """The whole body (AnswerTooLargeError above the pool's `max_answer_bytes`)."""
        self._whole = True
        if self._buffered > self._max_bytes:
            raise AnswerTooLargeError(f"the engine's answer is over {self._max_bytes} bytes")
        if self._paused:
            self._resume()
        while True:
            if self._error is not None:
                raise self._error
            if self._complete:
                break
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
                if self._paused:
                    self._resume()
                yield data
                continue
            if self._complete:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    def pipe(self, sink: BodySink) -> None:
        """Hand the body to `sink` as it arrives, from the connection's callbacks, with no task
        woken for each piece: `sink.data(piece)` for each, then `sink.end(None)` once the answer is
        complete, or `sink.end(error)` (what `iter_any` would raise, or an exception of
        `sink.data`). The read timeout and the deadline hold as for `iter_any`, which this replaces.
        What arrived before is handed over now; `end` may come before this returns."""
        self._sink = sink
        if self._paused:
            self._resume()
        chunks = self._chunks
        if chunks:
            data = b"".join(chunks)
            chunks.clear()
            self._buffered = 0
            self._feed(data)
        if self._sink is None:
            return  # its sink failed
        if self._complete or self._error is not None:
            self._end_sink()
            return
        now = self._wait_since = time.monotonic()
        if self._timer is None:
            self._set_timer(self._loop, now)

    def hold(self) -> None:
        """pipe(): stop reading the engine (the sink's client is not taking its bytes)."""
        if not self._held and self._conn is not None and self._conn.transport is not None:
            self._held = True
            self._conn.transport.pause_reading()

    def unhold(self) -> None:
        """pipe(): read the engine again."""
        if self._held:
            self._held = False
            self._wait_since = time.monotonic()
            if self._conn is not None and self._conn.transport is not None:
                self._conn.transport.resume_reading()

    def _resume(self) -> None:
        self._paused = False
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.resume_reading()

    def release(self) -> None:
        """Give the connection back (the answer was read whole) or close it (it was not)."""
        self._stop_timer()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._sink = None
        if self._complete and self._error is None and not self._paused and not self._held:
            conn.done()
        else:
            conn.close()
