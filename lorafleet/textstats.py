"""Text features and the entropy estimator, defined once for training (reference) and monitoring (live).

Training computes a version's reference statistics with these functions and stores them in the
registry; the gateway computes the same features on live traffic and compares. Both sides must use
the same definitions, so they live here, in the shared hand-off package, with no torch.

Entropy estimator (top-k truncation). The engine returns, per generated token, the log-probabilities
of its k most likely tokens. With p_1..p_k their probabilities and r = max(0, 1 - sum p_i) the mass
outside the top k, the token's entropy is estimated as

    H_k = -sum_i p_i ln p_i - r ln r        (nats)

i.e. the remaining mass is lumped into one pseudo-token. This is a lower bound on the true entropy
(spreading r over more tokens can only raise it), exact when the rest of the mass sits on one token,
and needs no vocabulary size. With k >= 5 on a fine-tuned classifier the top-k mass is typically
> 0.99 and the bound is tight. An answer's entropy is the mean of H_k over its tokens.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from lorafleet.registry import Histogram, LabelStats, ReferenceStats

WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
INPUT_WORD_EDGES: tuple[float, ...] = (0, 3, 5, 7, 9, 11, 13, 16, 20, 25, 32, 45, 64)
ENTROPY_EDGES_NATS: tuple[float, ...] = (0, 0.01, 0.03, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
VOCABULARY_SIZE = 300
OTHER_WORD = "<other>"
_NEG_INF = -math.inf


def words(text: str) -> list[str]:
    """Lowercase word tokens of a text (letters and digits, with an apostrophe suffix)."""
    return WORD_RE.findall(text.lower())


def bin_index(value: float, edges: Sequence[float]) -> int:
    """Index of the bin holding `value`: bins are [edges[i], edges[i+1]); the last one is open-ended."""
    if value != value:  # NaN
        return 0
    i = bisect.bisect_right(edges, value) - 1
    return i if i > 0 else 0


def histogram(values: Iterable[float], edges: Sequence[float]) -> Histogram:
    counts = [0] * len(edges)
    for v in values:
        counts[bin_index(v, edges)] += 1
    return Histogram(edges=list(edges), counts=counts)


def token_entropy(top_logprobs: Sequence[float | None], _exp: Any = math.exp, _log: Any = math.log) -> float:
    """H_k of one token from its top-k log-probabilities (natural log); see the module docstring.

    None and -inf (probability 0) add nothing.
    """
    h = 0.0
    total = 0.0
    for lp in top_logprobs:
        if lp is not None and lp > _NEG_INF:
            p = _exp(lp)
            total += p
            h -= p * lp  # p * log(p), with log(p) = lp
    rest = 1.0 - total
    if rest > 1e-12:
        h -= rest * _log(rest)
    return h if h > 0 else 0.0


def mean_entropy(tokens: Sequence[Sequence[float]]) -> float | None:
    """The mean H_k over an answer's tokens; None for an answer with no tokens."""
    if not tokens:
        return None
    return sum(token_entropy(t) for t in tokens) / len(tokens)


def vocabulary(texts: Iterable[str], size: int = VOCABULARY_SIZE) -> dict[str, float]:
    """Shares of the `size` most frequent words; everything else under OTHER_WORD."""
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(words(t))
    total = sum(counts.values())
    if total == 0:
        return {}
    top = dict(counts.most_common(size))
    shares = {w: c / total for w, c in sorted(top.items())}
    rest = total - sum(top.values())
    if rest:
        shares[OTHER_WORD] = rest / total
    return shares


def reference_stats(
    inputs: Sequence[str],
    answers: Sequence[str],
    labels: Sequence[str] | None,
    entropies: Sequence[float] = (),
    system_prompt: str | None = None,
) -> ReferenceStats:
    """Reference statistics of a training set (inputs = the user texts, answers = the targets)."""
    label_stats = None
    if labels:
        counts = Counter(a.strip() for a in answers)
        n = sum(counts.values())
        label_stats = LabelStats(
            labels=list(labels), distribution={lab: counts.get(lab, 0) / n for lab in labels}
        )
    return ReferenceStats(
        examples=len(inputs),
        labels=label_stats,
        input_words=histogram((len(words(t)) for t in inputs), INPUT_WORD_EDGES),
        vocabulary=vocabulary(inputs),
        entropy_nats=histogram(entropies, ENTROPY_EDGES_NATS) if entropies else None,
        system_prompt=system_prompt,
    )


def normalise_answer(text: str) -> str:
    """An answer as compared with a label: surrounding whitespace, quotes and trailing punctuation
    removed, in any order (`"card_arrival".` and `card_arrival.` alike)."""
    before = None
    while text != before:
        before = text
        text = text.strip().strip("\"'`").rstrip(".!;:,")
    return text


@functools.lru_cache(maxsize=256)
def _normalised_labels(labels: tuple[str, ...]) -> dict[str, str]:
    index: dict[str, str] = {}
    for label in labels:
        index.setdefault(normalise_answer(label).lower(), label)
    return index


def match_label(answer: str, labels: Iterable[str]) -> str | None:
    """The label an answer names (exactly, after normalisation, case-insensitively), else None.

    The first of several labels that normalise alike wins. The normalised label set is cached:
    the gateway matches every answer against the same few sets.
    """
    return _normalised_labels(tuple(labels)).get(normalise_answer(answer).lower())
