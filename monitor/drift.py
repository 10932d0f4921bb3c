"""Drift of live traffic against a version's reference statistics.

    psi(reference, live)        population stability index of two aligned distributions
    js_distance(p, q)           Jensen-Shannon distance, base 2 (0..1)
    DriftWindow(reference)      the last N requests of one version, scored per DriftFeature
    DriftScore                  psi, js_distance, n (+ level: none / moderate / significant)

Features (the definitions are lorafleet.textstats', shared with training):
    input_length      words per input, over the reference histogram's edges
    input_vocabulary  input words over the reference's VOCABULARY_DRIFT_WORDS most frequent words,
                      everything else in one OTHER_WORD bucket; counted per word
    predicted_label   answers over the reference label set plus an 'other' bucket (answers naming
                      no label); only when the reference has labels
    entropy           mean token entropy of answers over the reference histogram's edges; only
                      when the reference has one

Sampling noise. PSI and JS are biased upwards by finite samples: without any drift, PSI is about
(bins - 1) * (1/n_live + 1/n_reference). Hence two choices, measured on BANKING77 (docs/monitoring.md):
only the reference's 50 most frequent words are vocabulary bins, not the 300 it stores (held-out
queries of the training intents scored a vocabulary JS distance of 0.16 over 301 bins, 0.05 over
51, while other intents scored 0.25); and no score before min_samples = 200 requests (at 100, a
13-bin input length against a 600-example reference crossed PSI 0.2 in 30% of drift-free windows).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lorafleet.registry import Histogram, ReferenceStats
from lorafleet.textstats import OTHER_WORD, bin_index, match_label, words
from monitor.metrics import DriftFeature, Metrics

PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.2
JS_THRESHOLD = 0.1
DEFAULT_WINDOW = 500
DEFAULT_MIN_SAMPLES = 200
VOCABULARY_DRIFT_WORDS = 50
PSI_EPS = 1e-4


class DriftLevel(enum.StrEnum):
    NONE = "none"
    MODERATE = "moderate"
    SIGNIFICANT = "significant"


def psi_level(value: float) -> DriftLevel:
    """The common reading of a PSI: < 0.1 none, 0.1-0.2 moderate, >= 0.2 significant."""
    if value >= PSI_SIGNIFICANT:
        return DriftLevel.SIGNIFICANT
    if value >= PSI_MODERATE:
        return DriftLevel.MODERATE
    return DriftLevel.NONE


@dataclass(frozen=True)
class DriftScore:
    psi: float
    js_distance: float
    n: int

    @property
    def level(self) -> DriftLevel:
        return psi_level(self.psi)

    @property
    def js_over_threshold(self) -> bool:
        """JS distance at or above 0.1 (Evidently's default); stricter than PSI >= 0.2, see the docs."""
        return self.js_distance >= JS_THRESHOLD


def _distribution(values: Sequence[float], name: str) -> list[float]:
    if not values:
        raise ValueError(f"`{name}` is empty")
    if any(v < 0 or math.isnan(v) for v in values):
        raise ValueError(f"`{name}` has a negative or NaN entry: {list(values)}")
    total = float(sum(values))
    if total <= 0:
        raise ValueError(f"`{name}` sums to 0")
    return [v / total for v in values]


def _check_aligned(p: Sequence[float], q: Sequence[float]) -> None:
    if len(p) != len(q):
        raise ValueError(f"distributions must be aligned: {len(p)} bins against {len(q)}")


def psi(reference: Sequence[float], live: Sequence[float], eps: float = PSI_EPS) -> float:
    """Population stability index sum((l - r) ln(l / r)) of two aligned distributions.

    Inputs are normalised (counts are fine); bins below `eps` are raised to it and both vectors
    renormalised, so an empty bin costs a bounded amount instead of infinity.
    """
    _check_aligned(reference, live)
    if eps <= 0:
        raise ValueError(f"`eps` should be positive, got {eps}")
    r = _distribution([max(v, eps) for v in _distribution(reference, "reference")], "reference")
    q = _distribution([max(v, eps) for v in _distribution(live, "live")], "live")
    return max(0.0, sum((b - a) * math.log(b / a) for a, b in zip(r, q, strict=True)))


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance in base 2: sqrt of the JS divergence, 0 (same) to 1 (disjoint).

    No smoothing is needed: the mixture is positive wherever either side is, and 0 log 0 = 0.
    """
    _check_aligned(p, q)
    a = _distribution(p, "p")
    b = _distribution(q, "q")
    div = 0.0
    for x, y in zip(a, b, strict=True):
        m = (x + y) / 2
        if x > 0:
            div += 0.5 * x * math.log2(x / m)
        if y > 0:
            div += 0.5 * y * math.log2(y / m)
    return min(1.0, math.sqrt(max(0.0, div)))


class _Counts:
    """Live counts over fixed bins with the reference distribution they are compared with."""

    def __init__(self, reference: list[float]) -> None:
        self.reference = reference
        self.counts = [0] * len(reference)
        self.n = 0  # requests that contributed

    def score(self) -> DriftScore:
        return DriftScore(psi(self.reference, self.counts), js_distance(self.reference, self.counts), self.n)


def _histogram_reference(h: Histogram) -> list[float] | None:
    return [float(c) for c in h.counts] if sum(h.counts) > 0 else None


# One request in the window: (length bin, word bins, label bin or -1).
_Observation = tuple[int, tuple[int, ...], int]


class DriftWindow:
    """The last `size` requests of one version, with counters kept up to date on every observe.

    `observe` is O(words of the request) and `scores` O(bins), whatever the window size. A feature
    is scored once at least `min_samples` (default: 200, or `size` if smaller) requests of the
    window contributed to it. Entropy has its own window, of the last `size` answers that carried
    one: the gateway scores the entropy of only some answers of a busy version (`entropy_max_per_s`),
    and those must not be diluted among the requests it did not score. Not thread-safe: one window per (route, version), fed from the
    gateway's event loop.
    """

    def __init__(
        self,
        reference: ReferenceStats,
        size: int = DEFAULT_WINDOW,
        *,
        min_samples: int | None = None,
        vocabulary_words: int = VOCABULARY_DRIFT_WORDS,
    ) -> None:
        if size < 1:
            raise ValueError(f"`size` should be at least 1, got {size}")
        if min_samples is None:
            min_samples = min(DEFAULT_MIN_SAMPLES, size)
        if not 1 <= min_samples <= size:
            raise ValueError(f"`min_samples` should be between 1 and size={size}, got {min_samples}")
        self.size = size
        self.min_samples = min_samples
        self._window: deque[_Observation] = deque()
        self._entropy_window: deque[int] = deque()  # entropy bins of the last `size` scored answers
        self._features: dict[DriftFeature, _Counts] = {}

        self._length_edges = list(reference.input_words.edges)
        length_ref = _histogram_reference(reference.input_words)
        if length_ref is not None:
            self._features[DriftFeature.INPUT_LENGTH] = _Counts(length_ref)

        top = sorted(
            (w for w in reference.vocabulary if w != OTHER_WORD), key=lambda w: (-reference.vocabulary[w], w)
        )
        top = top[:vocabulary_words]
        self._word_index = {w: i for i, w in enumerate(top)}
        if top:
            shares = [reference.vocabulary[w] for w in top]
            shares.append(max(0.0, 1.0 - sum(shares)))  # the OTHER_WORD bucket, last
            self._features[DriftFeature.INPUT_VOCABULARY] = _Counts(shares)

        self._labels: list[str] = []
        if reference.labels is not None and reference.labels.labels:
            self._labels = list(reference.labels.labels)
            dist = [reference.labels.distribution.get(lab, 0.0) for lab in self._labels]
            dist.append(max(0.0, 1.0 - sum(dist)))  # the 'other' bucket, last
            if sum(dist) > 0:
                self._features[DriftFeature.PREDICTED_LABEL] = _Counts(dist)
        self._label_index = {lab: i for i, lab in enumerate(self._labels)}

        self._entropy_edges: list[float] = []
        if reference.entropy_nats is not None:
            entropy_ref = _histogram_reference(reference.entropy_nats)
            if entropy_ref is not None:
                self._entropy_edges = list(reference.entropy_nats.edges)
                self._features[DriftFeature.ENTROPY] = _Counts(entropy_ref)

        f = self._features
        self._length = f.get(DriftFeature.INPUT_LENGTH)
        self._vocabulary = f.get(DriftFeature.INPUT_VOCABULARY)
        self._label = f.get(DriftFeature.PREDICTED_LABEL)
        self._entropy = f.get(DriftFeature.ENTROPY)

    @property
    def features(self) -> list[DriftFeature]:
        """The features this reference allows to score."""
        return list(self._features)

    def __len__(self) -> int:
        return len(self._window)

    def _label_bin(self, predicted_label: str | None) -> int:
        other = len(self._labels)
        if predicted_label is None:
            return other
        index = self._label_index.get(predicted_label)
        if index is None:
            matched = match_label(predicted_label, self._labels)
            index = self._label_index[matched] if matched is not None else other
        return index

    def observe(self, input_text: str, predicted_label: str | None, entropy: float | None) -> None:
        """Add one request: the user's input, the label its answer named (None: no label), its entropy.

        `predicted_label` is ignored when the reference has no labels; None or a text that names
        no label counts as 'other'. `entropy` None (no logprobs) leaves the entropy feature out.
        """
        tokens = words(input_text)
        other_word = len(self._word_index)
        index = self._word_index.get
        obs = (
            bin_index(len(tokens), self._length_edges),
            tuple([index(w, other_word) for w in tokens]),
            self._label_bin(predicted_label) if self._labels else -1,
        )
        self._apply(obs, +1)
        self._window.append(obs)
        if len(self._window) > self.size:
            self._apply(self._window.popleft(), -1)
        if (c := self._entropy) is not None and entropy is not None and math.isfinite(entropy):
            entropy_bin = bin_index(entropy, self._entropy_edges)
            c.counts[entropy_bin] += 1
            c.n += 1
            self._entropy_window.append(entropy_bin)
            if len(self._entropy_window) > self.size:
                c.counts[self._entropy_window.popleft()] -= 1
                c.n -= 1

    def _apply(self, obs: _Observation, sign: int) -> None:
        length_bin, word_bins, label_bin = obs
        if (c := self._length) is not None:
            c.counts[length_bin] += sign
            c.n += sign
        if (c := self._vocabulary) is not None:
            counts = c.counts
            for b in word_bins:
                counts[b] += sign
            c.n += sign
        if label_bin >= 0 and (c := self._label) is not None:
            c.counts[label_bin] += sign
            c.n += sign

    def scores(self) -> dict[DriftFeature, DriftScore]:
        """Scores of the features with at least `min_samples` requests in the window (and some mass)."""
        return {
            feature: counts.score()
            for feature, counts in self._features.items()
            if counts.n >= self.min_samples and sum(counts.counts) > 0
        }

    def publish(self, metrics: Metrics, route: str, version: str) -> Mapping[DriftFeature, DriftScore]:
        """Set the drift gauges of (route, version) from the current scores; return the scores."""
        scores = self.scores()
        for feature, score in scores.items():
            metrics.drift_psi.labels(route, version, feature.value).set(score.psi)
            metrics.drift_js.labels(route, version, feature.value).set(score.js_distance)
        metrics.drift_window.labels(route, version).set(len(self._window))
        return scores
