"""JSON and free-text metrics on answers checked by hand."""

from __future__ import annotations

import pytest

from training.taskmetrics import TaskKind, json_scores, task_kind, text_scores, token_f1


def test_the_task_kind_comes_from_the_answers() -> None:
    assert task_kind(["a", "b"], ["a", "b"]) is TaskKind.LABELS
    assert task_kind(['{"intent": "x"}', '{"intent": "y", "urgent": true}'], None) is TaskKind.JSON
    assert task_kind(['{"intent": "x"}', "not json"], None) is TaskKind.TEXT
    assert task_kind(["[1, 2]"], None) is TaskKind.TEXT  # JSON, but not an object
    repeated = ['{"intent": "x"}', '{"intent": "x"}', '{"intent": "y"}', '{"intent": "y"}']
    assert task_kind(repeated, sorted(set(repeated))) is TaskKind.JSON  # fields say more than labels


def test_json_validity_whole_object_and_each_field() -> None:
    expected = [
        '{"intent": "card_arrival", "urgent": false}',
        '{"intent": "lost_card", "urgent": true}',
        '{"intent": "change_pin", "urgent": false}',
        '{"intent": "cancel_transfer", "urgent": true}',
    ]
    got = [
        '{"urgent": false, "intent": "card_arrival"}',  # the same object, another key order
        '{"intent": "lost_card", "urgent": false}',  # urgent wrong
        "change_pin",  # not JSON
        '{"intent": "cancel_transfer"}',  # urgent missing
    ]
    s = json_scores(expected, got)
    assert s.validity == 0.75
    assert s.exact_match == 0.25 and s.correct == [True, False, False, False]
    assert s.fields["intent"].accuracy == 0.75
    assert s.fields["urgent"].accuracy == 0.25 and s.fields["urgent"].missing == 1
    assert [(e.example, e.expected, e.got) for e in s.fields["urgent"].errors] == [
        (1, True, False),
        (2, False, "change_pin"),
        (3, True, None),
    ]


def test_free_text_exact_normalised_and_token_f1() -> None:
    expected = ["Your card arrives in 3 days.", "Call us.", "Reset your PIN in the app"]
    got = ["your card arrives in 3 days", "Call us.", "Open the app to reset the PIN"]
    s = text_scores(expected, got)
    assert s.exact_match == pytest.approx(1 / 3)
    assert s.normalised_match == pytest.approx(2 / 3) and s.correct == [True, True, False]
    # expected tokens: reset your pin in the app (6); got: open the app to reset the pin (7);
    # common: reset, pin, app and one "the" = 4 -> P 4/7, R 4/6, F1 = 2PR/(P+R) = 8/13
    assert token_f1(expected[2], got[2]) == pytest.approx(8 / 13)
    assert s.token_f1 == pytest.approx((1 + 1 + 8 / 13) / 3)
