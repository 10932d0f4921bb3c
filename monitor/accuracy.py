"""Live accuracy from feedback: a rolling ratio, its Wilson interval, and a two-proportion test.

    wilson_interval(successes, n)          95% (z=1.96) score interval of a proportion
    two_proportion_z_test(s1, n1, s2, n2, alternative)  pooled z statistic of p1 - p2 and its
                                           p-value, two-sided or one-sided ("less": p1 < p2)
    RollingAccuracy(size)                  the last `size` verdicts: correct, total, ratio, interval()
    publish_live_accuracy(metrics, route, version, correct, total)   the lorafleet_live_accuracy gauges
    restore_live_accuracy(store, metrics, live, last_n)   those gauges from the persisted feedback,
                                           for every live (route, version): at start-up

The Wilson interval is used instead of the normal one (p +- z sqrt(p(1-p)/n)) because it stays
inside [0, 1] and keeps its coverage at small n and at ratios near 0 or 1, which is where a live
accuracy with a few dozen verdicts sits.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection
from typing import Literal

from monitor.feedback import FeedbackStore
from monitor.metrics import Metrics

Z_95 = 1.96


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of successes/n; (0, 1) when n is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z_test(
    s1: int, n1: int, s2: int, n2: int, alternative: Literal["two-sided", "less"] = "two-sided"
) -> tuple[float, float]:
    """z of p1 - p2 with the pooled standard error, and its p-value.

    alternative "two-sided" (p1 != p2): erfc(|z| / sqrt 2); "less" (p1 < p2): the lower tail
    P(Z <= z) = erfc(-z / sqrt 2) / 2. When both samples are all successes or all failures the
    difference is 0 and so is z (p = 1: no evidence either way).
    """
    for s, n, which in ((s1, n1, 1), (s2, n2, 2)):
        if n <= 0 or not 0 <= s <= n:
            raise ValueError(f"sample {which}: need n > 0 and 0 <= successes <= n, got {s}/{n}")
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (s1 / n1 - s2 / n2) / se
    if alternative == "less":
        return z, 0.5 * math.erfc(-z / math.sqrt(2))
    return z, math.erfc(abs(z) / math.sqrt(2))


class RollingAccuracy:
    """Accuracy over the last `size` verdicts, updated in O(1)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"`size` should be at least 1, got {size}")
        self.size = size
        self._verdicts: deque[bool] = deque()
        self._correct = 0

    def add(self, correct: bool) -> None:
        self._verdicts.append(correct)
        self._correct += int(correct)
        if len(self._verdicts) > self.size:
            self._correct -= int(self._verdicts.popleft())

    @property
    def correct(self) -> int:
        return self._correct

    @property
    def total(self) -> int:
        return len(self._verdicts)

    @property
    def ratio(self) -> float | None:
        """correct / total; None before the first verdict."""
        return self._correct / len(self._verdicts) if self._verdicts else None

    def interval(self, z: float = Z_95) -> tuple[float, float]:
        return wilson_interval(self._correct, len(self._verdicts), z)


def publish_live_accuracy(metrics: Metrics, route: str, version: str, correct: int, total: int) -> None:
    """Set the live accuracy of (route, version) and its Wilson interval; nothing without verdicts."""
    if total == 0:
        return
    low, high = wilson_interval(correct, total)
    metrics.live_accuracy.labels(route, version).set(correct / total)
    metrics.live_accuracy_lower.labels(route, version).set(low)
    metrics.live_accuracy_upper.labels(route, version).set(high)


def restore_live_accuracy(
    store: FeedbackStore, metrics: Metrics, live: Collection[tuple[str, str]], last_n: int
) -> dict[tuple[str, str], tuple[int, int]]:
    """Recompute the live accuracy of each live (route, version) from the verdicts on disk.

    A gateway (re)starting has empty gauges but the feedback persisted: call this once the live
    versions are known. Returns (correct, total) of each version that has verdicts. Blocks on
    SQLite (one indexed query of at most `last_n` rows per version).
    """
    restored = {}
    for route, version in live:
        correct, total = store.rolling(route, version, last_n)
        if total:
            publish_live_accuracy(metrics, route, version, correct, total)
            restored[(route, version)] = (correct, total)
    return restored
