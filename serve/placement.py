"""Which engine holds which adapter version: a pure function of what is wanted and what exists.

    place(wanted, engines) -> Placement(on={engine url: set of versions}, unplaced={version: reason})

Rules, in order:
- a version goes only to engines of its base (same fingerprint). A version or an engine whose base
  is not known (registered before fingerprints; an engine started without lorafleet's alias) is
  taken as compatible with any, and `serve status` says it is unverified;
- `all` (the default): every engine of its base; `spread`: a number of them that follows the
  version's traffic share, ceil(share x engines of its base), at least one;
- an engine holds at most `capacity` versions (its adapter slots; vLLM's --max-loras). Versions
  with the larger traffic share are placed first, so a full fleet drops the quiet ones, and says so;
- among the engines it may go to, a version prefers those that already hold it (no reload), then
  those holding fewer versions, then the URL (a stable order, so every gateway replica computes the
  same placement).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class Spread(enum.StrEnum):
    ALL = "all"
    SPREAD = "spread"


@dataclass(frozen=True)
class Wanted:
    """A live version: its base fingerprint (None: unknown), traffic share (0-1) and placement."""

    fingerprint: str | None
    share: float = 1.0
    spread: Spread = Spread.ALL


@dataclass(frozen=True)
class EngineSlots:
    """A healthy engine as placement sees it."""

    url: str
    fingerprint: str | None
    capacity: int
    holds: frozenset[str] = frozenset()


@dataclass
class Placement:
    on: dict[str, set[str]] = field(default_factory=dict)  # engine url -> versions it should hold
    unplaced: dict[str, str] = field(default_factory=dict)  # version -> why it is on no engine
    short: dict[str, str] = field(default_factory=dict)  # version -> why it is on fewer engines than asked

    def engines_of(self, version: str) -> list[str]:
        return sorted(url for url, versions in self.on.items() if version in versions)


def compatible(version_fp: str | None, engine_fp: str | None) -> bool:
    return version_fp is None or engine_fp is None or version_fp == engine_fp


def place(wanted: Mapping[str, Wanted], engines: Sequence[EngineSlots]) -> Placement:
    out = Placement(on={e.url: set() for e in engines})
    order = sorted(wanted, key=lambda v: (-wanted[v].share, v))
    for version in order:
        want = wanted[version]
        same_base = [e for e in engines if compatible(want.fingerprint, e.fingerprint)]
        if not same_base:
            bases = sorted({e.fingerprint or "unverified" for e in engines}) or ["none"]
            out.unplaced[version] = (
                f"no engine serves its base ({want.fingerprint}); engines serve: {', '.join(bases)}"
            )
            continue
        count = len(same_base)
        if want.spread is Spread.SPREAD:
            count = max(1, min(count, math.ceil(want.share * len(same_base) - 1e-9)))
        free = [e for e in same_base if len(out.on[e.url]) < e.capacity]
        free.sort(key=lambda e: (version not in e.holds, len(out.on[e.url]), e.url))
        chosen = free[:count]
        for e in chosen:
            out.on[e.url].add(version)
        if not chosen:
            out.unplaced[version] = (
                f"every engine of its base is full ({', '.join(f'{e.url}: {e.capacity}' for e in same_base)} "
                "adapter slots)"
            )
        elif len(chosen) < count:
            out.short[version] = f"on {len(chosen)} of the {count} engines asked: the others are full"
    return out
