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


def _histogram_reference(h: Histogram) -> list[float] | None:
    return [float(c) for c in h.counts] if sum(h.counts) > 0 else None


# A feature and one of its bins; bin REQUESTS_BIN counts the requests (or answers) that contributed.
BinKey = tuple[DriftFeature, int]
REQUESTS_BIN = -1


class DriftBins:
    """How one version's traffic is binned for each drift feature its reference allows, and the
    reference's share of each bin. Stateless: `slots()` of a request, `score()` of counts.

    Every (feature, bin) pair, and each feature's REQUESTS_BIN, is one slot of a flat count list
    (`size` slots, a feature's bins then its REQUESTS_BIN): the request path adds a request with
    integer indexing alone, and `keys[slot]` names the pair when counts leave the process.
    """

    def __init__(self, reference: ReferenceStats, *, vocabulary_words: int = VOCABULARY_DRIFT_WORDS) -> None:
        self.references: dict[DriftFeature, list[float]] = {}
        self._length_edges = list(reference.input_words.edges)
        length_ref = _histogram_reference(reference.input_words)
        if length_ref is not None:
            self.references[DriftFeature.INPUT_LENGTH] = length_ref

        top = sorted(
            (w for w in reference.vocabulary if w != OTHER_WORD), key=lambda w: (-reference.vocabulary[w], w)
        )
        top = top[:vocabulary_words]
        if top:
            shares = [reference.vocabulary[w] for w in top]
            shares.append(max(0.0, 1.0 - sum(shares)))  # the OTHER_WORD bucket, last
            self.references[DriftFeature.INPUT_VOCABULARY] = shares

        self._labels: list[str] = []
        if reference.labels is not None and reference.labels.labels:
            self._labels = list(reference.labels.labels)
            dist = [reference.labels.distribution.get(lab, 0.0) for lab in self._labels]
            dist.append(max(0.0, 1.0 - sum(dist)))  # the 'other' bucket, last
            if sum(dist) > 0:
                self.references[DriftFeature.PREDICTED_LABEL] = dist
        self._label_index = {lab: i for i, lab in enumerate(self._labels)}

        self._entropy_edges: list[float] = []
        if reference.entropy_nats is not None:
            entropy_ref = _histogram_reference(reference.entropy_nats)
            if entropy_ref is not None:
                self._entropy_edges = list(reference.entropy_nats.edges)
                self.references[DriftFeature.ENTROPY] = entropy_ref

        self.keys: list[BinKey] = []
        first: dict[DriftFeature, int] = {}
        for feature, ref in self.references.items():
            first[feature] = len(self.keys)
            self.keys.extend((feature, b) for b in range(len(ref)))
            self.keys.append((feature, REQUESTS_BIN))
        self.size = len(self.keys)
        # Plain ints for the request path: a StrEnum key is hashed in Python.
        requests = {f: at + len(self.references[f]) for f, at in first.items()}
        self._length_at = first.get(DriftFeature.INPUT_LENGTH, -1)
        self._length_requests = requests.get(DriftFeature.INPUT_LENGTH, -1)
        vocabulary_at = first.get(DriftFeature.INPUT_VOCABULARY, -1)
        self._word_slot = {w: vocabulary_at + i for i, w in enumerate(top)}
        self._other_word_slot = vocabulary_at + len(top)
        self._vocabulary_requests = requests.get(DriftFeature.INPUT_VOCABULARY, -1)
        self._label_at = first.get(DriftFeature.PREDICTED_LABEL, -1)
        self._label_requests = requests.get(DriftFeature.PREDICTED_LABEL, -1)
        self._entropy_at = first.get(DriftFeature.ENTROPY, -1)
        self._entropy_requests = requests.get(DriftFeature.ENTROPY, -1)

    @property
    def features(self) -> list[DriftFeature]:
        return list(self.references)

    def label_bin(self, predicted_label: str | None) -> int:
        other = len(self._labels)
        if predicted_label is None:
            return other
        index = self._label_index.get(predicted_label)
        if index is None:
            matched = match_label(predicted_label, self._labels)
            index = self._label_index[matched] if matched is not None else other
        return index

    def length_bin(self, tokens: Sequence[str]) -> int:
        return bin_index(len(tokens), self._length_edges)

    def entropy_bin(self, entropy: float) -> int:
        return bin_index(entropy, self._entropy_edges)

    def slots(self, input_text: str, predicted_label: str | None) -> list[int]:
        """The slots one request counts into, repeats included (one per input word): its length,
        words and predicted label, each feature's REQUESTS_BIN too. Entropy: `entropy_slots`."""
        tokens = words(input_text)
        out: list[int] = []
        if self._length_at >= 0:
            at = self._length_at
            out.append(at + self.length_bin(tokens))
            out.append(self._length_requests)
        if self._word_slot:
            other, slot = self._other_word_slot, self._word_slot.get
            out.extend([slot(w, other) for w in tokens])
            out.append(self._vocabulary_requests)
        if self._label_at >= 0:
            at = self._label_at
            out.append(at + self.label_bin(predicted_label))
            out.append(self._label_requests)
        return out

    def entropy_slots(self, entropy: float | None) -> tuple[int, int] | None:
        """The entropy bin's slot and the entropy REQUESTS_BIN's, or None (no entropy reference,
        no entropy, or not a number)."""
        if self._entropy_at < 0 or entropy is None or not math.isfinite(entropy):
            return None
        at = self._entropy_at
        return at + self.entropy_bin(entropy), self._entropy_requests

    def score(self, counts: Mapping[BinKey, int], min_samples: int) -> dict[DriftFeature, DriftScore]:
        """The features with at least `min_samples` requests counted (and some mass), scored."""
        out: dict[DriftFeature, DriftScore] = {}
        for feature, reference in self.references.items():
            n = counts.get((feature, REQUESTS_BIN), 0)
            live = [counts.get((feature, b), 0) for b in range(len(reference))]
            if n >= min_samples and sum(live) > 0:
                out[feature] = DriftScore(psi(reference, live), js_distance(reference, live), n)
        return out


class DriftWindow:
    """The last `size` requests of one version, counted over its DriftBins, scored on demand.

    `observe` is O(1): a request's words are counted when the window is next read (`scores`,
    `counts`, `len`), and only if it is still one of the last `size` then, so a busy version's
    requests that a later read would find gone are never counted. A read is O(bins + words of the
    requests counted), whatever the window size. A feature
    is scored once at least `min_samples` (default: 200, or `size` if smaller) requests of the
    window contributed to it. Entropy has its own window, of the last `size` answers that carried
    one: the gateway scores the entropy of only some answers of a busy version (`entropy_max_per_s`),
    and those must not be diluted among the requests it did not score. Not thread-safe. (The
    gateway pools its drift over the fleet instead: router/observe.py, monitor/feedback.)
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
        self.bins = DriftBins(reference, vocabulary_words=vocabulary_words)
        self._window: deque[list[int]] = deque()
        self._uncounted: deque[tuple[str, str | None]] = deque(maxlen=size)  # the newest requests
        self._entropy_window: deque[tuple[int, int]] = deque()
        self._totals = [0] * self.bins.size
        self._reported: set[int] = set()  # slots counts() has returned non-zero

    @property
    def features(self) -> list[DriftFeature]:
        """The features this reference allows to score."""
        return self.bins.features

    def __len__(self) -> int:
        self._count()
        return len(self._window)

    def observe(self, input_text: str, predicted_label: str | None, entropy: float | None) -> None:
        """Add one request: the user's input, the label its answer named (None: no label), its entropy.

        `predicted_label` is ignored when the reference has no labels; None or a text that names
        no label counts as 'other'. `entropy` None (no logprobs) leaves the entropy feature out.
        """
        self._uncounted.append((input_text, predicted_label))
        scored = self.bins.entropy_slots(entropy)
        if scored is not None:
            totals = self._totals
            totals[scored[0]] += 1
            totals[scored[1]] += 1
            self._entropy_window.append(scored)
            if len(self._entropy_window) > self.size:
                old, requests = self._entropy_window.popleft()
                totals[old] -= 1
                totals[requests] -= 1

    def _count(self) -> None:
        """Count the requests observed since the last read (the last `size` of them at most)."""
        uncounted = self._uncounted
        if not uncounted:
            return
        totals, window, slots_of = self._totals, self._window, self.bins.slots
        for input_text, predicted_label in uncounted:
            slots = slots_of(input_text, predicted_label)
            for s in slots:
                totals[s] += 1
            window.append(slots)
        uncounted.clear()
        while len(window) > self.size:
            for s in window.popleft():
                totals[s] -= 1

    def scores(self) -> dict[DriftFeature, DriftScore]:
        """Scores of the features with at least `min_samples` requests in the window (and some mass)."""
        self._count()
        keys = self.bins.keys
        return self.bins.score({keys[s]: n for s, n in enumerate(self._totals) if n}, self.min_samples)

    def counts(self) -> dict[BinKey, int]:
        """The window's count in each (feature, bin), REQUESTS_BIN included: what a fleet sums.

        Every bin counted now, and every bin returned before with a count, even one back to 0: a
        store that upserts the pairs it is given is overwritten, never left with a stale count.
        """
        self._count()
        totals = self._totals
        self._reported.update(s for s, n in enumerate(totals) if n)
        keys = self.bins.keys
        return {keys[s]: totals[s] for s in sorted(self._reported)}

    def publish(self, metrics: Metrics, route: str, version: str) -> Mapping[DriftFeature, DriftScore]:
        """Set the drift gauges of (route, version) from the current scores; return the scores."""
        scores = self.scores()
        publish_scores(metrics, route, version, scores, len(self))
        return scores


def publish_scores(
    metrics: Metrics, route: str, version: str, scores: Mapping[DriftFeature, DriftScore], requests: int
) -> None:
    """The drift gauges of (route, version): each scored feature's PSI and JS, the requests counted."""
    for feature, score in scores.items():
        metrics.drift_psi.labels(route, version, feature.value).set(score.psi)
        metrics.drift_js.labels(route, version, feature.value).set(score.js_distance)
    metrics.drift_window.labels(route, version).set(requests)
