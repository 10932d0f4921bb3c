"""Metrics on a confusion computed by hand (the verdict: test_significance.py)."""

from __future__ import annotations

import pytest

from training.scoring import OTHER, normalize, score

# Expected a,a,a,b,b,c. Answered a, a, b, b, a chatty sentence (outside the label set), "c." (right
# after normalisation, not an exact match).
EXPECTED = ["a", "a", "a", "b", "b", "c"]
GOT = ["a", "a", "b", "b", "Hello! How can I help?", "c."]


def test_accuracy_exact_match_and_the_confusion_of_a_known_case() -> None:
    s = score(EXPECTED, GOT)
    assert s.examples == 6
    assert s.accuracy == pytest.approx(4 / 6)  # rows 0, 1, 3, 5
    assert s.exact_match == pytest.approx(3 / 6)  # "c." is not "c"
    assert s.confusion.labels == ["a", "b", "c"]
    assert s.confusion.columns == ["a", "b", "c", OTHER]
    assert s.confusion.matrix == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]


def test_per_label_precision_recall_and_macro_f1_by_hand() -> None:
    s = score(EXPECTED, GOT)
    a, b, c = s.per_label["a"], s.per_label["b"], s.per_label["c"]
    # a: 2 right of 3 expected, answered twice -> P 1, R 2/3, F1 0.8
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((1.0, 2 / 3, 0.8, 3))
    # b: 1 right of 2 expected, answered twice (once for an a) -> P 1/2, R 1/2, F1 1/2
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (c.precision, c.recall, c.f1, c.support) == pytest.approx((1.0, 1.0, 1.0, 1))
    assert s.macro_f1 == pytest.approx((0.8 + 0.5 + 1.0) / 3)


def test_a_label_never_answered_has_zero_precision_and_labels_absent_from_the_test_do_not_count() -> None:
    s = score(["a", "b"], ["a", "a"], labels=["a", "b", "z"])
    assert s.per_label["b"].precision == 0.0 and s.per_label["b"].f1 == 0.0
    assert s.per_label["z"].support == 0
    # macro-F1 over a and b only: a has P 1/2, R 1 -> F1 2/3; b 0.
    assert s.macro_f1 == pytest.approx((2 / 3 + 0.0) / 2)


def test_normalisation_strips_whitespace_and_trailing_punctuation_only() -> None:
    assert normalize("  card_arrival.\n") == "card_arrival"
    assert normalize("card_arrival!?") == "card_arrival"
    assert normalize("Card_arrival") == "Card_arrival"
    assert normalize("it is card_arrival") == "it is card_arrival"


def test_a_label_set_matches_answers_as_the_gateway_does() -> None:
    """Quotes, case and trailing punctuation aside, the label named counts; anything else is OTHER."""
    s = score(
        ["card_arrival", "change_pin"],
        ['"Card_Arrival".', "pin change"],
        labels=["card_arrival", "change_pin"],
    )
    assert s.correct == [True, False]
    assert s.confusion.matrix == [[1, 0, 0], [0, 0, 1]]


def test_a_label_ending_in_punctuation_is_named_by_its_own_answer() -> None:
    """BANKING77's `reverted_card_payment?`: the expected answer and the model's are matched alike."""
    labels = ["card_arrival", "reverted_card_payment?"]
    s = score(
        ["reverted_card_payment?", "reverted_card_payment?", "card_arrival"],
        ["reverted_card_payment?", "card_arrival", "card_arrival"],
        labels=labels,
    )
    assert s.correct == [True, False, True]
    assert s.confusion.labels == labels
    assert s.per_label["reverted_card_payment?"].recall == pytest.approx(0.5)
