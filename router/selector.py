"""Which version answers a request: pure functions of the route and the request's key.

Each user key (the `user` field or the session header) hashes to one of 10,000 buckets per route.
The canary takes buckets from the bottom, [0, canary%); fixed-weight versions take them from the
top, in name order; the stable version takes the rest. So two gateway replicas reading the same
routes file agree without talking to each other, a user stays on one version while the split stays
the same, and raising a canary from 10% to 20% moves only users from stable to canary (those in
[10%, 20%)), never the other way. Requests with no key are spread at random by the same shares.
Shadow mirroring hashes with a different salt, so it is independent of the primary split.
"""

from __future__ import annotations

import hashlib
import random
from typing import NamedTuple

from monitor.metrics import Arm
from router.policy import Route

BUCKETS = 10_000
_PER_PERCENT = BUCKETS // 100


def bucket(route: str, key: str, salt: str = "split") -> int:
    """The stable bucket (0..9999) of a user key on a route."""
    digest = hashlib.blake2b(f"{salt}\0{route}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Choice(NamedTuple):
    version: str
    arm: Arm


def choose(route_name: str, route: Route, key: str | None, rng: random.Random) -> Choice:
    """The version that serves a request on this route."""
    b = bucket(route_name, key) if key else rng.randrange(BUCKETS)
    if route.canary and b < route.canary.weight * _PER_PERCENT:
        return Choice(route.canary.version, Arm.CANARY)
    top = BUCKETS
    for version in sorted(route.weights):
        low = top - route.weights[version] * _PER_PERCENT
        if low <= b < top:
            return Choice(version, Arm.WEIGHTED)
        top = low
    return Choice(route.stable, Arm.STABLE)


def mirror(route_name: str, route: Route, key: str | None, rng: random.Random) -> str | None:
    """The shadow version a request is mirrored to, if any."""
    if route.shadow is None or route.shadow.percent == 0:
        return None
    b = bucket(route_name, key, salt="shadow") if key else rng.randrange(BUCKETS)
    return route.shadow.version if b < route.shadow.percent * _PER_PERCENT else None
