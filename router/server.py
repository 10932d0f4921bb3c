"""How the gateway is served: uvicorn's httptools protocol over a transport that sends what one
turn of the event loop wrote in one system call.

ASGI sends a response's head and body as two messages, and uvicorn writes each to the socket as
it comes: two `send` calls for every JSON answer, where aiohttp's server makes one. On this
machine a send to a loopback socket costs more CPU than everything the gateway's routing does for
a request (bench/gateway_overhead.py), so `GatewayHttpProtocol` (`uvicorn.run(http=...)`) gives
uvicorn a `CorkedTransport`: the writes made before the event loop's next turn go out together,
at the end of the turn, in their order, or as soon as a response is complete. A JSON answer's head
and body leave in one send; so does a stream's last event with the chunked terminator after it.
Nothing waits longer than the rest of the turn that wrote it.

A whole answer of the app's own (`respond`, WHOLE_ANSWER_EXTENSION) is written at once, head and
body, without the two awaited `send`s and their checks of every header (uvicorn's `send` for a JSON
answer costs ~7 us; this ~3 us).

A relayed stream is started by `start_chunked` (BODY_WRITER_EXTENSION), and its events are written
by its `BodyWriter` straight from the engine connection's callbacks, framed as uvicorn frames them,
with no task woken and no `send` awaited for each event. Its head is held until its first event:
an engine sends its head at once and its first event after the prefill, so the head would
otherwise take a send of its own; the client has nothing to read before the first event anyway.

It subclasses uvicorn's protocol (uvicorn is pinned in requirements/engine-cpu.lock) and relies on
its `loop`, `scope`, `flow`, `on_message_begin`, `on_response_complete` and `resume_writing`, and
on its RequestResponseCycle (`send` a bound method of it; `response_started`, `response_complete`,
`chunked_encoding`, `disconnected`, and for `respond` and `start_chunked` the rest of what its
`send` sets and calls: `default_headers`, `keep_alive`, `message_event`, `on_response`), and on
`STATUS_LINE`; tests/router/test_server.py checks what each gives, so an upgrade that changes them
fails there.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

# The scope extension through which a response hears of its client's leaving: a ConnectionLost.
# Cheaper than a task watching `receive` for `http.disconnect`.
DISCONNECT_EXTENSION = "lorafleet.on_disconnect"
# The scope extension that starts a chunked response and gives its BodyWriter: `start_chunked`,
# bound to the connection, taking the request's ASGI `send`, the status and the headers.
BODY_WRITER_EXTENSION = "lorafleet.body_writer"
# The scope extension that writes a whole fixed-length response at once: `respond`, bound to the
# connection, taking the request's ASGI `send`.
WHOLE_ANSWER_EXTENSION = "lorafleet.whole_answer"

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # what uvicorn refuses in a header value


class CorkedTransport:
    """An asyncio transport whose writes of one event-loop turn reach the socket in one write.

    Everything but writing and closing is the wrapped transport's own. Closing sends what is
    pending first, as the wrapped transport would for data already written to it.
    """

    __slots__ = ("_held", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._held = False  # what is pending was written held: no flush is due

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        elif self._held:
            self._held = False
            pending.append(bytes(data))
            self._loop.call_soon(self.flush)
        else:
            pending.append(bytes(data))

    def write_held(self, data: bytes) -> None:
        """Write `data` to go out with the next write, flush or close, not at the end of this turn:
        a response's last bytes, which its end (the next `send`) follows."""
        if self._pending is None:
            self._pending = [data]
            self._held = True
        else:
            self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what was written and not sent yet (no-op when nothing is pending)."""
        pending, self._pending = self._pending, None
        self._held = False
        # A connection the peer reset is closed before uvicorn hears of it: drop what it can't carry.
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._held = False
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ConnectionLost:
    """The callbacks to call once when a connection is lost (DISCONNECT_EXTENSION)."""

    __slots__ = ("_callbacks", "lost")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], object]] = []
        self.lost = False

    def add(self, callback: Callable[[], object]) -> None:
        """Call `callback` once when the connection is lost; at once if it is already."""
        if self.lost:
            callback()
        else:
            self._callbacks.append(callback)

    def discard(self, callback: Callable[[], object]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def fire(self) -> None:
        self.lost = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class BodyWriter:
    """A chunked response written outside ASGI's `send`, at once: for a stream relayed from another
    connection's callbacks, where there is no task to await `send` in. Made by `start_chunked`
    (BODY_WRITER_EXTENSION), which writes the head; `end` completes the response."""

    __slots__ = ("_cycle", "_on_writable", "_transport")

    def __init__(
        self, cycle: RequestResponseCycle, transport: CorkedTransport, on_writable: list[Callable[[], object]]
    ) -> None:
        self._cycle = cycle
        self._transport = transport
        self._on_writable = on_writable

    def write(self, data: bytes, last: bool = False) -> bool:
        """Write one chunk of the body; `last`: the body's last bytes, to leave with the `end`
        that follows. False when the client's socket is full: write no more before
        `when_writable` calls back. A client that left takes nothing, silently (it is told apart
        by DISCONNECT_EXTENSION)."""
        cycle = self._cycle
        if cycle.disconnected or cycle.response_complete:
            return True
        chunk = b"%x\r\n%b\r\n" % (len(data), data)
        if last:
            self._transport.write_held(chunk)
        else:
            self._transport.write(chunk)
        return not cycle.flow.write_paused

    def when_writable(self, callback: Callable[[], object]) -> None:
        """Call `callback` once when the client's socket takes bytes again (at once if it does)."""
        if self._cycle.flow.write_paused:
            self._on_writable.append(callback)
        else:
            callback()

    def end(self) -> None:
        """Write the body's end and complete the response, as `send` of an empty last body does."""
        cycle = self._cycle
        if cycle.disconnected or cycle.response_complete:
            return
        self._transport.write_held(b"0\r\n\r\n")
        _complete(cycle, self._transport)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) writing through a `CorkedTransport`; a response
    leaves as soon as its last byte is written, not at the end of the turn. Each request's scope
    carries the DISCONNECT_EXTENSION, the BODY_WRITER_EXTENSION and the WHOLE_ANSWER_EXTENSION."""

    transport: CorkedTransport  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
        # Per connection, and nothing in them refers back to the protocol: no reference cycle.
        self._on_lost = ConnectionLost()
        self._on_writable: list[Callable[[], object]] = []
        self._extensions = {
            DISCONNECT_EXTENSION: self._on_lost,
            BODY_WRITER_EXTENSION: functools.partial(start_chunked, self.transport, self._on_writable),
            WHOLE_ANSWER_EXTENSION: functools.partial(respond, self.transport),
        }

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions  # type: ignore[typeddict-item]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._on_lost.fire()

    def resume_writing(self) -> None:
        super().resume_writing()
        callbacks = self._on_writable[:]
        self._on_writable.clear()
        for callback in callbacks:
            callback()

    def on_response_complete(self) -> None:
        # The app may go on working in this turn (the gateway records its monitoring after the
        # answer): the client must not wait for that.
        self.transport.flush()
        super().on_response_complete()


def _cycle_of(transport: CorkedTransport, send: Callable[..., object]) -> RequestResponseCycle | None:
    """The response `send` belongs to if it is uvicorn's own `send` (not a wrapper of it) of this
    connection, not started yet, not for a HEAD request, and the client's socket takes bytes."""
    cycle = getattr(send, "__self__", None)
    if (
        not isinstance(cycle, RequestResponseCycle)
        or cycle.transport is not cast(Any, transport)  # uvicorn types it as asyncio.Transport
        or cycle.response_started
        or cycle.flow.write_paused
        or cycle.scope["method"] == "HEAD"
    ):
        return None
    return cycle


def _head(cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]], last: bytes) -> bytes:
    """A response's head as uvicorn's `send` writes it, `last` the header lines after the app's;
    the response is started."""
    content = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        content += (name, b": ", value, b"\r\n")
    values = []
    for name, value in headers:
        content += (name, b": ", value, b"\r\n")
        values.append(value)
    if _CONTROL.search(b"".join(values)):
        raise RuntimeError("Invalid HTTP header value.")
    if not cycle.keep_alive:
        content.append(b"connection: close\r\n")
    content += (last, b"\r\n")
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    return b"".join(content)


def _complete(cycle: RequestResponseCycle, transport: CorkedTransport) -> None:
    """What uvicorn's `send` does once a response's last bytes are written."""
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        transport.close()
    cycle.on_response()  # the protocol's on_response_complete: sends what is held


def start_chunked(
    transport: CorkedTransport,
    on_writable: list[Callable[[], object]],
    send: Callable[..., object],
    status: int,
    headers: list[tuple[bytes, bytes]],
) -> BodyWriter | None:
    """Start a chunked response to the request `send` belongs to, as `send` of its start would,
    and give the BodyWriter that writes its body and ends it; None, nothing written, when this
    cannot (as for `respond`): then use `send`. `headers` as for `respond`, without
    `content-length`."""
    cycle = _cycle_of(transport, send)
    if cycle is None:
        return None
    if cycle.disconnected:
        return None  # `send` takes it silently
    # Held: the head leaves with the first event (or the end), in its send.
    transport.write_held(_head(cycle, status, headers, b"transfer-encoding: chunked\r\n"))
    cycle.chunked_encoding = True
    cycle.expected_content_length = 0
    return BodyWriter(cycle, transport, on_writable)


def respond(
    transport: CorkedTransport,
    send: Callable[..., object],
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> bool:
    """Write a whole response to the request `send` belongs to, head and body in one write, as
    uvicorn's two `send`s would write it; the response is complete when this returns True.

    `headers`: lower-case names, with `content-length` and without `connection` or
    `transfer-encoding` (the app's own answers; values are still checked for control bytes).
    False, nothing written, when this cannot: `send` is not uvicorn's own of this connection, the
    response has started, the request is a HEAD, or the client's socket is full. Then use `send`.
    """
    cycle = _cycle_of(transport, send)
    if cycle is None:
        return False
    if cycle.disconnected:
        return True  # as `send` does: the client left, nothing to write
    head = _head(cycle, status, headers, b"")
    cycle.chunked_encoding = False
    cycle.expected_content_length = 0
    transport.write_held(head + body)  # on_response() or close() sends it
    _complete(cycle, transport)
    return True
