"""Placement of adapter versions on engines: a pure function, tested directly."""

from __future__ import annotations

from serve.placement import EngineSlots, Spread, Wanted, place

LLAMA, MISTRAL = "1111111111111111", "2222222222222222"


def engines(*specs: tuple[str, str | None, int]) -> list[EngineSlots]:
    return [EngineSlots(url, fp, slots) for url, fp, slots in specs]


def test_each_version_only_on_engines_of_its_base() -> None:
    fleet = engines(("a", LLAMA, 4), ("b", LLAMA, 4), ("c", MISTRAL, 4))
    p = place({"l1": Wanted(LLAMA), "m1": Wanted(MISTRAL)}, fleet)
    assert p.engines_of("l1") == ["a", "b"] and p.engines_of("m1") == ["c"]
    assert not p.unplaced


def test_a_base_nobody_serves_is_unplaced_with_the_bases_named() -> None:
    p = place({"x": Wanted("3333333333333333")}, engines(("a", LLAMA, 4), ("b", MISTRAL, 4)))
    assert p.engines_of("x") == []
    assert LLAMA in p.unplaced["x"] and MISTRAL in p.unplaced["x"] and "3333333333333333" in p.unplaced["x"]


def test_unknown_bases_are_compatible_with_any() -> None:
    p = place({"old": Wanted(None), "new": Wanted(LLAMA)}, engines(("a", LLAMA, 4), ("u", None, 4)))
    assert p.engines_of("old") == ["a", "u"] and p.engines_of("new") == ["a", "u"]


def test_spread_follows_the_traffic_share() -> None:
    fleet = engines(*((f"e{i}", LLAMA, 8) for i in range(4)))
    wanted = {
        "stable": Wanted(LLAMA, 0.9, Spread.SPREAD),
        "canary": Wanted(LLAMA, 0.1, Spread.SPREAD),
        "pinned": Wanted(LLAMA, 0.0, Spread.SPREAD),
        "half": Wanted(LLAMA, 0.5, Spread.SPREAD),
    }
    p = place(wanted, fleet)
    assert len(p.engines_of("stable")) == 4  # ceil(0.9 x 4)
    assert len(p.engines_of("half")) == 2
    assert len(p.engines_of("canary")) == 1 and len(p.engines_of("pinned")) == 1  # at least one


def test_capacity_drops_the_quietest_versions_and_says_why() -> None:
    fleet = engines(("a", LLAMA, 2), ("b", LLAMA, 2))
    wanted = {"busy": Wanted(LLAMA, 0.8), "mid": Wanted(LLAMA, 0.2), "quiet": Wanted(LLAMA, 0.0)}
    p = place(wanted, fleet)
    assert p.engines_of("busy") == ["a", "b"] and p.engines_of("mid") == ["a", "b"]
    assert p.engines_of("quiet") == [] and "full" in p.unplaced["quiet"] and "a: 2" in p.unplaced["quiet"]
    assert all(len(v) <= 2 for v in p.on.values())


def test_spread_uses_free_slots_and_reports_a_shortfall() -> None:
    fleet = engines(("a", LLAMA, 1), ("b", LLAMA, 2))
    wanted = {
        "one": Wanted(LLAMA, 0.6),
        "two": Wanted(LLAMA, 0.4, Spread.SPREAD),
        "three": Wanted(LLAMA, 0.3),
    }
    p = place(wanted, fleet)
    assert p.engines_of("one") == ["a", "b"]
    assert p.engines_of("two") == ["b"]  # a is full
    assert p.engines_of("three") == []
    assert "three" in p.unplaced


def test_engines_that_already_hold_a_version_are_preferred() -> None:
    fleet = [
        EngineSlots("a", LLAMA, 4),
        EngineSlots("b", LLAMA, 4, frozenset({"v"})),
        EngineSlots("c", LLAMA, 4),
    ]
    p = place({"v": Wanted(LLAMA, 0.1, Spread.SPREAD)}, fleet)
    assert p.engines_of("v") == ["b"]


def test_ties_break_on_load_then_url_so_every_replica_agrees() -> None:
    fleet = engines(("b", LLAMA, 4), ("a", LLAMA, 4))
    wanted = {"x": Wanted(LLAMA, 0.2, Spread.SPREAD), "y": Wanted(LLAMA, 0.1, Spread.SPREAD)}
    first = place(wanted, fleet)
    assert first.engines_of("x") == ["a"] and first.engines_of("y") == ["b"]  # y goes to the emptier one
    assert place(wanted, list(reversed(fleet))).on == first.on


def test_an_engine_joining_gets_its_placement_and_one_leaving_moves_nothing_else() -> None:
    wanted = {"v1": Wanted(LLAMA, 0.9), "v2": Wanted(LLAMA, 0.1)}
    before = place(wanted, engines(("a", LLAMA, 4)))
    joined = place(wanted, [*engines(("a", LLAMA, 4)), EngineSlots("b", LLAMA, 4)])
    assert joined.on["b"] == {"v1", "v2"} and joined.on["a"] == before.on["a"]
    left = place(wanted, engines(("b", LLAMA, 4)))
    assert left.on == {"b": {"v1", "v2"}}


def test_nothing_wanted_or_no_engines() -> None:
    assert place({}, engines(("a", LLAMA, 4))).on == {"a": set()}
    p = place({"v": Wanted(LLAMA)}, [])
    assert p.on == {} and "none" in p.unplaced["v"]
