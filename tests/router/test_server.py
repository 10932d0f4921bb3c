"""router/server.py: the gateway's uvicorn protocol sends what one loop turn wrote in one write."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from router.responses import EventStream
from router.server import WHOLE_ANSWER_EXTENSION, CorkedTransport, GatewayHttpProtocol
from tests.support import InThreadServer, wait_until


class RecordingTransport(asyncio.Transport):
    """A stand-in for the socket's transport that keeps each write it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_writes_of_one_turn_leave_together_in_order() -> None:
    async def scenario() -> RecordingTransport:
        inner = RecordingTransport()
        corked = CorkedTransport(inner, asyncio.get_running_loop())
        corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
        corked.write(b"body")
        assert inner.writes == []  # nothing before the turn ends
        await asyncio.sleep(0)
        corked.write(b"next turn")
        await asyncio.sleep(0)
        return inner

    inner = asyncio.run(scenario())
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next turn"]


def test_close_sends_what_is_pending_first_and_a_reset_drops_it() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed_by_us = RecordingTransport()
        corked = CorkedTransport(closed_by_us, loop)
        corked.write(b"last words")
        corked.close()
        reset = RecordingTransport()
        corked_reset = CorkedTransport(reset, loop)
        corked_reset.write(b"too late")
        reset.close()  # the peer reset the connection before the turn ended
        await asyncio.sleep(0)
        assert corked_reset.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's
        return closed_by_us, reset

    closed_by_us, reset = asyncio.run(scenario())
    assert closed_by_us.writes == [b"last words"] and closed_by_us.closed
    assert reset.writes == []


WRITTEN_WHEN_ANSWERED: list[int] = []
RESPONDED: list[bool] = []


class Counted:
    """The socket's real transport, passed through, counting the writes that reach it."""

    writes: list[bytes] = []

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class CountingProtocol(GatewayHttpProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(Counted(transport))  # type: ignore[arg-type]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for i in range(3):
            await send({"type": "http.response.body", "body": f"event {i}\n".encode(), "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    answer = json.dumps({"path": scope["path"], "echo": body.decode()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    if scope["path"].startswith("/whole") and (b"x-skip", b"1") not in scope["headers"]:
        if scope["path"] == "/whole/bad":
            headers.append((b"x-request-id", b"a\x01b"))
        respond = scope["extensions"][WHOLE_ANSWER_EXTENSION]
        RESPONDED.append(respond(send, 200, headers, answer))
        if RESPONDED[-1]:
            WRITTEN_WHEN_ANSWERED.append(len(Counted.writes))
            return
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
    # Still in the turn that sent the body (as the gateway's monitoring is): already written.
    WRITTEN_WHEN_ANSWERED.append(len(Counted.writes))


@pytest.fixture(scope="module")
def server() -> Iterator[InThreadServer]:
    srv = InThreadServer(_app, http=CountingProtocol)
    yield srv
    srv.stop()


def test_a_json_answer_leaves_in_one_write(server: InThreadServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for i in range(3):  # kept alive
            Counted.writes.clear()
            WRITTEN_WHEN_ANSWERED.clear()
            body = json.dumps({"n": i}).encode()
            sock.sendall(
                b"POST /v1/x HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                + b"content-length: %d\r\n\r\n" % len(body)
                + body
            )
            first = sock.recv(65536)
            head, _, rest = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), first
            assert json.loads(rest) == {"path": "/v1/x", "echo": body.decode()}
            assert Counted.writes == [first]  # head and body: one write, one segment
            assert WRITTEN_WHEN_ANSWERED == [1]  # sent when complete, not at the turn's end


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _without_date(raw: bytes) -> list[bytes]:
    """A response's lines but its `date` header, which differs from one second to the next."""
    return [line for line in raw.split(b"\r\n") if not line.startswith(b"date:")]


def test_a_whole_answer_is_written_at_once_as_uvicorn_would_write_it(server: InThreadServer) -> None:
    def post(path: str, extra: bytes = b"") -> bytes:
        return b"POST %b HTTP/1.1\r\nhost: t\r\n%bcontent-length: 2\r\n\r\nhi" % (path.encode(), extra)

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        by_send = _exchange(sock, post("/whole-x", b"x-skip: 1\r\n"))  # the control: no extension
        RESPONDED.clear()
        for _ in range(3):  # kept alive
            Counted.writes.clear()
            WRITTEN_WHEN_ANSWERED.clear()
            first = _exchange(sock, post("/whole-x"))
            assert RESPONDED[-1] is True
            assert Counted.writes == [first]  # one write, sent when complete
            assert WRITTEN_WHEN_ANSWERED == [1]
            assert _without_date(first) == _without_date(by_send)
        closing = _exchange(sock, post("/whole-x", b"connection: close\r\n"))
        assert b"\r\nconnection: close\r\n" in closing and RESPONDED[-1] is True
        assert sock.recv(100) == b""  # closed after the answer, as uvicorn closes it
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"HEAD /whole-x HTTP/1.1\r\nhost: t\r\n\r\n")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # no body
        assert RESPONDED[-1] is False  # left to uvicorn's `send`, which knows HEAD
        bad = _exchange(sock, post("/whole/bad"))
        assert bad.startswith(b"HTTP/1.1 500"), bad  # a control byte in a value: refused, as by `send`


def test_pipelined_requests_and_streams_answer_in_order(server: InThreadServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nGET /b HTTP/1.1\r\nhost: t\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b'"echo": ""}'):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data.index(b'"/a"') < data.index(b'"/b"')
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/stream") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            assert response.read() == b"event 0\nevent 1\nevent 2\n"
        assert client.post("/after", content=b"x").json() == {"path": "/after", "echo": "x"}


def _slow_stream_server(
    protocol: type[asyncio.Protocol] | None, wait_s: float = 0.0
) -> tuple[InThreadServer, list[int], threading.Event]:
    """A server answering each request, after `wait_s`, with 200 events 50 ms apart (10 s if
    nobody stops it); the events it produced, and an event set when the stream was closed."""
    produced: list[int] = []
    closed = threading.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            for i in range(200):
                produced.append(i)
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(0.05)
        finally:
            closed.set()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _app(scope, receive, send)
            return
        await asyncio.sleep(wait_s)
        await EventStream(events(), {"x-test": "1"})(scope, receive, send)

    return InThreadServer(app, http=protocol), produced, closed


@pytest.mark.parametrize("protocol", [GatewayHttpProtocol, None], ids=["gateway-protocol", "plain-uvicorn"])
def test_a_stream_stops_when_its_client_leaves(protocol: type[asyncio.Protocol] | None) -> None:
    """Told by the protocol's disconnect extension, or found by watching `receive` elsewhere."""
    srv, produced, closed = _slow_stream_server(protocol)
    try:
        with httpx.stream("GET", f"{srv.url}/s", timeout=10) as r:
            assert r.headers["x-test"] == "1" and r.headers["content-type"].startswith("text/event-stream")
            next(r.iter_lines())
        wait_until(closed.is_set, 5, "the stream went on after its client left")
        assert len(produced) < 200
    finally:
        srv.stop()


@pytest.mark.parametrize("protocol", [GatewayHttpProtocol, None], ids=["gateway-protocol", "plain-uvicorn"])
def test_a_stream_whose_client_left_before_it_started_stops_at_once(
    protocol: type[asyncio.Protocol] | None,
) -> None:
    """As when the client hangs up while the gateway waits for the engine's head."""
    srv, produced, closed = _slow_stream_server(protocol, wait_s=0.5)  # the client leaves meanwhile
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"GET /s HTTP/1.1\r\nhost: t\r\n\r\n")
        wait_until(closed.is_set, 5, "the stream ran for a client that had left")
        assert len(produced) < 10
    finally:
        srv.stop()


class Pushed:
    """A stream written through the server's BodyWriter from loop callbacks (as the relay writes
    from the engine connection's), or iterated under a server that has none."""

    def __init__(self, n: int) -> None:
        self.events = [f"data: {i}\n\n".encode() for i in range(n)] + [b"data: [DONE]\n\n"]
        self.pushed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event

    async def push(self, writer: Any) -> None:
        self.pushed = True
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def write(i: int) -> None:
            last = i == len(self.events) - 1
            writer.write(self.events[i], last=last)
            if last:
                done.set_result(None)
            else:
                loop.call_later(0.005, write, i + 1)

        loop.call_soon(write, 0)
        await done


@pytest.mark.parametrize("protocol", [CountingProtocol, None], ids=["gateway-protocol", "plain-uvicorn"])
def test_a_pushed_stream_is_written_by_the_body_writer_its_end_with_its_last_event(
    protocol: type[asyncio.Protocol] | None,
) -> None:
    stream = Pushed(3)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _app(scope, receive, send)
            return
        await EventStream(stream, {}, push=stream.push)(scope, receive, send)

    srv = InThreadServer(app, http=protocol)
    try:
        Counted.writes.clear()
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            r = client.get("/s")
            assert r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
            assert r.headers["transfer-encoding"] == "chunked"
            assert client.get("/s").status_code == 200  # the connection was kept alive
        assert stream.pushed is (protocol is not None)
        if protocol is not None:
            first = Counted.writes[0]  # the head held for the first event, to leave in its send
            assert first.startswith(b"HTTP/1.1 200 OK\r\n")
            assert first.endswith(b"\r\n\r\n9\r\ndata: 0\n\n\r\n")
            assert Counted.writes[-1] == b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"  # the end with the last event
    finally:
        srv.stop()


def test_a_pushed_stream_starts_and_ends_as_uvicorn_would_write_it() -> None:
    def raw(protocol: type[asyncio.Protocol] | None, request: bytes) -> tuple[list[bytes], bool]:
        stream = Pushed(2)

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await _app(scope, receive, send)
                return
            await EventStream(stream, {"x-request-id": "r-1"}, push=stream.push)(scope, receive, send)

        srv = InThreadServer(app, http=protocol)
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
                sock.sendall(request)
                data = b""
                while not data.endswith(b"0\r\n\r\n"):
                    chunk = sock.recv(65536)
                    assert chunk, data
                    data += chunk
                sock.settimeout(2)
                try:
                    closed = sock.recv(100) == b""
                except TimeoutError:
                    closed = False
        finally:
            srv.stop()
        assert stream.pushed is (protocol is not None)
        return _without_date(data), closed

    for request in (
        b"GET /s HTTP/1.1\r\nhost: t\r\n\r\n",
        b"GET /s HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    ):
        pushed, pushed_closed = raw(GatewayHttpProtocol, request)
        sent, sent_closed = raw(None, request)
        assert pushed == sent
        assert pushed_closed is sent_closed is (b"close" in request)


def test_the_body_writer_says_when_the_client_is_full_and_when_it_takes_bytes_again() -> None:
    piece = b"y" * 65536
    told: dict[str, Any] = {}

    async def push(writer: Any) -> None:
        loop = asyncio.get_running_loop()
        writable = loop.create_future()
        written = 0
        while writer.write(piece):  # a client that reads nothing: its socket fills up
            written += 1
            assert written < 2000, "never full"
            await asyncio.sleep(0)  # the corked writes reach the socket at the turn's end
        told["full_after"] = written
        writer.when_writable(lambda: writable.set_result(None))
        await writable
        writer.write(b"end", last=True)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _app(scope, receive, send)
            return
        await EventStream(_nothing(), {}, push=push)(scope, receive, send)

    srv = InThreadServer(app, http=GatewayHttpProtocol)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"GET /s HTTP/1.1\r\nhost: t\r\n\r\n")
            wait_until(lambda: "full_after" in told, 5, "the body writer never said the client was full")
            data = b""
            while not data.endswith(b"3\r\nend\r\n0\r\n\r\n"):
                chunk = sock.recv(1 << 20)
                assert chunk, data[-100:]
                data += chunk
        assert data.count(piece) == told["full_after"] + 1  # the piece that found it full was written
    finally:
        srv.stop()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""
