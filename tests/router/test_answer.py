"""Reading an engine's answer once, typed, and cutting the logprobs out of its bytes."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import orjson
import pytest

from monitor.entropy import EntropyAccumulator
from router.answer import read_answer, response_tokens, strip_logprobs, without_logprobs
from router.relay import SSEBuffer

TOKEN = {
    "token": "card",
    "logprob": -0.1,
    "bytes": [99, 97, 114, 100],
    "top_logprobs": [
        {"token": '"},"finish_reason":"x', "logprob": -0.1, "bytes": [1]},
        {"token": "p", "logprob": -3},
    ],
}


def _chat(
    n: int = 1, logprobs: Any = None, order: tuple[str, ...] = ("message", "logprobs", "finish_reason")
) -> bytes:
    def choice(i: int) -> dict[str, Any]:
        fields = {
            "message": {"role": "assistant", "content": f"card_arrival {i}"},
            "logprobs": logprobs,
            "finish_reason": "stop",
        }
        return {"index": i, **{k: fields[k] for k in order}, "stop_reason": None}

    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [choice(i) for i in range(n)],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        "prompt_logprobs": None,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def test_the_typed_read_gives_what_the_gateway_monitors() -> None:
    answer = read_answer(_chat(logprobs={"content": [TOKEN]}))
    assert answer is not None
    first = answer.first()
    assert first is not None and first.content == "card_arrival 0"
    assert answer.id == "chatcmpl-1" and answer.usage is not None and answer.usage.prompt_tokens == 9
    logprobs = first.token_logprobs()
    assert logprobs is not None and logprobs.content is not None and len(logprobs.content) == 1


def test_not_json_is_an_error_and_another_shape_is_none() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        read_answer(b"<html>")
    assert read_answer(b"[1, 2]") is None
    assert read_answer(b'{"choices": "none"}') is None


@pytest.mark.parametrize("n", [1, 3])
def test_the_cut_equals_parsing_and_stripping(n: int) -> None:
    raw = _chat(n, logprobs={"content": [TOKEN, TOKEN]})
    answer = read_answer(raw)
    assert answer is not None
    cut = without_logprobs(raw, answer)
    assert cut is not None
    assert orjson.loads(cut) == strip_logprobs(orjson.loads(raw))


def test_an_answer_without_logprobs_is_passed_as_it_is() -> None:
    raw = _chat()
    answer = read_answer(raw)
    assert answer is not None and without_logprobs(raw, answer) is raw


def test_any_key_order_is_cut_exactly() -> None:
    raw = _chat(2, logprobs={"content": [TOKEN]}, order=("logprobs", "message", "finish_reason"))
    answer = read_answer(raw)
    assert answer is not None
    cut = without_logprobs(raw, answer)
    assert cut is not None and orjson.loads(cut) == strip_logprobs(orjson.loads(raw))


def test_bytes_laid_out_otherwise_are_left_to_the_generic_path() -> None:
    raw = json.dumps(json.loads(_chat(logprobs={"content": [TOKEN]}))).encode()  # ": " with a space
    answer = read_answer(raw)
    assert answer is not None and without_logprobs(raw, answer) is None


def test_completions_shape() -> None:
    logprobs = {
        "tokens": ["a"],
        "token_logprobs": [-0.1],
        "text_offset": [0],
        "top_logprobs": [{"a": -0.1, "b": -3}],
    }
    body = {
        "id": "cmpl-1",
        "choices": [{"index": 0, "text": "a", "logprobs": logprobs, "finish_reason": "length"}],
    }
    raw = orjson.dumps(body)
    answer = read_answer(raw)
    assert answer is not None and answer.choices[0].content == "a"
    cut = without_logprobs(raw, answer)
    assert cut is not None and orjson.loads(cut) == strip_logprobs(body)


@pytest.mark.engine
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_the_cut_applies_to_the_real_engines_answers(engine: Any, endpoint: str, stream: bool) -> None:
    """vLLM writes logprobs right before finish_reason, so its answers take the fast path, and the
    result is what parsing and stripping would give."""
    body: dict[str, Any] = {"model": "base", "max_tokens": 4, "n": 2, "temperature": 0.7, "stream": stream}
    if endpoint == "chat/completions":
        body |= {
            "messages": [{"role": "user", "content": "Where is my card?"}],
            "logprobs": True,
            "top_logprobs": 5,
        }
    else:
        body |= {"prompt": "Where is my card?", "logprobs": 5}
    if stream:
        body["stream_options"] = {"include_usage": True}
    raw = httpx.post(f"{engine.url}/v1/{endpoint}", json=body, timeout=120).content
    payloads = [p for p in SSEBuffer().feed(raw) if p != b"[DONE]"] if stream else [raw]
    assert payloads
    for payload in payloads:
        answer = read_answer(payload)
        assert answer is not None, payload[:300]
        cut = without_logprobs(payload, answer)
        assert cut is not None, payload[:300]
        assert orjson.loads(cut) == strip_logprobs(orjson.loads(payload))
    if not stream:
        answer = read_answer(raw)
        assert answer is not None
        first = answer.first()
        assert first is not None and first.has_logprobs
        acc, whole = EntropyAccumulator(), EntropyAccumulator()
        acc.add(first.tokens())
        whole.add(response_tokens(orjson.loads(raw)))
        assert acc.value() == pytest.approx(whole.value())


def _random_answer(rng: random.Random) -> dict[str, Any]:
    """An answer of random shape: choices with fields in any order, tokens with quotes, escapes and
    the key's own spelling inside strings, logprobs null or not."""
    nasty = ['"logprobs":{', '\\"', "}", '"},"finish_reason":"', "ü", "\n", '"logprobs":null']

    def text() -> str:
        return "".join(rng.choice([*nasty, "a", "b", " "]) for _ in range(rng.randrange(6)))

    def logprobs() -> dict[str, Any] | None:
        if rng.random() < 0.3:
            return None
        tokens = [
            {
                "token": text(),
                "logprob": -rng.random() * 5,
                "bytes": [rng.randrange(256) for _ in range(rng.randrange(3))],
                "top_logprobs": [
                    {"token": text(), "logprob": -rng.random() * 9} for _ in range(rng.randrange(4))
                ],
            }
            for _ in range(rng.randrange(4))
        ]
        return {"content": tokens}

    choices = []
    for i in range(rng.randrange(4)):
        fields = [
            ("index", i),
            ("message", {"role": "assistant", "content": text()}),
            ("logprobs", logprobs()),
            ("finish_reason", rng.choice(["stop", "length", None])),
            ("stop_reason", None),
        ]
        rng.shuffle(fields)
        choices.append(dict(fields))
    body = [("id", "chatcmpl-" + text()), ("choices", choices), ("usage", {"prompt_tokens": 3})]
    rng.shuffle(body)
    return dict(body)


def test_the_cut_of_random_answers_equals_parsing_and_stripping_or_is_refused() -> None:
    rng = random.Random(7)
    cut_count = 0
    for _ in range(2000):
        answer = _random_answer(rng)
        spaced = rng.random() < 0.2
        raw = json.dumps(answer).encode() if spaced else orjson.dumps(answer)
        typed = read_answer(raw)
        assert typed is not None
        cut = without_logprobs(raw, typed)
        if cut is None:
            assert spaced  # only bytes laid out otherwise are left to the generic path
            continue
        cut_count += 1
        assert orjson.loads(cut) == strip_logprobs(answer)
    assert cut_count > 1000
