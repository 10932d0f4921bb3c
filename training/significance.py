"""Is a difference of accuracy between two models on the same test examples real?

    mcnemar(a, b)                  the exact McNemar test on the examples where exactly one is right:
                                   under "no difference" each such example is a fair coin, so the
                                   two-sided p-value is a binomial tail
    paired_bootstrap(a, b)         a 95% confidence interval of accuracy(b) - accuracy(a), resampling
                                   the examples (the same draw for both models: the pairing is kept)
    compare(a, b, ...)             both, and the practice's verdict: a gain under `min_gain_points`, or
                                   one that is not significant at `alpha`, means fine-tuning did not help

`a` and `b` are, per test example, whether each model answered it right (the same examples in the
same order). Checked by hand in tests/training/test_significance.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

MIN_GAIN_POINTS = 5.0
ALPHA = 0.05
BOOTSTRAP_SAMPLES = 10_000


class McNemar(BaseModel):
    only_a: int = Field(description="Examples only the first model answered right.")
    only_b: int = Field(description="Examples only the second model answered right.")
    p_value: float


class Comparison(BaseModel):
    """The tuned model against a baseline on the same examples."""

    baseline: str
    baseline_accuracy: float
    tuned_accuracy: float
    gain_points: float
    interval_points: tuple[float, float] = Field(description="95% paired bootstrap interval of the gain.")
    mcnemar: McNemar
    helped: bool
    reasons: list[str] = Field(description="Why it did not help: under the bar, not significant.")

    def text(self) -> str:
        low, high = self.interval_points
        compared = (
            f"tuned accuracy {self.tuned_accuracy:.3f} against {self.baseline_accuracy:.3f} for {self.baseline} "
            f"({self.gain_points:+.1f} points, 95% interval {low:+.1f} to {high:+.1f}; "
            f"McNemar p = {self.mcnemar.p_value:.3g}, {self.mcnemar.only_b} examples only tuned got right, "
            f"{self.mcnemar.only_a} only {self.baseline})"
        )
        if self.helped:
            return f"fine-tuning helped: {compared}."
        return f"fine-tuning did not help ({'; '.join(self.reasons)}): {compared}."


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """The exact (binomial) McNemar test, two-sided."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} results against {len(b)}: the same examples are needed")
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    if n == 0:
        return McNemar(only_a=0, only_b=0, p_value=1.0)
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return McNemar(only_a=only_a, only_b=only_b, p_value=min(1.0, 2 * tail))


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% interval of accuracy(b) - accuracy(a), in points (percentiles of resampled differences)."""
    import numpy as np

    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError("the same, non-empty, examples are needed")
    diff = [int(y) - int(x) for x, y in zip(a, b, strict=True)]
    # A resample's sum of differences only depends on how many -1, 0 and +1 it drew: a multinomial
    # draw of n over their shares is the same distribution as drawing n examples, and instant.
    shares = [diff.count(-1) / n, diff.count(0) / n, diff.count(1) / n]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=samples)
    means = np.sort((counts[:, 2] - counts[:, 0]) / n)
    low, high = means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]
    return (round(100 * float(low), 6), round(100 * float(high), 6))


def compare(
    baseline: str,
    a: Sequence[bool],
    b: Sequence[bool],
    min_gain_points: float = MIN_GAIN_POINTS,
    alpha: float = ALPHA,
    samples: int = BOOTSTRAP_SAMPLES,
) -> Comparison:
    """Tuned (`b`) against `baseline` (`a`), example by example."""
    acc_a = sum(a) / len(a) if a else 0.0
    acc_b = sum(b) / len(b) if b else 0.0
    gain = round(100 * (acc_b - acc_a), 9)  # 0.85 - 0.80 is 4.99999... points
    test = mcnemar(a, b)
    reasons = []
    if gain < min_gain_points:
        reasons.append(f"under the {min_gain_points:g}-point bar")
    if test.p_value >= alpha or gain <= 0:
        reasons.append(f"not significant at {alpha:g}")
    return Comparison(
        baseline=baseline,
        baseline_accuracy=acc_a,
        tuned_accuracy=acc_b,
        gain_points=gain,
        interval_points=paired_bootstrap(a, b, samples) if a else (0.0, 0.0),
        mcnemar=test,
        helped=not reasons,
        reasons=reasons,
    )
