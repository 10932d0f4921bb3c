"""The rollout controller's state machine, driven tick by tick: a real FileStore in a temporary
folder, a clock the test moves, and a scripted gate source that answers what each test needs."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafleet.registry import Registry
from monitor.gate import GateThresholds, VersionSignals
from router.controller import Controller
from router.policy import Analysis, Pause, RoutesFile, SetWeight, Step
from router.rollout import Rollouts
from router.store import FileStore

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
STABLE = VersionSignals(requests=100, p95_latency_s=0.2)
PASS = (VersionSignals(requests=100, p95_latency_s=0.2), STABLE)
FAIL = (VersionSignals(requests=100, errors=50, p95_latency_s=0.2), STABLE)
INCONCLUSIVE = (VersionSignals(requests=0), STABLE)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class ScriptedSource:
    """A SCRIPTED GATE SOURCE: answers each evaluation with the next (canary, stable) signals."""

    def __init__(self, *answers: tuple[VersionSignals, VersionSignals]) -> None:
        self.answers = list(answers)
        self.asked = 0
        self.marks: list[tuple[str, str, str]] = []

    def mark(self, route: str, canary: str, stable: str) -> None:
        self.marks.append((route, canary, stable))

    async def __call__(
        self, route: str, canary: str, stable: str, since: dt.datetime
    ) -> tuple[VersionSignals, VersionSignals]:
        self.asked += 1
        return self.answers.pop(0)


class Rig:
    def __init__(self, tmp_path: Path, registry: Registry, source: ScriptedSource) -> None:
        self.clock = Clock()
        self.store = FileStore(tmp_path / "routes.yaml")
        self.rollouts = Rollouts(self.store, registry, clock=self.clock)
        self.applied: list[tuple[int, bool]] = []  # (revision, on the loop's thread)
        self.loop_thread: int | None = None
        self.controller = Controller(self.rollouts, source, on_change=self._applied)

    def _applied(self, routes: RoutesFile) -> None:
        self.applied.append((routes.revision, threading.get_ident() == self.loop_thread))

    def start(self, stable: str, canary: str, steps: list[Step]) -> None:
        self.rollouts.create("banking", stable, None, "test")
        self.rollouts.start_canary("banking", canary, steps, "test")

    def tick(self, times: int = 1) -> None:
        async def run() -> None:
            self.loop_thread = threading.get_ident()
            for _ in range(times):
                await self.controller.tick()
                self.clock.advance(11)  # past an analysis' interval_s (10 s)

        asyncio.run(run())

    def route(self) -> dict[str, object]:
        route = self.store.load().routes["banking"]
        return {
            "stable": route.stable,
            "canary": None if route.canary is None else (route.canary.version, route.canary.weight),
        }

    def progress(self) -> dict[str, object] | None:
        state = self.store.load_state().routes.get("banking")
        return None if state is None else state.model_dump()

    def actions(self) -> list[str]:
        return [e.action for e in self.store.history("banking")]


@pytest.fixture
def rig(tmp_path: Path, versions: tuple[Registry, list[str]]) -> Iterator[Rig]:
    registry, _ = versions
    yield Rig(tmp_path, registry, ScriptedSource())


def _analysis(failure_limit: int = 0, inconclusive_limit: int = 30) -> Analysis:
    return Analysis(gate=GateThresholds(), failure_limit=failure_limit, inconclusive_limit=inconclusive_limit)


def test_every_step_passed_promotes_the_canary(rig: Rig, versions: tuple[Registry, list[str]]) -> None:
    _, (v1, v2) = versions
    rig.controller.source = source = ScriptedSource(PASS, PASS)
    rig.start(v1, v2, [SetWeight(weight=10), _analysis(), SetWeight(weight=50), _analysis()])
    rig.tick()
    assert rig.route() == {"stable": v1, "canary": (v2, 10)}
    rig.tick(4)
    assert rig.route() == {"stable": v2, "canary": None}
    assert rig.progress() is None
    assert source.asked == 2
    assert rig.actions() == [
        "create",
        "canary",
        "set_weight",
        "gate_pass",
        "set_weight",
        "gate_pass",
        "promote",
    ]
    # Each change the controller wrote was applied on the event loop, in the order written.
    assert [on_loop for _, on_loop in rig.applied] == [True] * 3
    assert [revision for revision, _ in rig.applied] == sorted(r for r, _ in rig.applied)


def test_failures_up_to_the_limit_then_abort(rig: Rig, versions: tuple[Registry, list[str]]) -> None:
    _, (v1, v2) = versions
    rig.controller.source = ScriptedSource(FAIL, FAIL)
    rig.start(v1, v2, [SetWeight(weight=10), _analysis(failure_limit=1)])
    rig.tick(2)
    assert rig.route() == {"stable": v1, "canary": (v2, 10)}  # one failure tolerated
    progress = rig.progress()
    assert progress is not None and progress["failures"] == 1
    rig.tick()
    assert rig.route() == {"stable": v1, "canary": None}
    assert rig.progress() is None
    assert rig.actions()[-1] == "abort"
    event = rig.store.history("banking")[-1]
    assert "canary gate failed" in event.reason and "error ratio" in event.reason
    assert v2 in rig.store.load().routes["banking"].retiring  # still pinnable while it retires


def test_inconclusive_up_to_the_limit_pauses_and_a_resume_goes_on(
    rig: Rig, versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    rig.controller.source = source = ScriptedSource(INCONCLUSIVE, INCONCLUSIVE)
    rig.start(v1, v2, [SetWeight(weight=10), _analysis(inconclusive_limit=2), SetWeight(weight=60)])
    rig.tick(3)
    progress = rig.progress()
    assert progress is not None and progress["paused"] and progress["step"] == 1
    assert "gate inconclusive" in str(progress["pause_reason"])
    rig.tick(3)  # paused: nothing moves, the gate is not asked again
    assert source.asked == 2 and rig.route() == {"stable": v1, "canary": (v2, 10)}
    asyncio.run(rig.controller.resume("banking", "operator"))
    rig.tick()
    assert rig.route() == {"stable": v1, "canary": (v2, 60)}
    assert rig.actions()[-3:] == ["pause", "resume", "set_weight"]


def test_a_pause_without_a_duration_waits_for_a_resume(
    rig: Rig, versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    rig.start(v1, v2, [SetWeight(weight=25), Pause()])
    rig.tick(5)
    progress = rig.progress()
    assert progress is not None and progress["paused"] and progress["step"] == 1
    assert rig.route() == {"stable": v1, "canary": (v2, 25)}
    asyncio.run(rig.controller.resume("banking", "operator"))
    rig.tick()
    assert rig.route() == {"stable": v2, "canary": None}


def test_a_timed_pause_ends_after_its_duration(rig: Rig, versions: tuple[Registry, list[str]]) -> None:
    _, (v1, v2) = versions
    rig.start(v1, v2, [SetWeight(weight=25), Pause(duration_s=30)])
    rig.tick(3)  # the weight set, then 11 s and 22 s into the pause
    assert rig.route()["canary"] == (v2, 25)
    rig.tick(2)  # 33 s: the pause is over; then no step is left
    assert rig.route() == {"stable": v2, "canary": None}


def test_a_canary_aborted_by_an_operator_mid_rollout_leaves_no_progress(
    rig: Rig, versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    rig.controller.source = ScriptedSource(INCONCLUSIVE, INCONCLUSIVE)
    rig.start(v1, v2, [SetWeight(weight=10), _analysis()])
    rig.tick(2)
    assert rig.progress() is not None
    rig.rollouts.abort("banking", "operator", "changed my mind")
    rig.tick()
    assert rig.progress() is None and rig.route() == {"stable": v1, "canary": None}
