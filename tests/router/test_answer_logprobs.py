"""The logprobs of OpenAI-shaped answers and streams as monitoring scores them, asked for on the
client's behalf, and removed again where the client did not ask for them."""

import copy
import json
import math
from collections.abc import Mapping
from typing import Any

import pytest

from lorafleet.textstats import token_entropy
from monitor.entropy import EntropyAccumulator
from router.answer import choice_tokens, response_tokens, strip_logprobs, with_logprobs


def response_entropy(response: Mapping[str, Any], top_k: int | None = None) -> float | None:
    acc = EntropyAccumulator(top_k)
    acc.add(response_tokens(response))
    return acc.value()


LN = math.log
# Token 1: top-3 probabilities 0.5, 0.25, 0.25 -> H = 1.5 ln 2 (no mass left over).
# Token 2: top-1 probability 0.9 -> H = -0.9 ln 0.9 - 0.1 ln 0.1 (the rest lumped into one token).
H1 = 1.5 * LN(2)
H2 = -0.9 * LN(0.9) - 0.1 * LN(0.1)


def _chat_token(token: str, top: list[tuple[str, float]]) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": LN(top[0][1]),
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": LN(p), "bytes": list(t.encode())} for t, p in top],
    }


def chat_response() -> dict[str, Any]:
    """The shape vLLM answers /v1/chat/completions with `logprobs: true, top_logprobs: 3`."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "banking-v1-20261124",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "card_arrival"},
                "logprobs": {
                    "content": [
                        _chat_token("card", [("card", 0.5), ("pin", 0.25), ("top", 0.25)]),
                        _chat_token("_arrival", [("_arrival", 0.9)]),
                    ]
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
    }


def completion_response() -> dict[str, Any]:
    """The shape of /v1/completions with `logprobs: 3`: top logprobs as {token: logprob} dicts."""
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [
            {
                "index": 0,
                "text": "card_arrival",
                "logprobs": {
                    "tokens": ["card", "_arrival"],
                    "token_logprobs": [LN(0.5), LN(0.9)],
                    "text_offset": [0, 4],
                    "top_logprobs": [
                        {"card": LN(0.5), "pin": LN(0.25), "top": LN(0.25)},
                        {"_arrival": LN(0.9)},
                    ],
                },
                "finish_reason": "stop",
            }
        ],
    }


def test_chat_response_entropy_is_the_mean_of_the_token_estimates() -> None:
    assert response_entropy(chat_response()) == pytest.approx((H1 + H2) / 2)
    assert token_entropy([LN(0.5), LN(0.25), LN(0.25)]) == pytest.approx(H1)


def test_completion_response_entropy_reads_the_dict_shape() -> None:
    assert response_entropy(completion_response()) == pytest.approx((H1 + H2) / 2)


def test_every_token_is_scored_at_the_same_k() -> None:
    """Completions list the chosen token beside its top k; a client may ask for more than k."""
    response = completion_response()
    top = response["choices"][0]["logprobs"]["top_logprobs"]
    top[0]["rare"] = LN(0.001)  # the sampled token, outside the top 3
    top[1]["second"] = LN(0.05)
    # k = 3 keeps token 1 as it was; token 2, with its k = 3 top alternatives 0.9 and 0.05.
    h2 = -0.9 * LN(0.9) - 0.05 * LN(0.05) - 0.05 * LN(0.05)
    assert response_entropy(response, top_k=3) == pytest.approx((H1 + h2) / 2)
    assert response_entropy(response, top_k=1) == pytest.approx((-0.5 * LN(0.5) * 2 + H2) / 2)


def test_tokens_without_top_logprobs_fall_back_to_their_own_logprob() -> None:
    response = chat_response()
    for token in response["choices"][0]["logprobs"]["content"]:
        token["top_logprobs"] = []
    # k = 1: token 1 has p = 0.5 -> H = ln 2; token 2 as before.
    assert response_entropy(response) == pytest.approx((LN(2) + H2) / 2)


def test_no_logprobs_means_no_entropy() -> None:
    response = chat_response()
    response["choices"][0]["logprobs"] = None
    assert response_entropy(response) is None
    assert response_entropy({"choices": []}) is None


def _chat_stream(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE chunks vLLM sends for the same answer: role, one chunk per token, finish, usage."""
    tokens = response["choices"][0]["logprobs"]["content"]
    chunks: list[dict[str, Any]] = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"role": "assistant"}}],
        }
    ]
    for tok in tokens:
        chunks.append(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": tok["token"]}, "logprobs": {"content": [tok]}}],
            }
        )
    chunks.append(
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]}
    )
    chunks.append({"id": "c", "choices": [], "usage": {"completion_tokens": len(tokens)}})
    return chunks


def test_stream_accumulates_to_the_same_entropy_as_the_whole_response() -> None:
    acc = EntropyAccumulator()
    assert acc.value() is None
    for chunk in _chat_stream(chat_response()):
        # Over the wire and back, as the gateway sees it.
        acc.add(response_tokens(json.loads(json.dumps(chunk))))
    assert acc.tokens == 2
    assert acc.value() == pytest.approx(response_entropy(chat_response()))


def test_completion_stream_chunks() -> None:
    whole = completion_response()["choices"][0]["logprobs"]
    acc = EntropyAccumulator()
    for i in range(2):
        acc.add(
            choice_tokens(
                {
                    "index": 0,
                    "text": whole["tokens"][i],
                    "logprobs": {
                        "tokens": [whole["tokens"][i]],
                        "token_logprobs": [whole["token_logprobs"][i]],
                        "top_logprobs": [whole["top_logprobs"][i]],
                    },
                }
            )
        )
    assert acc.value() == pytest.approx((H1 + H2) / 2)


def test_with_logprobs_asks_the_engine_and_remembers_what_the_client_asked() -> None:
    body = {"model": "banking", "messages": [{"role": "user", "content": "hi"}]}
    sent, asked = with_logprobs(body, chat=True, top_k=5)
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5
    assert asked is None
    assert "logprobs" not in body  # the caller's body is left alone
    assert with_logprobs({**body, "logprobs": True}, chat=True)[1] == 0
    sent, asked = with_logprobs({**body, "logprobs": True, "top_logprobs": 8}, chat=True, top_k=5)
    assert (sent["top_logprobs"], asked) == (8, 8)
    sent, asked = with_logprobs({"prompt": "x"}, chat=False, top_k=5)
    assert (sent["logprobs"], asked) == (5, None)
    sent, asked = with_logprobs({"prompt": "x", "logprobs": 2}, chat=False, top_k=5)
    assert (sent["logprobs"], asked) == (5, 2)


def test_strip_logprobs_removes_what_the_client_did_not_ask_for() -> None:
    response = chat_response()
    original = copy.deepcopy(response)
    stripped = strip_logprobs(response)
    assert stripped["choices"][0]["logprobs"] is None
    assert stripped["choices"][0]["message"] == response["choices"][0]["message"]
    assert stripped["usage"] == response["usage"]
    assert response == original  # a copy, the input untouched
    for chunk in _chat_stream(chat_response()):
        assert all(c.get("logprobs") is None for c in strip_logprobs(chunk)["choices"])


def test_strip_logprobs_keeps_what_the_client_asked_for() -> None:
    chat = strip_logprobs(chat_response(), keep_top=1)
    content = chat["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["card", "_arrival"]
    assert [[a["token"] for a in t["top_logprobs"]] for t in content] == [["card"], ["_arrival"]]
    assert (
        strip_logprobs(chat_response(), keep_top=0)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        == []
    )

    completion = completion_response()
    # The chosen token is not the most likely one here: OpenAI keeps it beside the top k.
    completion["choices"][0]["logprobs"]["tokens"][0] = "pin"
    cut = strip_logprobs(completion, keep_top=1)["choices"][0]["logprobs"]
    assert cut["top_logprobs"][0] == {"card": LN(0.5), "pin": LN(0.25)}
    assert cut["top_logprobs"][1] == {"_arrival": LN(0.9)}
    assert cut["tokens"] == ["pin", "_arrival"]


def test_choice_without_logprobs_has_no_tokens() -> None:
    assert choice_tokens({"index": 0, "message": {"content": "x"}}) == []
