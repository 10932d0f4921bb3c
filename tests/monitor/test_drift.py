"""PSI, Jensen-Shannon distance and the sliding drift window, on hand-made and on real BANKING77 data."""

import csv
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from lorafleet.registry import ReferenceStats
from lorafleet.textstats import ENTROPY_EDGES_NATS, reference_stats, words
from monitor.drift import (
    JS_THRESHOLD,
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    REQUESTS_BIN,
    DriftBins,
    DriftLevel,
    DriftWindow,
    js_distance,
    psi,
    psi_level,
)
from monitor.metrics import DriftFeature, build_metrics

ROOT = Path(__file__).resolve().parents[2]
SHARED_BANKING = [ROOT.parent / "shared/datasets/banking77", Path("/work/shared/datasets/banking77")]


# --- the statistics ---------------------------------------------------------------------------


def test_psi_matches_hand_computation() -> None:
    # (0.25 - 0.5) ln(0.5) + (0.75 - 0.5) ln(1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi([10, 10], [1, 3]) == pytest.approx(psi([0.5, 0.5], [0.25, 0.75]))  # counts are normalised
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_psi_smooths_empty_bins() -> None:
    value = psi([1.0, 0.0], [0.5, 0.5])
    r = [1 / 1.0001, 1e-4 / 1.0001]
    assert value == pytest.approx((0.5 - r[0]) * math.log(0.5 / r[0]) + (0.5 - r[1]) * math.log(0.5 / r[1]))
    assert psi([1.0, 0.0], [0.5, 0.5], eps=1e-2) < value  # a larger floor costs less


def test_js_distance_matches_hand_computation() -> None:
    # m = (0.375, 0.625); KL(p||m) = 0.0465545, KL(q||m) = 0.0510352 bits; sqrt of their mean.
    assert js_distance([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.220895, abs=1e-6)
    assert js_distance([1, 0], [0, 1]) == 1.0
    assert js_distance([3, 1], [3, 1]) == 0.0
    assert js_distance([0.5, 0.5], [0.25, 0.75]) == pytest.approx(js_distance([0.25, 0.75], [0.5, 0.5]))


@pytest.mark.parametrize(
    ("p", "q", "message"),
    [
        ([0.5, 0.5], [1.0], "aligned"),
        ([], [], "empty"),
        ([0, 0], [1, 1], "sums to 0"),
        ([-1, 2], [1, 1], "negative"),
    ],
)
def test_statistics_reject_bad_vectors(p: list[float], q: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        psi(p, q)
    with pytest.raises(ValueError, match=message):
        js_distance(p, q)


def test_psi_bands() -> None:
    assert psi_level(0.05) is DriftLevel.NONE
    assert psi_level(PSI_MODERATE) is DriftLevel.MODERATE
    assert psi_level(0.19) is DriftLevel.MODERATE
    assert psi_level(PSI_SIGNIFICANT) is DriftLevel.SIGNIFICANT


# --- the window -------------------------------------------------------------------------------

LABELS = ["card_arrival", "change_pin", "cancel_transfer"]
SHORT = ["where is my card", "change my pin", "cancel a transfer"]
LONG = [
    "I ordered a new card two weeks ago and it has still not arrived, where is it now please",
    "how do I change the pin of my card at an ATM or in the app, I forgot which one works",
    "I sent money to the wrong account by mistake this morning, can I still cancel that transfer",
]


def small_reference(entropies: Sequence[float] = ()) -> ReferenceStats:
    inputs = SHORT * 20
    return reference_stats(inputs, [LABELS[i % 3] for i in range(len(inputs))], LABELS, entropies=entropies)


def test_window_scores_only_after_min_samples() -> None:
    window = DriftWindow(small_reference(), size=10, min_samples=5)
    for i in range(4):
        window.observe(SHORT[i % 3], LABELS[i % 3], None)
    assert window.scores() == {}
    window.observe(SHORT[1], LABELS[1], None)
    scores = window.scores()
    assert set(scores) == {
        DriftFeature.INPUT_LENGTH,
        DriftFeature.INPUT_VOCABULARY,
        DriftFeature.PREDICTED_LABEL,
    }
    assert all(s.n == 5 for s in scores.values())


def test_window_counts_at_each_read_what_it_would_have_counted_at_once() -> None:
    """Requests are counted when the window is read; whatever the reads' rhythm (none for many
    windows, or after every request), the counts are those of the last `size` requests."""
    ref = small_reference()
    rng = random.Random(7)
    texts, labels = SHORT + LONG, [*LABELS, None, "not a label"]
    window = DriftWindow(ref, size=8, min_samples=1)
    seen: list[tuple[str, str | None, float | None]] = []
    for step in range(400):
        request = (rng.choice(texts), rng.choice(labels), rng.choice([None, rng.uniform(0, 3)]))
        window.observe(*request)
        seen.append(request)
        if rng.random() < (0.5 if step < 200 else 0.02):  # often, then rarely (bursts of > size)
            text_once, entropy_once = (DriftWindow(ref, size=8, min_samples=1) for _ in range(2))
            for old in seen[-8:]:
                text_once.observe(old[0], old[1], None)
            for old in [r for r in seen if r[2] is not None][-8:]:
                entropy_once.observe("", None, old[2])  # the entropy window: the last 8 answers with one
            got = {k: n for k, n in window.counts().items() if n}
            assert {k: n for k, n in got.items() if k[0] is not DriftFeature.ENTROPY} == {
                k: n for k, n in text_once.counts().items() if n and k[0] is not DriftFeature.ENTROPY
            }
            assert {k: n for k, n in got.items() if k[0] is DriftFeature.ENTROPY} == {
                k: n for k, n in entropy_once.counts().items() if n and k[0] is DriftFeature.ENTROPY
            }
            assert len(window) == min(8, step + 1)


def test_window_keeps_only_the_last_requests() -> None:
    """After `size` new requests, the scores are those of a window that only ever saw them."""
    ref = small_reference()
    slid = DriftWindow(ref, size=6, min_samples=6)
    for i in range(6):
        slid.observe(LONG[i % 3], None, None)
    fresh = DriftWindow(ref, size=6, min_samples=6)
    for i in range(6):
        slid.observe(SHORT[i % 3], LABELS[i % 3], None)
        fresh.observe(SHORT[i % 3], LABELS[i % 3], None)
    assert len(slid) == 6
    assert slid.scores() == fresh.scores()
    assert slid.scores()[DriftFeature.PREDICTED_LABEL].psi == pytest.approx(0.0)


def test_features_follow_the_reference() -> None:
    no_labels = reference_stats(SHORT, SHORT, None)
    assert DriftWindow(no_labels, size=10).features == [
        DriftFeature.INPUT_LENGTH,
        DriftFeature.INPUT_VOCABULARY,
    ]
    with_entropy = small_reference(entropies=[0.02, 0.05, 0.04] * 20)
    assert DriftFeature.ENTROPY in DriftWindow(with_entropy, size=10).features


def test_predicted_labels_outside_the_set_count_as_other() -> None:
    window = DriftWindow(small_reference(), size=30, min_samples=30)
    for i in range(30):
        # The answer a chatty model gives names no label; a label in other casing still counts.
        label = None if i % 3 == 0 else ("CARD_ARRIVAL." if i % 3 == 1 else LABELS[2])
        window.observe(SHORT[i % 3], label, None)
    score = window.scores()[DriftFeature.PREDICTED_LABEL]
    # Live: 1/3 'other' (reference 0), 1/3 card_arrival, 0 change_pin, 1/3 cancel_transfer.
    assert score.level is DriftLevel.SIGNIFICANT
    assert score.js_distance > JS_THRESHOLD


def test_entropy_drift() -> None:
    rng = random.Random(7)
    ref = small_reference(entropies=[rng.uniform(0.0, 0.08) for _ in range(300)])
    calm = DriftWindow(ref, size=200)
    unsure = DriftWindow(ref, size=200)
    for i in range(200):
        calm.observe(SHORT[i % 3], LABELS[i % 3], rng.uniform(0.0, 0.08))
        unsure.observe(SHORT[i % 3], LABELS[i % 3], rng.uniform(0.3, 1.2))
    assert calm.scores()[DriftFeature.ENTROPY].psi < PSI_MODERATE
    assert unsure.scores()[DriftFeature.ENTROPY].psi >= PSI_SIGNIFICANT
    # Answers without logprobs leave the entropy feature out, not the others.
    partial = DriftWindow(ref, size=200, min_samples=100)
    for i in range(150):
        partial.observe(SHORT[i % 3], LABELS[i % 3], 0.01 if i < 50 else None)
    assert DriftFeature.ENTROPY not in partial.scores()
    assert partial.scores()[DriftFeature.INPUT_LENGTH].n == 150
    assert max(ENTROPY_EDGES_NATS) > 1.2  # the live values above land inside the histogram's range


def test_entropy_of_a_busy_version_scored_on_a_few_answers_still_gets_a_score() -> None:
    """The gateway scores the entropy of ~50 answers a second of a busy version: one request in 20
    at 1,000 req/s. Entropy's window holds the last `size` scored answers, not the scored ones
    among the last `size` requests."""
    rng = random.Random(3)
    ref = small_reference(entropies=[rng.uniform(0.0, 0.08) for _ in range(300)])
    window = DriftWindow(ref, size=500, min_samples=200)
    for i in range(500 * 20):
        entropy = rng.uniform(0.3, 1.2) if i % 20 == 0 else None
        window.observe(SHORT[i % 3], LABELS[i % 3], entropy)
    scores = window.scores()
    assert len(window) == 500 and scores[DriftFeature.INPUT_LENGTH].n == 500
    assert scores[DriftFeature.ENTROPY].n == 500
    assert scores[DriftFeature.ENTROPY].psi >= PSI_SIGNIFICANT
    for i in range(500):  # calm again: the last 500 scored answers are all calm
        window.observe(SHORT[i % 3], LABELS[i % 3], rng.uniform(0.0, 0.08))
    assert window.scores()[DriftFeature.ENTROPY].psi < PSI_MODERATE


def test_window_counts_are_what_a_fleet_sums() -> None:
    """counts() holds each bin's count and each feature's requests; a bin that slid out of the
    window is still named, at 0, so that a store upserting the pairs drops its old count."""
    ref = small_reference()
    window = DriftWindow(ref, size=3, min_samples=3)
    window.observe(LONG[0], None, None)
    first = window.counts()
    assert first[(DriftFeature.INPUT_LENGTH, REQUESTS_BIN)] == 1
    assert first[(DriftFeature.PREDICTED_LABEL, len(LABELS))] == 1  # no label: 'other'
    assert sum(n for (f, b), n in first.items() if f is DriftFeature.INPUT_VOCABULARY and b >= 0) == len(
        words(LONG[0])
    )
    for i in range(3):
        window.observe(SHORT[i], LABELS[i], None)
    later = window.counts()
    assert later[(DriftFeature.PREDICTED_LABEL, len(LABELS))] == 0
    assert later[(DriftFeature.INPUT_LENGTH, REQUESTS_BIN)] == 3
    assert set(first) <= set(later)
    assert window.scores() == DriftBins(ref).score(later, 3)


def test_publish_sets_the_drift_gauges() -> None:
    registry = CollectorRegistry()
    metrics = build_metrics(registry)
    window = DriftWindow(small_reference(), size=20, min_samples=10)
    for i in range(12):
        window.observe(LONG[i % 3], LABELS[i % 3], None)
    scores = window.publish(metrics, "banking", "banking-v1-20261124")
    labels = {"route": "banking", "version": "banking-v1-20261124"}
    for feature, score in scores.items():
        got = registry.get_sample_value("lorafleet_drift_psi", {**labels, "feature": feature.value})
        assert got == pytest.approx(score.psi)
        js = registry.get_sample_value(
            "lorafleet_drift_jensen_shannon_distance", {**labels, "feature": feature.value}
        )
        assert js == pytest.approx(score.js_distance)
    assert registry.get_sample_value("lorafleet_drift_window_requests", labels) == 12
    length_psi = registry.get_sample_value("lorafleet_drift_psi", {**labels, "feature": "input_length"})
    assert length_psi is not None and length_psi >= PSI_SIGNIFICANT


def test_window_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        DriftWindow(small_reference(), size=10, min_samples=11)
    assert DriftWindow(small_reference(), size=50).min_samples == 50  # the default, capped by the size


# --- real data: BANKING77 ---------------------------------------------------------------------


def _rows(path: Path, label_column: str) -> list[tuple[str, str]]:
    with path.open(newline="") as fh:
        return [(r["text"].strip(), r[label_column]) for r in csv.DictReader(fh)]


def _shared_banking() -> Path:
    for folder in SHARED_BANKING:
        if (folder / "test.csv").is_file():
            return folder
    pytest.skip(f"the BANKING77 test split is needed for held-out queries; looked in {SHARED_BANKING}")


@pytest.fixture(scope="module")
def banking() -> dict[str, list[tuple[str, str]]]:
    """Training queries of the 10 demo intents, held-out queries of the same intents, other intents."""
    shared = _shared_banking()
    demo_csv = ROOT / "data/banking77/demo.csv"
    shifted_csv = ROOT / "data/banking77/shifted.csv"
    test = _rows(shared / "test.csv", "category")
    if demo_csv.is_file():
        train = _rows(demo_csv, "label")
    else:
        wanted = sorted({lab for _, lab in test})[:10]
        train = [r for r in _rows(shared / "train.csv", "category") if r[1] in wanted]
    intents = {lab for _, lab in train}
    same = [r for r in test if r[1] in intents]
    if shifted_csv.is_file():
        other = _rows(shifted_csv, "label")
    else:
        other = [r for r in test if r[1] not in intents][:200]
    assert not intents & {lab for _, lab in other}
    return {"train": train, "same": same, "other": other}


def _reference(train: list[tuple[str, str]]) -> ReferenceStats:
    labels = sorted({lab for _, lab in train})
    return reference_stats([t for t, _ in train], [lab for _, lab in train], labels)


def _window(ref: ReferenceStats, rows: Sequence[tuple[str, str | None]]) -> DriftWindow:
    window = DriftWindow(ref, size=len(rows), min_samples=min(len(rows), 150))
    for text, predicted in rows:
        window.observe(text, predicted, None)
    return window


def test_banking77_held_out_queries_of_the_same_intents_do_not_drift(
    banking: dict[str, list[tuple[str, str]]],
) -> None:
    ref = _reference(banking["train"])
    same = list(banking["same"])
    random.Random(0).shuffle(same)
    # A perfect classifier's answers: the true intents.
    scores = _window(ref, [(t, lab) for t, lab in same]).scores()
    assert set(scores) == {
        DriftFeature.INPUT_LENGTH,
        DriftFeature.INPUT_VOCABULARY,
        DriftFeature.PREDICTED_LABEL,
    }
    for feature, score in scores.items():
        assert score.level is DriftLevel.NONE, (feature, score)
    assert scores[DriftFeature.INPUT_VOCABULARY].js_distance < JS_THRESHOLD
    assert scores[DriftFeature.PREDICTED_LABEL].js_distance < JS_THRESHOLD
    # Not asserted: the input-length JS distance, about 0.11 here. BANKING77's test queries are a
    # little shorter than its training ones, a real difference that PSI (0.07) rates as none; the
    # docs explain why JS 0.1 is the stricter threshold.


def test_banking77_queries_of_other_intents_drift(banking: dict[str, list[tuple[str, str]]]) -> None:
    ref = _reference(banking["train"])
    labels = ref.labels.labels if ref.labels else []
    rng = random.Random(1)
    # The deployed classifier must answer with one of its labels: say it picks one at random.
    rows: list[tuple[str, str | None]] = [(t, rng.choice(labels)) for t, _ in banking["other"]]
    scores = _window(ref, rows).scores()
    vocabulary = scores[DriftFeature.INPUT_VOCABULARY]
    assert vocabulary.level is DriftLevel.SIGNIFICANT, vocabulary
    assert vocabulary.js_distance >= JS_THRESHOLD
    assert scores[DriftFeature.INPUT_LENGTH].psi >= PSI_MODERATE


def test_banking77_planted_label_shifts(banking: dict[str, list[tuple[str, str]]]) -> None:
    ref = _reference(banking["train"])
    same = banking["same"]
    by_intent: dict[str, list[str]] = {}
    for text, lab in same:
        by_intent.setdefault(lab, []).append(text)
    popular = sorted(by_intent)[0]

    # A campaign: half of the traffic is about one intent (answered correctly).
    skewed = [(t, popular) for t in by_intent[popular]]
    for lab in sorted(by_intent)[1:]:
        skewed += [(t, lab) for t in by_intent[lab][: len(by_intent[popular]) // 9 + 1]]
    label_score = _window(ref, skewed).scores()[DriftFeature.PREDICTED_LABEL]
    assert label_score.level is DriftLevel.SIGNIFICANT, label_score

    # A broken adapter: a third of the answers name no label at all.
    rows: list[tuple[str, str | None]] = [(t, None if i % 3 == 0 else lab) for i, (t, lab) in enumerate(same)]
    label_score = _window(ref, rows).scores()[DriftFeature.PREDICTED_LABEL]
    assert label_score.level is DriftLevel.SIGNIFICANT, label_score
    assert label_score.js_distance >= JS_THRESHOLD


def test_an_answer_names_a_label_after_normalisation_and_the_first_alike_label_wins() -> None:
    from lorafleet.textstats import match_label

    labels = ["card_arrival", "Card_Arrival.", "lost_or_stolen_card"]
    assert match_label('  "Card_arrival"\n', labels) == "card_arrival"
    assert match_label("Card_arrival.", labels) == "card_arrival"
    assert match_label("lost_or_stolen_card!", labels) == "lost_or_stolen_card"
    assert match_label("card arrival", labels) is None
    assert match_label("card_arrival", []) is None
    assert match_label("card_arrival", ("card_arrival",)) == "card_arrival"
