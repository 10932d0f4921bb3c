"""Reading and rewriting the engines' OpenAI-shaped answers: the one place that knows their shape.

    read_answer(raw)             a whole response or one stream event's payload, decoded by msgspec
                                 into `Answer` (id, choices with their text, usage); every other
                                 field is skipped, not built, and each choice's logprobs are kept as
                                 their raw bytes (decoded only when monitoring reads them:
                                 Choice.token_logprobs()). Raises ValueError if `raw` is not JSON;
                                 None if it is JSON of another shape (read it as a dict then).
    without_logprobs(raw, a)     the same bytes with every choice's `logprobs` value replaced by
                                 null, cut out of the bytes (their exact extent is known from the
                                 decode) instead of parsing and re-encoding the whole answer. None
                                 when a value is not found right after its key.
    with_logprobs(body, ...)     the request to send upstream, asking for top-k logprobs, and what
                                 the client itself asked for
    strip_logprobs(payload, k)   a parsed answer or stream chunk without the logprobs the gateway
                                 asked for on the client's behalf (or cut to the k it asked for)
    Logprobs, logprob_tokens     a choice's logprobs, typed, and its per-token top-k log-probabilities
                                 (what monitor/entropy.py scores); response_tokens and
                                 choice_tokens read them from a parsed dict
    answer_text, chunk_text      the text of a parsed answer's first choice, of a stream chunk's

Two shapes of logprobs. Chat completions: `choices[0].logprobs.content[i].top_logprobs[j].logprob`.
Completions: `choices[0].logprobs.top_logprobs[i]` is a dict {token: logprob}. A token without top
logprobs (the client asked `top_logprobs: 0`) falls back to its own logprob alone (k = 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import orjson

from monitor.entropy import DEFAULT_TOP_LOGPROBS

_NULL = b"null"
_NO_LOGPROBS = msgspec.Raw(_NULL)  # what `Choice.logprobs` holds when the answer has none


# gc=False: no reference cycles are possible, and untracked objects are cheaper to make.
class TopLogprob(msgspec.Struct, gc=False):
    logprob: float | None = None


class ChatToken(msgspec.Struct, gc=False):
    logprob: float | None = None
    top_logprobs: list[TopLogprob] | None = None


class Logprobs(msgspec.Struct, gc=False):
    """A choice's `logprobs`, chat or completions shape; only the fields the estimator reads."""

    content: list[ChatToken] | None = None  # chat
    token_logprobs: list[float | None] | None = None  # completions
    top_logprobs: list[dict[str, float | None] | None] | None = None  # completions


def logprob_tokens(logprobs: Logprobs | None) -> list[list[float]]:
    """Per generated token, its top-k log-probabilities (chat or completions shape)."""
    tokens: list[list[float]] = []
    if logprobs is None:
        return tokens
    if logprobs.content is not None:
        for item in logprobs.content:
            lps = [t.logprob for t in item.top_logprobs or () if t.logprob is not None]
            if not lps and item.logprob is not None:
                lps = [item.logprob]
            if lps:
                tokens.append(lps)
        return tokens
    own = logprobs.token_logprobs or []
    if logprobs.top_logprobs:
        for i, entry in enumerate(logprobs.top_logprobs):
            if entry:
                lps = [v for v in entry.values() if v is not None]
            else:
                lps = [own[i]] if i < len(own) and own[i] is not None else []  # type: ignore[list-item]
            if lps:
                tokens.append(lps)
        return tokens
    return [[lp] for lp in own if lp is not None]


def _typed_logprobs(choice: Mapping[str, Any]) -> Logprobs | None:
    """A parsed choice's logprobs as the typed view; None when it has none or of another shape."""
    try:
        return msgspec.convert(choice.get("logprobs"), Logprobs | None)
    except msgspec.ValidationError:
        return None


def choice_tokens(choice: Mapping[str, Any]) -> list[list[float]]:
    """Per generated token, the top-k log-probabilities found in one parsed choice (either shape)."""
    return logprob_tokens(_typed_logprobs(choice))


def _first_choice(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    choices = payload.get("choices") or []
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


class _Message(msgspec.Struct, gc=False):
    content: str | None = None


class Choice(msgspec.Struct, gc=False):
    index: int = 0
    message: _Message | None = None  # chat, whole answer
    delta: _Message | None = None  # chat, stream event
    text: str | None = None  # completions
    logprobs: msgspec.Raw = _NO_LOGPROBS

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

    def tokens(self) -> list[list[float]]:
        """Per generated token of this choice, its top-k log-probabilities (none without logprobs)."""
        return logprob_tokens(self.token_logprobs())


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
    return value != _NO_LOGPROBS


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


def response_tokens(response: Mapping[str, Any]) -> list[list[float]]:
    """Per generated token of `choices[0]` (or a stream chunk's), its top-k log-probabilities."""
    choice = _first_choice(response)
    return choice_tokens(choice) if choice is not None else []


def answer_text(data: Mapping[str, Any], chat: bool) -> str | None:
    """The text of a parsed whole answer's first choice."""
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    if chat:
        message = choices[0].get("message") or {}
        content = message.get("content")
        return content if isinstance(content, str) else None
    text = choices[0].get("text")
    return text if isinstance(text, str) else None


def chunk_text(choice: Mapping[str, Any], chat: bool) -> str | None:
    """The text a parsed stream chunk's choice adds."""
    if chat:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        return content if isinstance(content, str) else None
    text = choice.get("text")
    return text if isinstance(text, str) else None


def rewrite_logprobs(raw: bytes, seen: Answer | dict[str, Any], keep_top: int | None) -> bytes:
    """The answer (or stream event) without the logprobs the gateway asked on the client's behalf."""
    if isinstance(seen, Answer) and keep_top is None:
        cut = without_logprobs(raw, seen)
        if cut is not None:
            return cut
    return orjson.dumps(strip_logprobs(seen if isinstance(seen, dict) else orjson.loads(raw), keep_top))


def with_logprobs(
    body: Mapping[str, Any], *, chat: bool, top_k: int = DEFAULT_TOP_LOGPROBS
) -> tuple[dict[str, Any], int | None]:
    """The request body asking the engine for `top_k` logprobs, and what the client asked for.

    The second value is None when the client asked for no logprobs, else the number of top
    logprobs per token it asked for (0 for chat `logprobs: true` alone); pass it to
    `strip_logprobs(..., keep_top=...)` on the way back. The client's own request is never reduced.
    """
    new = dict(body)
    if chat:
        asked = bool(body.get("logprobs"))
        client_top = int(body.get("top_logprobs") or 0) if asked else None
        new["logprobs"] = True
        new["top_logprobs"] = max(top_k, client_top or 0)
    else:
        raw = body.get("logprobs")
        client_top = None if raw is None or raw is False else int(raw)
        new["logprobs"] = max(top_k, client_top or 0)
    return new, client_top


def _logprob_key(value: Any) -> float:
    return -float(value) if value is not None else float("inf")


def _cut_chat(content: Sequence[Any], keep_top: int) -> list[Any]:
    out = []
    for item in content:
        if isinstance(item, Mapping) and isinstance(item.get("top_logprobs"), list):
            top = sorted(item["top_logprobs"], key=lambda t: _logprob_key(t.get("logprob")))
            item = {**item, "top_logprobs": top[:keep_top]}
        out.append(item)
    return out


def _cut_completion(logprobs: Mapping[str, Any], keep_top: int) -> dict[str, Any]:
    tokens = logprobs.get("tokens") or []
    cut = []
    for i, entry in enumerate(logprobs.get("top_logprobs") or []):
        if not isinstance(entry, Mapping):
            cut.append(entry)
            continue
        best = sorted(entry.items(), key=lambda kv: _logprob_key(kv[1]))[:keep_top]
        kept = dict(best)
        # OpenAI's completions logprobs hold the k most likely tokens *and* the chosen one.
        chosen = tokens[i] if i < len(tokens) else None
        if chosen is not None and chosen in entry:
            kept[chosen] = entry[chosen]
        cut.append(kept)
    return {**logprobs, "top_logprobs": cut}


def strip_logprobs(payload: Mapping[str, Any], keep_top: int | None = None) -> dict[str, Any]:
    """A copy of a response or stream chunk without the logprobs the client did not ask for.

    keep_top=None sets every choice's `logprobs` to null (what the API answers when none were
    asked); keep_top=k keeps the per-token logprobs but only the k most likely alternatives
    (completions also keep the chosen token, as OpenAI does). The input is not modified.
    """
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return dict(payload)
    new_choices: list[Any] = []
    for choice in choices:
        if not isinstance(choice, Mapping) or choice.get("logprobs") is None:
            new_choices.append(choice)
            continue
        logprobs = choice["logprobs"]
        if keep_top is None or not isinstance(logprobs, Mapping):
            new_choices.append({**choice, "logprobs": None})
        elif isinstance(logprobs.get("content"), list):
            new_choices.append(
                {**choice, "logprobs": {**logprobs, "content": _cut_chat(logprobs["content"], keep_top)}}
            )
        else:
            new_choices.append({**choice, "logprobs": _cut_completion(logprobs, keep_top)})
    return {**payload, "choices": new_choices}
