"""The entropy estimator over an answer's tokens, and which answers are scored (EntropySampler).
Reading the logprobs out of OpenAI-shaped answers is router/answer.py's (tests/router/test_answer_logprobs.py)."""

import math
import random
import statistics

import pytest

from lorafleet.textstats import token_entropy
from monitor.entropy import EntropyAccumulator, EntropySampler

LN = math.log


def test_the_mean_of_the_token_estimates() -> None:
    acc = EntropyAccumulator()
    assert acc.value() is None
    acc.add([[LN(0.5), LN(0.25), LN(0.25)]])
    acc.add([[LN(0.9)]])
    h1, h2 = 1.5 * LN(2), -0.9 * LN(0.9) - 0.1 * LN(0.1)
    assert acc.tokens == 2 and acc.value() == pytest.approx((h1 + h2) / 2)
    assert token_entropy([LN(0.5), LN(0.25), LN(0.25)]) == pytest.approx(h1)


def test_every_token_is_scored_at_the_same_k() -> None:
    acc = EntropyAccumulator(top_k=1)
    acc.add([[LN(0.25), LN(0.5), LN(0.25)]])
    assert acc.value() == pytest.approx(-0.5 * LN(0.5) * 2)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sampler_scores_every_request_of_a_quiet_version() -> None:
    clock = _Clock()
    sampler = EntropySampler(percent=100, max_per_s=50, rng=random.Random(1), clock=clock)
    for _ in range(10):
        assert all(sampler.sample("v1") for _ in range(40))
        clock.now += 1.0


def test_sampler_bounds_a_busy_version_to_about_max_per_s_and_spreads_them_over_the_second() -> None:
    clock = _Clock()
    sampler = EntropySampler(percent=100, max_per_s=50, rng=random.Random(1), clock=clock)
    seconds = []
    for _ in range(20):
        seconds.append([sampler.sample("busy") for _ in range(2000)])
        clock.now += 1.0
    assert seconds[0][:100] == [True] * 100 and not any(seconds[0][100:])  # the first busy second
    counts = [sum(picks) for picks in seconds]
    assert all(c <= 100 for c in counts)
    assert 40 < statistics.mean(counts[1:]) < 60  # then a random 50/2000 share of each second
    assert all(any(picks[1500:]) for picks in seconds[1:])
    assert all(sampler.sample("quiet") for _ in range(100))  # each version has its own budget


def test_sampler_percent_and_no_limit() -> None:
    rng = random.Random(2)
    assert not any(EntropySampler(percent=0, rng=rng).sample("v") for _ in range(100))
    assert all(EntropySampler(percent=100, max_per_s=0, rng=rng).sample("v") for _ in range(10_000))
    tenth = sum(EntropySampler(percent=10, max_per_s=0, rng=rng).sample("v") for _ in range(10_000))
    assert 800 < tenth < 1200
