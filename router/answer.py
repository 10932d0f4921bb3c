"""What the gateway reads of an engine's answer: one typed decode of the fields it needs.

read_answer(raw)          a whole response or one stream event's payload, decoded by msgspec into
                          `Answer` (id, choices with their text, usage); every other field is
                          skipped, not built, and each choice's logprobs are kept as their raw
                          bytes (decoded only if monitoring reads them: Choice.token_logprobs()).
                          Raises ValueError if `raw` is not JSON; None if it is JSON of another
                          shape (the caller falls back to a generic parse).
without_logprobs(raw, a)  the same bytes with every choice's `logprobs` value replaced by null:
                          the exact bytes of each value are known from the decode, so they are
                          cut out instead of parsing and re-encoding the whole answer. None when
                          a value is not found right after its key (the caller strips the
                          parsed answer instead).
"""

from __future__ import annotations

import msgspec

from monitor.entropy import Logprobs

_NULL = b"null"


class _Message(msgspec.Struct, gc=False):
    content: str | None = None


class Choice(msgspec.Struct, gc=False):
    index: int = 0
    message: _Message | None = None  # chat, whole answer
    delta: _Message | None = None  # chat, stream event
    text: str | None = None  # completions
    logprobs: msgspec.Raw = msgspec.Raw(_NULL)

    @property
    def content(self) -> str | None:
        if self.text is not None:
            return self.text
        part = self.message or self.delta
        return part.content if part is not None else None

    @property
    def has_logprobs(self) -> bool:
        return _present(self.logprobs)

    def token_logprobs(self) -> Logprobs | None:
        """The choice's logprobs, typed; None when it has none or they are of another shape."""
        if not self.has_logprobs:
            return None
        try:
            return _logprobs_decoder.decode(self.logprobs)
        except msgspec.ValidationError:
            return None


class Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Answer(msgspec.Struct, gc=False):
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
_logprobs_decoder = msgspec.json.Decoder(Logprobs)
_KEY = b'"logprobs":'


def _present(value: msgspec.Raw) -> bool:
    return not (len(value) == len(_NULL) and bytes(value) == _NULL)


def read_answer(raw: bytes) -> Answer | None:
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def without_logprobs(raw: bytes, answer: Answer) -> bytes | None:
    parts: list[bytes] = []
    start = 0
    for choice in answer.choices:
        if not _present(choice.logprobs):
            continue
        value = bytes(choice.logprobs)
        at = raw.find(_KEY, start) + len(_KEY)
        while at >= len(_KEY) and not raw.startswith(value, at):
            at = raw.find(_KEY, at) + len(_KEY)
        if at < len(_KEY):
            return None
        parts += (raw[start:at], _NULL)
        start = at + len(value)
    if not parts:
        return raw
    parts.append(raw[start:])
    return b"".join(parts)
