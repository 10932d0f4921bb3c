"""Pure logic of the gateway's request path: SSE splitting of engine streams and request ids.
The relay itself is tested over real HTTP (test_gateway_http.py, test_gateway_e2e.py)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from router.relay import SSEBuffer


def test_events_split_across_chunks_and_several_in_one_chunk() -> None:
    buffer = SSEBuffer()
    assert buffer.feed(b'data: {"a"') == []
    assert buffer.feed(b":1}\n") == []
    assert buffer.feed(b'\ndata: {"b":2}\n\ndata: [DO') == [b'{"a":1}', b'{"b":2}']
    assert buffer.feed(b"NE]\n\n") == [b"[DONE]"]
    assert buffer.close() == []


def test_comments_and_other_fields_are_skipped_and_a_last_event_without_blank_line_is_kept() -> None:
    buffer = SSEBuffer()
    assert buffer.feed(b': keep-alive\n\nevent: message\ndata:{"x":1}\n\n') == [b'{"x":1}']
    assert buffer.feed(b"data: [DONE]\n") == []
    assert buffer.close() == [b"[DONE]"]


def test_request_ids_are_unique_and_a_forked_worker_gets_its_own_prefix() -> None:
    import os

    from router.ids import new_request_id

    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(i.startswith("req-") for i in ids)
    assert new_request_id("shadow").startswith("shadow-")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send one id and leave at once
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    prefix = len("req-") + 12
    assert child[:prefix] != ids[0][:prefix]


def test_an_event_stream_whose_client_left_before_the_first_event_still_closes_its_events() -> None:
    """The client left before the first event: the events are closed all the same (the relay's
    aclose gives the engine's connection back and counts the request as cancelled)."""
    import asyncio
    import contextlib

    from router.responses import EventStream

    closed: list[bool] = []
    ran: list[bool] = []

    class Events:
        def __aiter__(self) -> Any:
            ran.append(True)
            return self

        async def __anext__(self) -> bytes:
            return b"data: 1\n\n"

        async def aclose(self) -> None:
            closed.append(True)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def main() -> None:
        stream = EventStream(Events(), {})
        sending = asyncio.Event()

        async def send(message: MutableMapping[str, Any]) -> None:
            sending.set()
            await asyncio.sleep(10)  # the client's socket is full

        task = asyncio.create_task(stream({"type": "http"}, receive, send))
        await sending.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert ran == [] and closed == [True]
