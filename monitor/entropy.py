"""An answer's mean token entropy from its per-token top-k log-probabilities, and which answers are scored.

    EntropyAccumulator   mean H_k over an answer's tokens, fed all at once or stream chunk by chunk
                         (the log-probabilities as router/answer.py reads them from the engine)
    EntropySampler       which requests ask for logprobs: a share of them, and per version about
                         `max_per_s` a second at most

The estimator itself is `lorafleet.textstats.token_entropy` (see docs/monitoring.md).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lorafleet.textstats import token_entropy

DEFAULT_TOP_LOGPROBS = 5


class EntropyAccumulator:
    """Mean token entropy of one answer, fed piece by piece (stream chunks) or at once."""

    def __init__(self, top_k: int | None = None) -> None:
        """`top_k`: score only each token's k most likely alternatives, so that every answer is
        scored at the same k (completions list the chosen token beside its top k; a client may
        have asked for more alternatives than the gateway's k)."""
        self._top_k = top_k
        self._sum = 0.0
        self._tokens = 0

    def add(self, tokens: Iterable[Sequence[float]]) -> None:
        """Add tokens, each given by its top-k log-probabilities."""
        k = self._top_k
        for lps in tokens:
            if k and len(lps) > k:
                lps = sorted(lps, reverse=True)[:k]
            self._sum += token_entropy(lps)
            self._tokens += 1

    @property
    def tokens(self) -> int:
        return self._tokens

    def value(self) -> float | None:
        """Mean H_k in nats over the tokens seen; None when no token carried logprobs."""
        return self._sum / self._tokens if self._tokens else None


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
