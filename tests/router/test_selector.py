"""Routing claims, measured: splits hold their weights, users stay put, raising a canary moves only new users."""

import random

from monitor.metrics import Arm
from router.policy import Canary, Route, Shadow
from router.selector import bucket, choose, mirror

V1, V2, V3 = "banking-v1-20261124", "banking-v2-20261125", "banking-v3-20261125"


def _route(canary: int = 0, weights: dict[str, int] | None = None, shadow: int = 0) -> Route:
    return Route(
        stable=V1,
        canary=Canary(version=V2, weight=canary) if canary else None,
        weights=weights or {},
        shadow=Shadow(version=V3, percent=shadow) if shadow else None,
    )


def test_ninety_ten_split_holds_within_tolerance_over_many_users() -> None:
    route, rng = _route(canary=10), random.Random(0)
    n = 20_000
    canary = sum(choose("banking", route, f"user-{i}", rng).version == V2 for i in range(n))
    assert abs(canary / n - 0.10) < 0.01


def test_requests_without_a_user_follow_the_weights_too() -> None:
    route, rng = _route(weights={V3: 25}), random.Random(1)
    n = 20_000
    share = sum(choose("banking", route, None, rng).version == V3 for _ in range(n)) / n
    assert abs(share - 0.25) < 0.015


def test_a_sticky_user_always_gets_the_same_version() -> None:
    route = _route(canary=30)
    for i in range(200):
        first = choose("banking", route, f"u{i}", random.Random(i))
        for seed in range(5):
            assert choose("banking", route, f"u{i}", random.Random(seed)) == first


def test_raising_the_canary_moves_only_users_from_stable_to_canary() -> None:
    at10, at20 = _route(canary=10), _route(canary=20)
    rng = random.Random(0)
    moved = 0
    for i in range(10_000):
        before = choose("banking", at10, f"u{i}", rng)
        after = choose("banking", at20, f"u{i}", rng)
        if before.version == V2:
            assert after.version == V2, "a canary user went back to stable"
        elif after.version == V2:
            moved += 1
    assert abs(moved / 10_000 - 0.10) < 0.01


def test_fixed_weights_are_not_disturbed_by_the_canary() -> None:
    small, large = _route(canary=5, weights={V3: 10}), _route(canary=50, weights={V3: 10})
    for i in range(5_000):
        a = choose("banking", small, f"u{i}", random.Random(0))
        b = choose("banking", large, f"u{i}", random.Random(0))
        assert (a.version == V3) == (b.version == V3)


def test_arms_are_named() -> None:
    route = _route(canary=100)
    assert choose("banking", route, "x", random.Random(0)).arm is Arm.CANARY
    assert choose("banking", _route(), "x", random.Random(0)).arm is Arm.STABLE


def test_two_replicas_agree_because_the_hash_is_stable() -> None:
    assert bucket("banking", "alice") == bucket("banking", "alice")
    assert bucket("banking", "alice") != bucket("other-route", "alice") or bucket("banking", "bob") != bucket(
        "other-route", "bob"
    )
    assert 0 <= bucket("banking", "alice") < 10_000


def test_shadow_share_is_independent_of_the_split() -> None:
    route, rng = _route(canary=50, shadow=20), random.Random(0)
    n = 10_000
    picks = [
        (choose("banking", route, f"u{i}", rng).version, mirror("banking", route, f"u{i}", rng))
        for i in range(n)
    ]
    shadowed = [v for v, s in picks if s == V3]
    assert abs(len(shadowed) / n - 0.20) < 0.015
    assert abs(sum(v == V2 for v in shadowed) / len(shadowed) - 0.5) < 0.05
