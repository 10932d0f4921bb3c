"""The stream relay: an engine's SSE events passed on as they come, watched, and ended by the deadline.

    Relay             the client's byte stream: each engine event as the client gets it (logprobs
                      it did not ask for removed, usage only if asked); an engine that breaks or a
                      deadline that passes ends it with an error event and `[DONE]`; the outcome
                      is recorded once, however it ends. Pushed from the engine connection's
                      callbacks to the client's socket under the gateway's server, else iterated
    StreamWatch       what a stream has shown so far: text, first-token time, usage, entropy
    SSEBuffer, sse    `data:` payloads out of a byte stream, and one event's bytes

The events of one chunk from the engine leave in one write: as many writes as the engine's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from monitor.entropy import EntropyAccumulator
from monitor.metrics import ErrorReason
from router.answer import Usage, chunk_text, read_answer, rewrite_logprobs, strip_logprobs
from router.forward import Attempt, Target
from router.http1 import DeadlineExceededError
from router.observe import Observer, Outcome
from router.responses import DONE_EVENT
from router.server import BodyWriter
from router.upstream import UPSTREAM_ERRORS

log = logging.getLogger("lorafleet.router")


class SSEBuffer:
    """The `data:` payloads of server-sent events in a byte stream, fed chunk by chunk as it arrives."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads of every event that `chunk` completes."""
        if (
            not self._rest
            and chunk.startswith(b"data:")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
        ):
            return [chunk[5:-2].strip()]  # one whole one-line event: what engines send most
        *events, self._rest = (self._rest + chunk if self._rest else chunk).split(b"\n\n")
        payloads: list[bytes] = []
        for event in events:
            if event.startswith(b"data:") and b"\n" not in event:  # one line: the usual event
                payloads.append(event[5:].strip())
                continue
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    payloads.append(line[5:].strip())
        return payloads

    def close(self) -> list[bytes]:
        """The payload of a last event the stream ended without a blank line after."""
        rest, self._rest = self._rest.strip(), b""
        return [rest[5:].strip()] if rest.startswith(b"data:") else []


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def error_event(message: str, type_: str, code: str) -> bytes:
    return sse({"error": {"message": message, "type": type_, "param": None, "code": code}}) + DONE_EVENT


class StreamWatch:
    """What a relayed stream has shown so far (text, first-token time, usage, entropy), and each
    engine event as the client gets it: logprobs it did not ask for removed, usage only if asked."""

    def __init__(
        self,
        chat: bool,
        start: float,
        rewrite: bool,
        keep_top: int | None,
        asked_usage: bool,
        top_k: int | None = None,
    ) -> None:
        self.chat = chat
        self.start = start
        self.rewrite = rewrite
        self.keep_top = keep_top
        self.asked_usage = asked_usage
        self.entropy = EntropyAccumulator(top_k)
        self.done = False  # the engine's `[DONE]` went out: the answer is complete
        self.parts: list[str] = []
        self.ttft: float | None = None
        self.usage = Usage()
        self.completion_id: str | None = None

    def relay(self, payloads: list[bytes]) -> bytes:
        """The SSE bytes to send for these `data:` payloads of the engine's events."""
        out: list[bytes] = []
        for payload in payloads:
            if payload == b"[DONE]":
                out.append(DONE_EVENT)
                self.done = True
                continue
            try:
                chunk = read_answer(payload)
            except ValueError:
                out.append(b"data: " + payload + b"\n\n")
                continue
            if chunk is None:
                out.append(b"data: " + self._other(payload) + b"\n\n")
                continue
            self.completion_id = self.completion_id or chunk.id
            if chunk.usage is not None:
                self.usage = chunk.usage
                if not chunk.choices and not self.asked_usage:
                    continue
            choice = chunk.first()
            if choice is not None:
                if choice.has_logprobs:
                    self.entropy.add(choice.tokens())
                self._seen(choice.content)
            if self.rewrite and chunk.choices:
                payload = rewrite_logprobs(payload, chunk, self.keep_top)
            out.append(b"data: " + payload + b"\n\n")
        return b"".join(out)

    def answer(self) -> str:
        """The text so far."""
        return "".join(self.parts)

    def _seen(self, piece: str | None) -> None:
        if piece:
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.start
            self.parts.append(piece)

    def _other(self, payload: bytes) -> bytes:
        """An event of an unusual shape (JSON, read_answer could not type it): read generically."""
        chunk = orjson.loads(payload)
        if not isinstance(chunk, dict):
            return payload
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            self._seen(chunk_text(choices[0], self.chat))
            if self.rewrite:
                return orjson.dumps(strip_logprobs(chunk, self.keep_top))
        return payload


class Relay:
    """One engine stream relayed to one client, watched, ended cleanly on failure or at the
    request's deadline, its outcome recorded once however it ends (`aclose`).

    EventStream drives it one of two ways. `push(writer)`, under the gateway's own server: the
    engine connection's callbacks (Http1Response.pipe) relay each piece and write it to the
    client's socket (router/server.py's BodyWriter), with no task woken for each event; reading
    the engine pauses while the client's socket is full. Iterated (`async for`), under any other
    ASGI server: each piece is read and yielded for the server's `send`.
    """

    def __init__(
        self,
        attempt: Attempt,
        target: Target,
        watch: StreamWatch,
        observer: Observer,
        input_text: str,
        system: str | None,
        request_id: str,
        on_answer: Callable[[str, str | None], None],
    ) -> None:
        """`on_answer(text, completion_id)` runs after a complete answer."""
        self.attempt = attempt
        self.target = target
        self.watch = watch
        self.observer = observer
        self.input_text = input_text
        self.system = system
        self.request_id = request_id
        self.on_answer = on_answer
        self.events = SSEBuffer()
        self.error: ErrorReason | None = None
        self.status = 200
        self.started = False
        self.recorded = False
        self._pulled: AsyncIterator[bytes] | None = None
        self._writer: BodyWriter | None = None
        self._ended: asyncio.Future[None] | None = None  # push: the engine's stream ended
        self._answered: asyncio.Future[None] | None = None  # push: `[DONE]` written, or ended
        self._written_last = False

    # iterated: the pieces for the server's `send`
    def __aiter__(self) -> AsyncIterator[bytes]:
        self._pulled = self._pull()
        return self._pulled

    async def _pull(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            # The transport's reads stop at the request's deadline: no timer of our own per chunk.
            async for raw in self.attempt.response.iter_any():
                out = self.watch.relay(self.events.feed(raw))
                if out:
                    yield out
            out = self.watch.relay(self.events.close())
            if out:
                yield out
        except UPSTREAM_ERRORS as exc:
            yield self._failed(exc)
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled()
            raise

    # pushed: from the engine connection's callbacks to the client's socket
    async def push(self, writer: BodyWriter) -> None:
        """Relay the stream through `writer`; return once the client has the whole answer (its
        `[DONE]` is written, to leave with the response's end, which the caller sends next) or
        the stream ended. What the engine sends after `[DONE]` is read by `aclose`."""
        self.started = True
        self._writer = writer
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        self._answered = loop.create_future()
        self.attempt.response.pipe(self)
        try:
            await self._answered
        except asyncio.CancelledError:
            self._cancelled()
            raise

    def data(self, chunk: bytes) -> None:
        out = self.watch.relay(self.events.feed(chunk))
        if out:
            self._write(out)

    def end(self, error: BaseException | None) -> None:
        if error is None:
            out = self.watch.relay(self.events.close())
        elif isinstance(error, UPSTREAM_ERRORS):
            out = self._failed(error)
        else:  # a bug of the relay's own, which pipe() handed back: the client gets an error event
            log.error("relaying request %s failed", self.request_id, exc_info=error)
            self.error, self.status = ErrorReason.STREAM_ABORTED, 500
            out = error_event(
                f"internal error relaying {self.attempt.version} (request {self.request_id}); the gateway's "
                "log has the detail",
                "server_error",
                "internal_error",
            )
        if out:
            self._write(out)
        _settle(self._ended)
        _settle(self._answered)

    def _write(self, out: bytes) -> None:
        writer = self._writer
        if writer is None or self._written_last:
            return  # nothing follows `[DONE]`
        if out.endswith(DONE_EVENT):
            self._written_last = True
            writer.write(out, last=True)
            _settle(self._answered)
        elif not writer.write(out):
            response = self.attempt.response
            response.hold()
            writer.when_writable(response.unhold)

    # either way
    def _failed(self, exc: BaseException) -> bytes:
        """The error event that ends a stream the engine failed (UPSTREAM_ERRORS)."""
        attempt, request_id = self.attempt, self.request_id
        if isinstance(exc, TimeoutError):
            self.error, self.status = ErrorReason.TIMEOUT, 504
            log.warning("stream of request %s from %s timed out: %s", request_id, attempt.engine.url, exc)
            return error_event(
                f"the answer of {attempt.version} stopped: {exc} (request {request_id})",
                "timeout",
                "deadline_exceeded" if isinstance(exc, DeadlineExceededError) else "upstream_timeout",
            )
        self.error, self.status = ErrorReason.STREAM_ABORTED, 502
        log.warning("stream of request %s from %s broke: %s", request_id, attempt.engine.url, exc)
        return error_event(
            f"the stream of {attempt.version} broke (request {request_id})", "server_error", "stream_aborted"
        )

    def _cancelled(self) -> None:
        # A client that hangs up once it has `[DONE]` (the SDK's streams do) got the whole
        # answer: cancelled only before that.
        if not self.watch.done and self.error is None:
            self.error, self.status = ErrorReason.CLIENT_CANCELLED, 499

    async def aclose(self) -> None:
        """Read the engine's stream to its end if the client has the whole answer (a pushed
        stream may go on after `[DONE]`: its connection is reused only if read whole), else let
        it go at once; record the outcome, once. A
        relay that never started (the client left before the first byte) counts as cancelled by
        the client."""
        if self._pulled is not None:
            pulled, self._pulled = self._pulled, None
            await pulled.aclose()  # type: ignore[attr-defined]
        if self.recorded:
            return
        try:
            # After a whole answer only: a client that left mid-stream lets the engine go at once.
            ended = self._ended
            if ended is not None and not ended.done() and self._written_last and self.error is None:
                await ended  # bounded by the read timeout and the deadline (pipe's timer)
        finally:
            self._record()

    def _record(self) -> None:
        self.recorded = True
        attempt, watch = self.attempt, self.watch
        attempt.finish()
        if not self.started:
            self.error, self.status = ErrorReason.CLIENT_CANCELLED, 499
        answer = watch.answer()
        self.observer.record(
            Outcome(
                route=self.target.route,
                version=attempt.version,
                arm=attempt.arm,
                status=self.status,
                duration_s=time.perf_counter() - watch.start,
                input_text=self.input_text,
                system=self.system,
                answer=answer if self.error is None else None,
                completion_id=watch.completion_id,
                ttft_s=watch.ttft,
                prompt_tokens=watch.usage.prompt_tokens,
                completion_tokens=watch.usage.completion_tokens,
                entropy=watch.entropy.value(),
                error=self.error,
            )
        )
        if self.error is None:
            self.on_answer(answer, watch.completion_id)


def _settle(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
