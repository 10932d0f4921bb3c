"""An answer's mean token entropy from the logprobs of an OpenAI-shaped response, and logprob hygiene.

    with_logprobs(body, chat=...)      the request to send upstream (asks for top-k logprobs) and
                                       what the client itself asked for
    response_entropy(response, k)      mean H_k of choices[0] of a whole parsed response
    EntropyAccumulator                 the same, chunk by chunk, for an SSE stream
    Logprobs, logprob_tokens           the typed view of a choice's logprobs (decoded by msgspec
                                       straight from the engine's bytes: router/answer.py) and its
                                       per-token top-k log-probabilities
    EntropySampler                     which requests ask for logprobs: a share of them, and per
                                       version about `max_per_s` a second at most
    strip_logprobs(payload, keep_top)  remove (or cut down to what the client asked) the logprobs the
                                       gateway asked for on the client's behalf; works on responses
                                       and stream chunks alike

Two shapes are read. Chat completions: `choices[0].logprobs.content[i].top_logprobs[j].logprob`.
Completions: `choices[0].logprobs.top_logprobs[i]` is a dict {token: logprob}. A token without
top logprobs (the client asked `top_logprobs: 0`) falls back to its own logprob alone (k = 1).
The estimator itself is `lorafleet.textstats.token_entropy` (see docs/monitoring.md).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from lorafleet.textstats import token_entropy

DEFAULT_TOP_LOGPROBS = 5


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


def choice_token_logprobs(choice: Mapping[str, Any]) -> list[list[float]]:
    """Per generated token, the top-k log-probabilities found in one parsed choice (either shape)."""
    return logprob_tokens(_typed_logprobs(choice))


def _first_choice(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    choices = payload.get("choices") or []
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


class EntropyAccumulator:
    """Mean token entropy of one answer, fed piece by piece (stream chunks) or at once."""

    def __init__(self, top_k: int | None = None) -> None:
        """`top_k`: score only each token's k most likely alternatives, so that every answer is
        scored at the same k (completions list the chosen token beside its top k; a client may
        have asked for more alternatives than the gateway's k)."""
        self._top_k = top_k
        self._sum = 0.0
        self._tokens = 0

    def add(self, logprobs: Logprobs | None) -> None:
        """Add the tokens of one choice's logprobs."""
        k = self._top_k
        for lps in logprob_tokens(logprobs):
            if k and len(lps) > k:
                lps = sorted(lps, reverse=True)[:k]
            self._sum += token_entropy(lps)
            self._tokens += 1

    def add_chunk(self, choice: Mapping[str, Any]) -> None:
        """Add the tokens of one parsed choice object (a stream chunk's `choices[i]`, or a whole response's)."""
        self.add(_typed_logprobs(choice))

    def add_stream_chunk(self, chunk: Mapping[str, Any]) -> None:
        """Add a parsed SSE chunk: its choice with index 0, if any (a usage chunk has none)."""
        choice = _first_choice(chunk)
        if choice is not None:
            self.add_chunk(choice)

    @property
    def tokens(self) -> int:
        return self._tokens

    def value(self) -> float | None:
        """Mean H_k in nats over the tokens seen; None when no token carried logprobs."""
        return self._sum / self._tokens if self._tokens else None


def response_entropy(response: Mapping[str, Any], top_k: int | None = None) -> float | None:
    """Mean token entropy (nats) of `choices[0]` of a whole chat or completions response."""
    acc = EntropyAccumulator(top_k)
    acc.add_stream_chunk(response)
    return acc.value()


class EntropySampler:
    """Which requests ask the engine for logprobs (and so get an entropy).

    `percent` of all requests are eligible. Of those, each version's are all scored up to about
    `max_per_s` a second (0: no limit): beyond, each is scored with probability max_per_s / the
    version's eligible requests of the second before, and never more than twice `max_per_s` in
    one second (a version whose traffic jumps). Scoring costs the gateway CPU per generated token (the engine's answer grows ~10x);
    an entropy mean, histogram or drift window gains little from more than a few dozen answers a
    second, while a quiet canary still has every answer scored.
    """

    def __init__(
        self,
        percent: int = 100,
        max_per_s: int = 0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.percent = percent
        self.max_per_s = max_per_s
        self.rng = rng or random.Random()
        self.clock = clock
        # version -> [second, eligible requests in it, scored in it, probability for it]
        self._seconds: dict[str, list[Any]] = {}

    def sample(self, version: str) -> bool:
        if self.percent < 100 and (self.percent == 0 or self.rng.randrange(100) >= self.percent):
            return False
        limit = self.max_per_s
        if not limit:
            return True
        second = int(self.clock())
        state = self._seconds.get(version)
        if state is None or state[0] != second:
            before = state[1] if state is not None and state[0] == second - 1 else 0
            state = self._seconds[version] = [second, 0, 0, min(1.0, limit / before) if before else 1.0]
        state[1] += 1
        if state[2] >= 2 * limit or (state[3] < 1.0 and self.rng.random() >= state[3]):
            return False
        state[2] += 1
        return True


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
