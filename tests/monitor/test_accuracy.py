"""Wilson intervals, the two-proportion test and the rolling ratio against hand-computed values."""

import math

import pytest

from monitor.accuracy import RollingAccuracy, two_proportion_z_test, wilson_interval


def test_wilson_interval_matches_hand_computation() -> None:
    # 8/10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.716737,
    # half-width 1.96 / 1.38416 * sqrt(0.016 + 0.009604) = 0.226580.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490157, abs=1e-5)
    assert high == pytest.approx(0.943317, abs=1e-5)


def test_wilson_interval_at_the_edges_stays_inside_0_1() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.277540, abs=1e-5)  # 3.8416 / 13.8416
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(1 - 0.277540, abs=1e-5)
    assert high == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_narrows_with_n() -> None:
    widths = [h - lo for lo, h in (wilson_interval(n * 9 // 10, n) for n in (10, 100, 1000))]
    assert widths[0] > widths[1] > widths[2]


def test_wilson_interval_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_two_proportion_z_test_matches_hand_computation() -> None:
    # 45/50 vs 35/50: pooled 0.8, se sqrt(0.8 * 0.2 * 0.04) = 0.08, z = 0.2 / 0.08 = 2.5.
    z, p = two_proportion_z_test(45, 50, 35, 50)
    assert z == pytest.approx(2.5)
    assert p == pytest.approx(math.erfc(2.5 / math.sqrt(2)))
    assert p == pytest.approx(0.012419, abs=1e-6)
    z_rev, p_rev = two_proportion_z_test(35, 50, 45, 50)
    assert z_rev == pytest.approx(-2.5)
    assert p_rev == pytest.approx(p)


def test_one_sided_p_is_the_lower_tail() -> None:
    # 38/50 vs 45/50: pooled 0.83, se sqrt(0.83 * 0.17 * 0.04) = 0.075127, z = -0.14 / 0.075127 =
    # -1.8635; P(Z <= -1.8635) = 0.0312, half the two-sided 0.0624.
    z, p = two_proportion_z_test(38, 50, 45, 50, alternative="less")
    assert z == pytest.approx(-1.8635, abs=1e-4)
    assert p == pytest.approx(0.031194, abs=1e-6)
    assert two_proportion_z_test(38, 50, 45, 50)[1] == pytest.approx(2 * p)
    # The other way round the lower tail holds almost everything: 1 - 0.0312.
    assert two_proportion_z_test(45, 50, 38, 50, alternative="less")[1] == pytest.approx(0.968806, abs=1e-6)


def test_two_proportion_z_test_without_difference() -> None:
    assert two_proportion_z_test(30, 50, 60, 100) == (0.0, 1.0)
    assert two_proportion_z_test(50, 50, 20, 20) == (0.0, 1.0)  # no variance at all


def test_two_proportion_z_test_needs_samples() -> None:
    with pytest.raises(ValueError, match="sample 2"):
        two_proportion_z_test(3, 5, 0, 0)


def test_rolling_accuracy_forgets_the_oldest_verdicts() -> None:
    acc = RollingAccuracy(3)
    assert acc.ratio is None
    assert acc.interval() == (0.0, 1.0)
    for verdict in (True, True, False):
        acc.add(verdict)
    assert (acc.correct, acc.total) == (2, 3)
    assert acc.ratio == pytest.approx(2 / 3)
    acc.add(False)  # the first True leaves the window
    assert (acc.correct, acc.total) == (1, 3)
    assert acc.interval() == wilson_interval(1, 3)
