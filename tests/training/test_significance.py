"""McNemar and the paired bootstrap on tables checked by hand, and the verdict they give."""

from __future__ import annotations

import math

import pytest

from training.significance import compare, mcnemar, paired_bootstrap


def _pairs(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_mcnemar_exact_by_hand() -> None:
    # 1 discordant example each way: p = 1. 0 vs 6: 2 * (1/2)^6 = 0.03125.
    assert mcnemar(*_pairs(10, 1, 1, 3)).p_value == 1.0
    assert mcnemar(*_pairs(10, 0, 6, 3)).p_value == pytest.approx(2 / 64)
    # 2 vs 10 of 12: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096.
    result = mcnemar(*_pairs(40, 2, 10, 8))
    assert (result.only_a, result.only_b) == (2, 10)
    assert result.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar([True], [True]).p_value == 1.0  # no discordant pair: no evidence of a difference


def test_one_answer_on_sixty_is_not_a_difference() -> None:
    """The issue's case: a 1-answer difference on 60 examples is 1.7 points and nothing more."""
    a, b = _pairs(50, 0, 1, 9)
    result = compare("base", a, b)
    assert result.gain_points == pytest.approx(100 / 60)
    assert not result.helped
    assert result.reasons == ["under the 5-point bar", "not significant at 0.05"]
    low, high = result.interval_points
    assert low <= 0 <= high


def test_a_large_gain_on_enough_examples_helped() -> None:
    a, b = _pairs(30, 2, 25, 3)  # 32/60 against 55/60
    result = compare("base-few-shot", a, b)
    assert result.helped and result.reasons == []
    assert result.gain_points == pytest.approx(100 * 23 / 60)
    low, high = result.interval_points
    assert 0 < low < result.gain_points < high
    assert result.text().startswith("fine-tuning helped") and "McNemar p" in result.text()


def test_a_gain_over_the_bar_that_chance_explains_is_named_as_such() -> None:
    a, b = _pairs(5, 1, 3, 1)  # 6/10 against 8/10: +20 points, p = 0.625
    result = compare("base", a, b)
    assert result.gain_points == pytest.approx(20.0)
    assert result.reasons == ["not significant at 0.05"]
    assert "not significant" in result.text()


def test_the_bootstrap_interval_matches_the_normal_approximation() -> None:
    a, b = _pairs(300, 40, 100, 60)  # 500 examples; the difference of paired proportions
    low, high = paired_bootstrap(a, b, samples=20_000, seed=1)
    n = 500
    d = (100 - 40) / n
    se = math.sqrt(((100 + 40) / n - d * d) / n)
    assert low == pytest.approx(100 * (d - 1.96 * se), abs=0.6)
    assert high == pytest.approx(100 * (d + 1.96 * se), abs=0.6)
