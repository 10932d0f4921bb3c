"""The gateway's answers: JSON by orjson, SSE relayed event by event, errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from router.errors import RouterError
from router.server import (
    BODY_WRITER_EXTENSION,
    DISCONNECT_EXTENSION,
    WHOLE_ANSWER_EXTENSION,
    BodyWriter,
    ConnectionLost,
)

log = logging.getLogger("lorafleet.router")

REQUEST_ID_HEADER = "x-request-id"
DONE_EVENT = b"data: [DONE]\n\n"


def _encoded(raw: list[tuple[bytes, bytes]], headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """`raw` with `headers` appended, encoded for ASGI."""
    for name, value in headers.items():
        raw.append((name.encode("latin-1"), value.encode("latin-1")))
    return raw


class FastJSONResponse(JSONResponse):
    """A JSON response serialised by orjson (several times faster than json on large answers)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class AnswerResponse(Response):
    """An engine's JSON answer passed on as bytes; then `after()` runs, in the same task, once the
    body is sent. Starlette's Response with a BackgroundTask would copy and encode the headers
    again and check on every request whether `after` is a coroutine function."""

    media_type = "application/json"

    def __init__(
        self, body: bytes, headers: Mapping[str, str], after: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.body = body
        self.status_code = 200
        self.background = None
        self.after = after
        self.raw_headers = _encoded(
            [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")], headers
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        respond = scope.get("extensions", {}).get(WHOLE_ANSWER_EXTENSION)  # the gateway's server
        if respond is None or not respond(send, 200, self.raw_headers, self.body):
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.body})
        if self.after is not None:
            await self.after()


async def _client_left(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ClientLeaving:
    """Cancels `task`, the one serving a request, when its client leaves: told by the gateway's
    server (DISCONNECT_EXTENSION; at once if the client has already left) or, with `watch`, under
    another server by one task watching `receive` for the disconnect. `swallow()` says whether a
    CancelledError came from the client's leaving, and takes that cancellation back; `close()`
    stops listening."""

    __slots__ = ("_lost", "_task", "_watcher", "left")

    def __init__(self, scope: Scope, receive: Receive, task: asyncio.Task[Any], watch: bool) -> None:
        self._task = task
        self.left = False
        self._watcher: asyncio.Future[None] | None = None
        self._lost: ConnectionLost | None = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
        if self._lost is not None:
            self._lost.add(self._leave)
        elif watch:
            self._watcher = asyncio.ensure_future(_client_left(receive))
            self._watcher.add_done_callback(self._watched)

    def _leave(self) -> None:
        self.left = True
        self._task.cancel()

    def _watched(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled():
            self._leave()

    def swallow(self) -> bool:
        if self.left:
            self._task.uncancel()
        return self.left

    def close(self) -> None:
        if self._lost is not None:
            self._lost.discard(self._leave)
        elif self._watcher is not None:
            self._watcher.remove_done_callback(self._watched)
            self._watcher.cancel()


class EventStream(Response):
    """A `text/event-stream` answer sent event by event as `events` yields them, never buffered.

    When the client goes away the task serving it is cancelled, so the relay stops reading the
    engine at once (it sees CancelledError and counts the request as cancelled by the client).
    Starlette's StreamingResponse does the same with an anyio task group, at about 200 us of CPU
    per stream more (bench/gateway_overhead.py); this hears of it from the gateway's server
    (router/server.py's DISCONNECT_EXTENSION) or, under another server, from one plain task
    watching `receive`. An event that ends with `data: [DONE]` completes the response; anything
    `events` yields after it is dropped.

    With `push`, under the gateway's server, the response is started by the server's
    BODY_WRITER_EXTENSION and its body written by `push(writer)` through the BodyWriter instead of
    iterating `events`; the response ends when it returns.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterable[bytes],
        headers: Mapping[str, str],
        push: Callable[[BodyWriter], Awaitable[None]] | None = None,
    ) -> None:
        """`events.aclose()`, if it has one, is awaited once the stream ends, however it ends:
        also when the client left before `events` started."""
        self.events = events
        self.push = push
        self.status_code = 200
        self.background = None
        self.raw_headers = _encoded(
            [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")], headers
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        # If the client has already left, the first await below is cancelled.
        leaving = ClientLeaving(scope, receive, task, watch=True)
        extensions = scope.get("extensions", {})
        complete = False
        try:
            start = extensions.get(BODY_WRITER_EXTENSION) if self.push is not None else None
            writer = start(send, 200, self.raw_headers) if start is not None else None
            if writer is not None:
                assert self.push is not None
                await self.push(writer)
                complete = True  # its `[DONE]` is written, to leave with the end
                writer.end()
            else:
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                async for event in self.events:
                    if complete:
                        continue  # nothing follows `[DONE]`; the relay reads on to the engine's end
                    # `[DONE]` ends the response at once (with the terminator, in one write),
                    # before the relay records the stream's outcome.
                    complete = event.endswith(DONE_EVENT)
                    await send({"type": "http.response.body", "body": event, "more_body": not complete})
        except asyncio.CancelledError:
            if leaving.swallow():
                return
            raise
        finally:
            leaving.close()
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()  # a relay stopped early records its outcome now, not when collected
        if not complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def openai_error(
    status: int,
    type_: str,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return FastJSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def internal_error(exc: Exception, request_id: str | None) -> JSONResponse:
    """The answer of last resort to an unexpected exception: logged, a 500 in OpenAI's shape."""
    log.error("unexpected error in request %s", request_id, exc_info=exc)
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    # The exception itself stays in the log: its text may hold paths, addresses or data.
    return openai_error(
        500,
        "server_error",
        f"internal error (request {request_id}); the gateway's log has the detail",
        headers=headers,
    )


def error_response(exc: RouterError) -> JSONResponse:
    return openai_error(exc.status, exc.type, exc.message, exc.param, exc.code, exc.headers)
