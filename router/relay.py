"""The stream relay: an engine's SSE events passed on as they come, watched, and ended by the deadline.

    relay(...)        the client's byte stream: each engine event as the client gets it (logprobs
                      it did not ask for removed, usage only if asked); an engine that breaks or a
                      deadline that passes ends it with an error event and `[DONE]`; the outcome
                      is recorded once, however it ends
    StreamWatch       what a stream has shown so far: text, first-token time, usage, entropy
    SSEBuffer, sse    `data:` payloads out of a byte stream, and one event's bytes

The events of one chunk from the engine leave in one write: as many sends as the engine's.
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


async def relay(
    attempt: Attempt,
    target: Target,
    watch: StreamWatch,
    observer: Observer,
    input_text: str,
    system: str | None,
    request_id: str,
    on_answer: Callable[[str, str | None], None],
) -> AsyncIterator[bytes]:
    """Pass an engine's SSE stream on as it comes, observing it; end it cleanly on failure or at
    the request's deadline. `on_answer(text, completion_id)` runs after a complete answer."""
    events = SSEBuffer()
    error: ErrorReason | None = None
    status = 200
    try:
        # The transport's reads stop at the request's deadline: no timer of our own per chunk.
        async for raw in attempt.response.iter_any():
            out = watch.relay(events.feed(raw))
            if out:
                yield out
        out = watch.relay(events.close())
        if out:
            yield out
    except TimeoutError as exc:
        error, status = ErrorReason.TIMEOUT, 504
        log.warning("stream of request %s from %s timed out: %s", request_id, attempt.engine.url, exc)
        yield error_event(
            f"the answer of {attempt.version} stopped: {exc} (request {request_id})",
            "timeout",
            "deadline_exceeded" if isinstance(exc, DeadlineExceededError) else "upstream_timeout",
        )
    except UPSTREAM_ERRORS as exc:
        error, status = ErrorReason.STREAM_ABORTED, 502
        log.warning("stream of request %s from %s broke: %s", request_id, attempt.engine.url, exc)
        yield error_event(
            f"the stream of {attempt.version} broke (request {request_id})", "server_error", "stream_aborted"
        )
    except (asyncio.CancelledError, GeneratorExit):
        # A client that hangs up once it has `[DONE]` (the SDK's streams do) got the whole
        # answer: cancelled only before that.
        if not watch.done:
            error, status = ErrorReason.CLIENT_CANCELLED, 499
        raise
    finally:
        attempt.finish()
        answer = watch.answer()
        observer.record(
            Outcome(
                route=target.route,
                version=attempt.version,
                arm=attempt.arm,
                status=status,
                duration_s=time.perf_counter() - watch.start,
                input_text=input_text,
                system=system,
                answer=answer if error is None else None,
                completion_id=watch.completion_id,
                ttft_s=watch.ttft,
                prompt_tokens=watch.usage.prompt_tokens,
                completion_tokens=watch.usage.completion_tokens,
                entropy=watch.entropy.value(),
                error=error,
            )
        )
        if error is None:
            on_answer(answer, watch.completion_id)


def abandoned(attempt: Attempt, target: Target, observer: Observer, start: float) -> None:
    """After a stream's response: if its relay never ran (the client left before the first
    byte), give the engine's stream back and count the request as cancelled by the client."""
    if attempt.finish():
        observer.record(
            Outcome(
                target.route,
                attempt.version,
                attempt.arm,
                499,
                time.perf_counter() - start,
                error=ErrorReason.CLIENT_CANCELLED,
            )
        )
