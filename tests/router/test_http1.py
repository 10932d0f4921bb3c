"""router/http1.py against real sockets: a scripted HTTP/1.1 server on loopback answers each request
the way a test needs (well, slowly, broken or not at all). The gateway's forwarding through it to a
real vLLM engine is covered by test_gateway_e2e.py."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from router.http1 import (
    AnswerTooLargeError,
    DeadlineExceededError,
    Http1Pool,
    Timeouts,
    UpstreamConnectionError,
    UpstreamDisconnectedError,
    UpstreamProtocolError,
)

pytestmark = pytest.mark.anyio

FAST = Timeouts(pool_s=2.0, connect_s=2.0, read_s=2.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes], Awaitable[bool]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """(head, body) of the next request on the connection, None at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class ScriptedServer:
    """A SCRIPTED HTTP/1.1 SERVER for these tests: `handler(reader, writer, head, body)` answers
    each request and returns whether to keep the connection open."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.heads: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while (request := await read_request(reader)) is not None:
                self.heads.append(request[0])
                if not await self.handler(reader, writer, *request):
                    break
        except asyncio.CancelledError:
            pass  # the test is over
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[ScriptedServer, str]]:
    scripted = ScriptedServer(handler)
    server = await asyncio.start_server(scripted._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield scripted, f"http://127.0.0.1:{port}"
    finally:
        server.close()


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


def echo_after(delay_s: float) -> Handler:
    """Answers each request with its body, `delay_s` after it came."""

    async def slow(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, body: bytes) -> bool:
        await asyncio.sleep(delay_s)
        w.write(answer(body))
        await w.drain()
        return True

    return slow


async def echo(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, body: bytes) -> bool:
    w.write(answer(b'{"echo": ' + body + b"}"))
    await w.drain()
    return True


async def test_posts_and_reuses_one_kept_alive_connection() -> None:
    async with serving(echo) as (server, url):
        pool = Http1Pool(limit=4)
        for i in range(3):
            response = await pool.post(url, "/v1/x", f"[{i}]".encode(), {"x-request-id": "r1"}, FAST)
            assert response.status == 200
            assert response.headers["content-type"] == "application/json"
            assert await response.read() == f'{{"echo": [{i}]}}'.encode()
            response.release()
        await pool.close()
    assert server.connections == 1
    head = server.heads[0].decode()
    assert head.startswith("POST /v1/x HTTP/1.1\r\n")
    assert f"Host: {url.removeprefix('http://')}\r\n" in head
    assert "Content-Length: 3\r\n" in head and "x-request-id: r1\r\n" in head


async def test_a_chunked_stream_arrives_piece_by_piece() -> None:
    go_on = asyncio.Event()

    async def stream(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        w.write(b"7\r\ndata: 1\r\n")
        await w.drain()
        await go_on.wait()
        w.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await w.drain()
        return True

    async with serving(stream) as (server, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/s", b"{}", {}, FAST)
        pieces = response.iter_any()
        assert await anext(pieces) == b"data: 1"  # before the server sends the rest
        go_on.set()
        assert [p async for p in pieces] == [b"data: 2"]
        response.release()
        again = await pool.post(url, "/s", b"{}", {}, FAST)  # the connection was given back
        assert b"".join([p async for p in again.iter_any()]) == b"data: 1data: 2"
        again.release()
        await pool.close()
    assert server.connections == 1


async def test_a_large_answer_is_read_whole_and_a_large_stream_is_paused_and_resumed() -> None:
    big = b"x" * (3 << 20)  # above the 1 MiB held before the socket is paused

    async def large(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(answer(big))
        await w.drain()
        return True

    async with serving(large) as (_, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"{}", {}, FAST)
        await asyncio.sleep(0.2)  # the body arrives before it is read
        assert await response.read() == big
        response.release()
        streamed = await pool.post(url, "/x", b"{}", {}, FAST)
        got = bytearray()
        async for piece in streamed.iter_any():
            got += piece
            await asyncio.sleep(0.01)  # a slow reader
        assert bytes(got) == big
        streamed.release()
        await pool.close()


async def test_a_refused_connection_is_an_upstream_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        pool = Http1Pool(limit=4)
        with pytest.raises(UpstreamConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
            await pool.post(f"http://127.0.0.1:{port}", "/x", b"{}", {}, FAST)
        assert pool.stats(f"http://127.0.0.1:{port}").open == 0


async def test_an_engine_that_says_nothing_times_out_and_its_connection_is_closed() -> None:
    async def silent(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        await asyncio.sleep(5)
        return False

    async with serving(silent) as (_, url):
        pool = Http1Pool(limit=4)
        with pytest.raises(TimeoutError, match=r"sent nothing for 0\.2 s"):
            await pool.post(url, "/x", b"{}", {}, Timeouts(pool_s=2.0, connect_s=2.0, read_s=0.2))
        await asyncio.sleep(0.05)
        assert pool.stats(url).open == 0


async def test_a_stream_that_stalls_times_out_between_chunks() -> None:
    async def stalls(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await w.drain()
        await asyncio.sleep(5)
        return False

    async with serving(stalls) as (_, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"{}", {}, Timeouts(pool_s=2.0, connect_s=2.0, read_s=0.2))
        got = []
        with pytest.raises(TimeoutError):
            async for piece in response.iter_any():
                got.append(piece)
        assert got == [b"a"]
        response.release()
        await asyncio.sleep(0.05)
        assert pool.stats(url).open == 0


async def test_a_steady_stream_longer_than_the_read_timeout_is_not_cut() -> None:
    """The read timeout counts from the last byte, not from the answer's start."""

    async def steady(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(8):  # 0.4 s in all, a chunk every 0.05 s
            await asyncio.sleep(0.05)
            w.write(b"1\r\na\r\n")
            await w.drain()
        w.write(b"0\r\n\r\n")
        await w.drain()
        return True

    async with serving(steady) as (_, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"{}", {}, Timeouts(pool_s=2.0, connect_s=2.0, read_s=0.3))
        assert b"".join([piece async for piece in response.iter_any()]) == b"a" * 8
        response.release()


async def test_an_answer_cut_off_mid_body_is_an_error_and_its_connection_is_not_reused() -> None:
    async def cut(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial')
        await w.drain()
        return False  # closes the connection

    async with serving(cut) as (_, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"{}", {}, FAST)
        with pytest.raises(UpstreamConnectionError, match="closed the connection mid-answer"):
            await response.read()
        response.release()
        assert pool.stats(url).idle == 0


async def test_a_kept_alive_connection_the_engine_closed_is_replaced_without_an_error() -> None:
    """uvicorn closes a connection idle for its keep-alive time. The pool sees it closed before it
    writes, and sends the next request on a new connection: each request reaches the engine once."""
    bodies: list[bytes] = []

    async def answer_then_close(
        _r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, body: bytes
    ) -> bool:
        bodies.append(body)
        w.write(answer(body))
        await w.drain()
        await asyncio.sleep(0.05)  # the engine's keep-alive timer, after the answer was read
        return False

    async with serving(answer_then_close) as (server, url):
        pool = Http1Pool(limit=4)
        for i in range(3):
            response = await pool.post(url, "/x", f"[{i}]".encode(), {}, FAST)
            assert await response.read() == f"[{i}]".encode()
            response.release()
            await asyncio.sleep(0.1)  # the close arrives; the loop need not have run it yet
        await pool.close()
    assert server.connections == 3
    assert bodies == [b"[0]", b"[1]", b"[2]"]


async def test_a_connection_closed_after_the_request_was_sent_is_an_error_not_a_second_send() -> None:
    """The engine read the whole request, then closed without a byte of answer (it crashed): it
    may have worked on it, so the request is never sent again, on a new connection or a reused one."""
    bodies: list[bytes] = []

    async def read_then_close(
        _r: asyncio.StreamReader, _w: asyncio.StreamWriter, _h: bytes, body: bytes
    ) -> bool:
        bodies.append(body)
        return False

    async with serving(read_then_close) as (server, url):
        pool = Http1Pool(limit=4)
        with pytest.raises(UpstreamDisconnectedError, match="after the request was sent, before answering"):
            await pool.post(url, "/x", b"{}", {}, FAST)
    assert server.connections == 1
    assert bodies == [b"{}"]


async def test_a_request_whose_write_did_not_complete_is_sent_again_on_a_new_connection() -> None:
    """The engine reset the connection while most of a large body was still in the pool's buffer:
    it cannot have the request, so it is sent again, once, and answered."""
    big = b"x" * (8 << 20)
    seen: list[int] = []

    async def reset_first(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(len(head))
        if len(seen) == 1:
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()  # RST with the body unread
            return
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        w.write(answer(str(len(body)).encode()))
        await w.drain()
        w.close()

    server = await asyncio.start_server(reset_first, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", big, {}, FAST)
        assert await response.read() == str(len(big)).encode()
        response.release()
        await pool.close()
    finally:
        server.close()
    assert len(seen) == 2


async def test_a_large_body_is_written_as_fast_as_the_engine_reads_it() -> None:
    """Backpressure: an engine reading slowly gets the whole body, in order."""

    async def slow_reader(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        got = bytearray()
        while len(got) < length:
            got += await reader.read(1 << 16)
            await asyncio.sleep(0.001)
        w.write(answer(str(sum(got) % 1000).encode()))
        await w.drain()
        w.close()

    body = bytes(range(256)) * (16 << 10)  # 4 MiB
    server = await asyncio.start_server(slow_reader, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", body, {}, FAST)
        assert await response.read() == str(sum(body) % 1000).encode()
        response.release()
        await pool.close()
    finally:
        server.close()


async def test_idle_connections_are_closed_after_idle_s_and_a_forgotten_engine_is_dropped() -> None:
    async with serving(echo) as (server, url):
        pool = Http1Pool(limit=4, idle_s=0.1)
        response = await pool.post(url, "/x", b"[1]", {}, FAST)
        await response.read()
        response.release()
        assert pool.stats(url).idle == 1
        await asyncio.sleep(0.3)
        assert pool.stats(url).open == 0 and server.open == 0  # closed by the pool's timer
        response = await pool.post(url, "/x", b"[2]", {}, FAST)
        await response.read()
        response.release()
        pool.forget(url)
        await asyncio.sleep(0.05)
        assert pool.stats(url).open == 0 and server.open == 0
        await pool.close()


async def test_an_upgrade_answer_is_an_error() -> None:
    async def upgrade(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
        await w.drain()
        await asyncio.sleep(1)
        return False

    async with serving(upgrade) as (_, url):
        pool = Http1Pool(limit=4)
        with pytest.raises(UpstreamProtocolError, match="101"):
            await pool.post(url, "/x", b"{}", {}, FAST)
        await pool.close()


async def test_repeated_headers_are_combined() -> None:
    async def repeated(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(answer(b"ok", b"vary: accept\r\nVary: origin\r\n"))
        await w.drain()
        return True

    async with serving(repeated) as (_, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"{}", {}, FAST)
        assert response.headers["vary"] == "accept, origin"
        assert await response.read() == b"ok"
        response.release()
        await pool.close()


async def test_a_whole_body_read_is_bounded() -> None:
    async def huge(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(answer(b"y" * 300_000))
        await w.drain()
        return True

    async with serving(huge) as (_, url):
        pool = Http1Pool(limit=4, max_answer_bytes=100_000)
        response = await pool.post(url, "/x", b"{}", {}, FAST)
        with pytest.raises(AnswerTooLargeError, match="over 100000 bytes"):
            await response.read()
        response.release()
        await asyncio.sleep(0.05)
        assert pool.stats(url).open == 0
        await pool.close()


async def test_connection_close_and_read_to_the_end() -> None:
    async def to_close(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it, ")
        await w.drain()
        w.write(b"until the end")
        await w.drain()
        return False

    async with serving(to_close) as (server, url):
        pool = Http1Pool(limit=4)
        for _ in range(2):
            response = await pool.post(url, "/x", b"{}", {}, FAST)
            assert await response.read() == b"all of it, until the end"
            response.release()
        await pool.close()
    assert server.connections == 2


async def test_at_most_limit_connections_and_waiters_get_released_ones() -> None:
    async with serving(echo_after(0.05)) as (server, url):
        pool = Http1Pool(limit=2)

        async def one(i: int) -> bytes:
            response = await pool.post(url, "/x", str(i).encode(), {}, FAST)
            try:
                return await response.read()
            finally:
                response.release()

        assert await asyncio.gather(*(one(i) for i in range(8))) == [str(i).encode() for i in range(8)]
        await pool.close()
    assert server.most_open == 2


async def test_waiting_for_a_connection_times_out_within_connect_s() -> None:
    async def never(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        await asyncio.sleep(5)
        return False

    async with serving(never) as (_, url):
        pool = Http1Pool(limit=1)
        held = asyncio.create_task(
            pool.post(url, "/x", b"{}", {}, Timeouts(pool_s=2.0, connect_s=2.0, read_s=5.0))
        )
        await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError, match="no free connection"):
            await pool.post(url, "/x", b"{}", {}, Timeouts(pool_s=0.2, connect_s=2.0, read_s=5.0))
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        await asyncio.sleep(0.05)
        assert pool.stats(url).open == 0  # the cancelled request's connection was closed


async def test_an_answer_released_unread_closes_its_connection() -> None:
    async with serving(echo) as (server, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"[1]", {}, FAST)
        response.release()
        response.release()  # twice is fine
        again = await pool.post(url, "/x", b"[2]", {}, FAST)
        assert await again.read() == b'{"echo": [2]}'
        again.release()
        await pool.close()
    # the first answer may have been read whole by the time it was released; either way it works
    assert server.connections in (1, 2)


async def test_not_http_is_an_upstream_connection_error() -> None:
    async def garbage(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await w.drain()
        return True

    async with serving(garbage) as (_, url):
        pool = Http1Pool(limit=4)
        with pytest.raises(UpstreamProtocolError, match="not valid HTTP"):
            await pool.post(url, "/x", b"{}", {}, FAST)


async def test_header_values_with_line_breaks_are_refused() -> None:
    pool = Http1Pool(limit=4)
    with pytest.raises(ValueError, match="line break"):
        await pool.post("http://127.0.0.1:9", "/x", b"{}", {"x-request-id": "a\r\nevil: 1"}, FAST)


async def test_waiting_requests_are_served_in_the_order_they_came() -> None:
    async with serving(echo_after(0.02)) as (_, url):
        pool = Http1Pool(limit=1)
        served: list[int] = []

        async def one(i: int) -> None:
            response = await pool.post(url, "/x", str(i).encode(), {}, FAST)
            await response.read()
            response.release()
            served.append(i)

        tasks = []
        for i in range(10):  # each arrives while the ones before it wait
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        await pool.close()
    assert served == list(range(10))


async def test_a_request_the_engine_may_have_started_is_not_sent_again() -> None:
    """Closed unanswered long after it was sent (the engine crashed mid-generation): an error,
    not a second generation."""
    requests = []

    async def crash(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, body: bytes) -> bool:
        requests.append(body)
        if len(requests) == 1:
            w.write(answer(body))
            await w.drain()
            return True
        await asyncio.sleep(0.5)
        return False

    async with serving(crash) as (_, url):
        pool = Http1Pool(limit=4)
        first = await pool.post(url, "/x", b"[1]", {}, FAST)
        await first.read()
        first.release()
        with pytest.raises(UpstreamDisconnectedError, match="before answering"):
            await pool.post(url, "/x", b"[2]", {}, FAST)  # on the kept-alive connection
    assert requests == [b"[1]", b"[2]"]


async def test_an_interim_answer_is_skipped() -> None:
    async def hints(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
        w.write(answer(b"ok"))
        await w.drain()
        return True

    async with serving(hints) as (_, url):
        pool = Http1Pool(limit=4)
        for _ in range(2):
            response = await pool.post(url, "/x", b"{}", {}, FAST)
            assert response.status == 200 and "link" not in response.headers
            assert await response.read() == b"ok"
            response.release()
        await pool.close()


async def test_a_body_read_to_the_close_and_cut_by_a_reset_is_an_error() -> None:
    async def reset(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{"partial')
        await w.drain()
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST, not FIN
        w.transport.abort()
        return False

    async with serving(reset) as (_, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"{}", {}, FAST)
        with pytest.raises(UpstreamConnectionError, match="mid-answer"):
            await response.read()
        response.release()


async def test_connecting_takes_at_most_connect_s() -> None:
    """An engine whose accept queue is full drops new connections' SYNs: connecting hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # never accepted: the queue fills
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            await asyncio.sleep(0.1)
            pool = Http1Pool(limit=4)
            with pytest.raises(TimeoutError, match=r"took over 0\.3 s"):
                await pool.post(
                    f"http://127.0.0.1:{port}",
                    "/x",
                    b"{}",
                    {},
                    Timeouts(pool_s=5.0, connect_s=0.3, read_s=5.0),
                )
            assert pool.stats(f"http://127.0.0.1:{port}").open == 0
        finally:
            for s in fillers:
                s.close()


class Collected:
    """A BodySink keeping what pipe() hands it."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.ended = asyncio.get_running_loop().create_future()

    def data(self, chunk: bytes) -> None:
        self.pieces.append(chunk)

    def end(self, error: BaseException | None) -> None:
        assert not self.ended.done(), "ended twice"
        self.ended.set_result(error)


async def test_a_piped_stream_is_handed_over_as_it_arrives_then_ended() -> None:
    go_on = asyncio.Event()

    async def stream(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n")
        await w.drain()
        await go_on.wait()
        w.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await w.drain()
        return True

    async with serving(stream) as (server, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/s", b"{}", {}, FAST)
        await asyncio.sleep(0.05)  # the first piece arrives before the pipe: handed over at once
        sink = Collected()
        response.pipe(sink)
        assert sink.pieces == [b"data: 1"] and not sink.ended.done()
        go_on.set()
        assert await asyncio.wait_for(sink.ended, 2) is None
        assert sink.pieces == [b"data: 1", b"data: 2"]
        response.release()
        again = await pool.post(url, "/s", b"{}", {}, FAST)  # the connection was given back
        assert await again.read() == b"data: 1data: 2"
        again.release()
        await pool.close()
    assert server.connections == 1


async def test_a_piped_stream_ends_with_the_read_timeout_the_deadline_or_the_sinks_error() -> None:
    async def stalls(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await w.drain()
        await asyncio.sleep(5)
        return False

    quick = Timeouts(pool_s=2.0, connect_s=2.0, read_s=0.2)
    async with serving(stalls) as (_, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"{}", {}, quick)
        sink = Collected()
        response.pipe(sink)
        error = await asyncio.wait_for(sink.ended, 2)
        assert isinstance(error, TimeoutError) and "sent nothing for 0.2 s" in str(error)
        assert sink.pieces == [b"a"]
        response.release()

        loop = asyncio.get_running_loop()
        response = await pool.post(url, "/x", b"{}", {}, FAST, deadline=time.monotonic() + 0.3)
        sink = Collected()
        response.pipe(sink)
        started = loop.time()
        error = await asyncio.wait_for(sink.ended, 2)
        assert isinstance(error, DeadlineExceededError)
        assert 0.15 < loop.time() - started < 1.0
        response.release()

        class Broken(Collected):
            def data(self, chunk: bytes) -> None:
                raise RuntimeError("a bug of the sink's")

        response = await pool.post(url, "/x", b"{}", {}, FAST)
        sink = Broken()
        response.pipe(sink)
        error = await asyncio.wait_for(sink.ended, 2)
        assert isinstance(error, RuntimeError)
        response.release()
        await asyncio.sleep(0.05)
        assert pool.stats(url).open == 0  # none of those connections is reused
        await pool.close()


async def test_a_held_pipe_stops_reading_and_its_silence_is_not_a_timeout() -> None:
    """A sink whose own client is slow holds the engine's reading: bytes back up in the kernel,
    not in the gateway, and the read timeout does not count while held (the deadline does)."""
    piece = b"x" * 65536
    sent = 0

    async def fast(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _h: bytes, _b: bytes) -> bool:
        nonlocal sent
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(200):  # 12.5 MiB: more than the sockets' buffers hold
            w.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await w.drain()
            sent += len(piece)
        w.write(b"0\r\n\r\n")
        await w.drain()
        return True

    async with serving(fast) as (_, url):
        pool = Http1Pool(limit=4)
        response = await pool.post(url, "/x", b"{}", {}, Timeouts(pool_s=2.0, connect_s=2.0, read_s=0.2))

        class Holding(Collected):
            holding = True

            def data(self, chunk: bytes) -> None:
                super().data(chunk)
                if self.holding:
                    response.hold()

        sink = Holding()
        response.pipe(sink)
        await asyncio.sleep(0.5)  # over the read timeout, held
        assert not sink.ended.done()
        got = sum(map(len, sink.pieces))
        assert got < 1 << 20 and sent < 200 * len(piece)  # the engine is held back too
        sink.holding = False
        response.unhold()
        assert await asyncio.wait_for(sink.ended, 5) is None
        assert sum(map(len, sink.pieces)) == 200 * len(piece)
        response.release()
        await pool.close()
