"""The routes file schema: short step forms, validation errors that name the field, live versions."""

import datetime as dt

import pytest

from router.errors import RoutesFileError
from router.policy import Analysis, Pause, RoutesFile, SetWeight, default_steps
from router.store import dump_routes, parse_routes

V1, V2 = "banking-v1-20261124", "banking-v2-20261125"


def test_argo_style_short_steps_expand() -> None:
    routes = parse_routes(
        f"""
routes:
  banking:
    stable: {V1}
    canary:
      version: {V2}
      steps:
        - set_weight: 10
        - pause: {{duration_s: 30, min_requests: 5}}
        - analysis: {{max_error_ratio: 0.02, failure_limit: 1}}
        - setWeight: 50
        - pause: {{}}
""",
        "routes.yaml",
    )
    steps = routes.routes["banking"].canary.steps  # type: ignore[union-attr]
    assert isinstance(steps[0], SetWeight) and steps[0].weight == 10
    assert isinstance(steps[1], Pause) and steps[1].duration_s == 30 and steps[1].min_requests == 5
    assert (
        isinstance(steps[2], Analysis)
        and steps[2].gate.max_error_ratio == 0.02
        and steps[2].failure_limit == 1
    )
    assert isinstance(steps[3], SetWeight) and steps[3].weight == 50
    assert isinstance(steps[4], Pause) and steps[4].duration_s is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("routes: {banking: {stable: not-a-version}}", "routes.banking.stable"),
        (f"routes: {{banking: {{stable: {V1}, weights: {{{V2}: 120}}}}}}", "routes.banking.weights"),
        (
            f"routes: {{banking: {{stable: {V1}, canary: {{version: {V2}, weight: 70}}, weights: {{banking-v3-20261125: 40}}}}}}",
            "routes.banking",
        ),
        (f"routes: {{banking: {{stable: {V1}, colour: red}}}}", "routes.banking.colour"),
        (f"routes: {{Bad Name: {{stable: {V1}}}}}", "routes"),
        ("routes: [1, 2]", "routes"),
        (f"routes: {{banking: {{stable: {V1}}}, cards: {{stable: {V2}, fallback: {V1}}}}}", "(top level)"),
    ],
)
def test_invalid_routes_name_the_field(text: str, field: str) -> None:
    with pytest.raises(RoutesFileError) as err:
        parse_routes(text, "routes.yaml")
    assert f"routes.yaml: {field}" in err.value.message


def test_the_canary_shorthand_asks_min_requests_of_the_pause_and_the_gate_alike() -> None:
    steps = default_steps([25, 50], duration_s=30, min_requests=7)
    assert [type(s) for s in steps] == [SetWeight, Pause, Analysis] * 2
    assert [s.weight for s in steps if isinstance(s, SetWeight)] == [25, 50]
    assert all(s.min_requests == 7 and s.duration_s == 30 for s in steps if isinstance(s, Pause))
    assert all(s.gate.min_requests == 7 for s in steps if isinstance(s, Analysis))


def test_not_yaml_is_a_clear_error() -> None:
    with pytest.raises(RoutesFileError, match="not valid YAML"):
        parse_routes("routes: {banking: [", "routes.yaml")


def test_live_versions_include_retiring_until_their_time() -> None:
    now = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    routes = parse_routes(
        f"""
routes:
  banking:
    stable: {V2}
    fallback: base
    retiring: {{{V1}: 2026-12-09T00:00:00Z}}
""",
        "r",
    )
    assert routes.live_versions(now) == {V2: ("banking", "stable"), V1: ("banking", "retiring")}
    assert V1 not in routes.live_versions(now + dt.timedelta(days=15))


def test_dump_and_parse_round_trip() -> None:
    routes = parse_routes(f"routes: {{banking: {{stable: {V1}, canary: {{version: {V2}}}}}}}", "r")
    assert parse_routes(dump_routes(routes), "r") == routes
    assert RoutesFile().routes == {}


def test_a_version_belongs_to_one_route() -> None:
    with pytest.raises(RoutesFileError) as err:
        parse_routes(
            f"routes: {{banking: {{stable: {V1}, pinned: [{V2}]}}, cards: {{stable: {V2}}}}}", "r.yaml"
        )
    assert err.value.message == (
        f"r.yaml: (top level): version {V2} is named by routes 'banking' and 'cards': a version belongs to one route"
    )
