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

It subclasses uvicorn's protocol (uvicorn is pinned in requirements/engine-cpu.lock) and relies on
its `loop`, `scope`, `on_message_begin` and `on_response_complete`; tests/router/test_server.py
checks what each gives, so an upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The scope extension through which a response hears of its client's leaving: a list; a callable
# appended to it is called once if the connection is lost, unless removed before. Cheaper than a
# task watching `receive` for `http.disconnect`.
DISCONNECT_EXTENSION = "lorafleet.on_disconnect"


class CorkedTransport:
    """An asyncio transport whose writes of one event-loop turn reach the socket in one write.

    Everything but writing and closing is the wrapped transport's own. Closing sends what is
    pending first, as the wrapped transport would for data already written to it.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what was written and not sent yet (no-op when nothing is pending)."""
        pending, self._pending = self._pending, None
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
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) writing through a `CorkedTransport`; a response
    leaves as soon as its last byte is written, not at the end of the turn. Each request's scope
    carries the DISCONNECT_EXTENSION."""

    transport: CorkedTransport  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
        # Per connection, and nothing in it refers back to the protocol: no reference cycle.
        self._on_lost: list[Callable[[], object]] = []
        self._extensions = {DISCONNECT_EXTENSION: self._on_lost}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions  # type: ignore[typeddict-item]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        callbacks = self._on_lost[:]
        self._on_lost.clear()
        for callback in callbacks:
            callback()

    def on_response_complete(self) -> None:
        # The app may go on working in this turn (the gateway records its monitoring after the
        # answer): the client must not wait for that.
        self.transport.flush()
        super().on_response_complete()
