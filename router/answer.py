"""What the gateway reads of an engine's answer: one typed decode of the fields it needs.

    read_answer(raw)          a whole response or one stream event's payload, decoded by msgspec into
                              `Answer` (id, choices with their text and logprobs, usage); every other
                              field is skipped, not built. Raises ValueError if `raw` is not JSON,
                              returns None if it is JSON of another shape (the caller falls back to
                              a generic parse).
    without_logprobs(raw, a)  the same bytes with every choice's `logprobs` set to null, cut out of the
                              engine's bytes instead of parsing and re-encoding the answer; None when
                              the bytes are not laid out as expected (the caller strips the parsed
                              answer instead).

The cut relies on the engine writing `"logprobs": {...}` right before `"finish_reason"` in each
choice, as vLLM (and OpenAI) do. It is checked on every answer: the cut bytes are decoded again
and must hold the same id, choices, texts and finish reasons, with no logprobs left.
"""

from __future__ import annotations

import msgspec

from monitor.entropy import Logprobs


class _Message(msgspec.Struct):
    content: str | None = None


class Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None  # chat, whole answer
    delta: _Message | None = None  # chat, stream event
    text: str | None = None  # completions
    logprobs: Logprobs | None = None
    finish_reason: str | None = None

    @property
    def content(self) -> str | None:
        if self.text is not None:
            return self.text
        part = self.message or self.delta
        return part.content if part is not None else None


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Answer(msgspec.Struct):
    id: str | None = None
    choices: list[Choice] = []
    usage: Usage | None = None

    def first(self) -> Choice | None:
        """The choice with index 0 (the one monitored), if any."""
        for choice in self.choices:
            if choice.index == 0:
                return choice
        return None


_decoder = msgspec.json.Decoder(Answer)
_LOGPROBS = b'"logprobs":'
_FINISH = b',"finish_reason":'


def read_answer(raw: bytes) -> Answer | None:
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def without_logprobs(raw: bytes, answer: Answer) -> bytes | None:
    if all(c.logprobs is None for c in answer.choices):
        return raw
    parts: list[bytes] = []
    start = 0
    while (key := raw.find(_LOGPROBS, start)) >= 0:
        value = key + len(_LOGPROBS)
        end = raw.find(_FINISH, value)
        if end < 0:
            return None
        span = raw[value:end]
        if span != b"null":
            if not (span.startswith(b"{") and span.endswith(b"}")):
                return None
            parts += (raw[start:value], b"null")
            start = end
        else:
            parts.append(raw[start:end])
            start = end
    parts.append(raw[start:])
    cut = b"".join(parts)
    try:
        check = _decoder.decode(cut)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    same = (
        check.id == answer.id
        and len(check.choices) == len(answer.choices)
        and all(
            c.logprobs is None
            and c.index == a.index
            and c.content == a.content
            and c.finish_reason == a.finish_reason
            for c, a in zip(check.choices, answer.choices, strict=True)
        )
    )
    return cut if same else None
