"""router/relay.py StreamWatch: what a relayed stream shows, whichever way its events are read."""

from __future__ import annotations

import json
import math

from router.relay import SSEBuffer, StreamWatch


def _event(content: str | None, logprobs: list[float] | None = None, **extra: object) -> bytes:
    delta = {} if content is None else {"content": content}
    choice: dict[str, object] = {"index": 0, "delta": delta}
    if logprobs is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": content,
                    "logprob": logprobs[0],
                    "top_logprobs": [{"logprob": lp} for lp in logprobs],
                }
            ]
        }
    return json.dumps({"id": "chatcmpl-1", "choices": [choice], **extra}).encode()


USAGE = json.dumps(
    {
        "id": "chatcmpl-1",
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
).encode()


def _stream(pieces: list[bytes], watch: StreamWatch, per_chunk: int) -> bytes:
    """The bytes a client gets when the engine's events come `per_chunk` to a read."""
    buffer = SSEBuffer()
    raw = b"".join(b"data: " + p + b"\n\n" for p in pieces)
    out = b""
    events = raw.split(b"\n\n")[:-1]
    for at in range(0, len(events), per_chunk):
        out += watch.relay(buffer.feed(b"\n\n".join(events[at : at + per_chunk]) + b"\n\n"))
    return out


def test_a_stream_shows_its_text_usage_and_entropy_however_its_events_come() -> None:
    lp = [math.log(0.7), math.log(0.2), math.log(0.1)]
    pieces = [
        _event(""),  # the role chunk: no text yet
        _event("card", lp),
        _event("_arr", lp),
        b'{"unexpected": "shape"}',  # JSON of other shapes, passed on as they are
        b'["a list"]',
        _event("ival", lp),
        _event(None, finish_reason="stop"),
        USAGE,
        b"[DONE]",
    ]
    for per_chunk in (1, 3, len(pieces)):
        watch = StreamWatch(chat=True, start=0.0, rewrite=False, keep_top=None, asked_usage=False, top_k=5)
        sent = _stream(pieces, watch, per_chunk)
        assert watch.answer() == "card_arrival", per_chunk
        assert watch.ttft is not None and watch.done
        assert (watch.usage.prompt_tokens, watch.usage.completion_tokens) == (7, 3)
        assert watch.completion_id == "chatcmpl-1"
        assert watch.entropy.tokens == 3
        assert watch.entropy.value() is not None
        assert math.isclose(watch.entropy.value() or 0, -sum(math.exp(x) * x for x in lp), rel_tol=1e-9)
        # Sent as they came, less the usage the client did not ask for.
        assert b'"usage"' not in sent and sent.endswith(b"data: [DONE]\n\n")
        assert sent.count(b"data: ") == len(pieces) - 1


def test_the_usage_is_passed_on_when_the_client_asked_for_it() -> None:
    watch = StreamWatch(chat=True, start=0.0, rewrite=False, keep_top=None, asked_usage=True)
    sent = _stream([_event("a"), _event("b"), USAGE, b"[DONE]"], watch, 1)
    assert b'"prompt_tokens": 7' in sent
    assert watch.answer() == "ab"


def test_sse_payloads_are_the_same_however_the_bytes_are_cut() -> None:
    raw = (
        b"data: " + _event("a") + b"\n\n"
        b"data:" + _event("b") + b"\n\n"  # no space after the colon
        b": a comment\ndata: " + _event("c") + b"\n\n"  # a comment line before the data
        b"data: [DONE]\n\n"
    )
    expected = [_event("a"), _event("b"), _event("c"), b"[DONE]"]
    for size in (1, 7, 64, len(raw)):
        buffer = SSEBuffer()
        got = [p for at in range(0, len(raw), size) for p in buffer.feed(raw[at : at + size])]
        assert got + buffer.close() == expected, size
    one_by_one = SSEBuffer()  # each event whole in its own read: the common case
    events = [b"data: " + p + b"\n\n" for p in expected]
    assert [p for e in events for p in one_by_one.feed(e)] == expected
