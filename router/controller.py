"""The rollout controller: canaries advanced step by step, Argo Rollouts' way, from the gate's signals.

    set_weight N   write canary.weight = N, start counting the step
    pause          wait for duration_s and min_requests; without a duration, wait for a promote
    analysis       evaluate the gate (canary against stable, since the weight was set):
                     pass -> next step; fail (beyond failure_limit) -> abort: canary weight 0,
                     canary removed, the reason recorded; inconclusive (beyond its limit) -> pause
    (no more steps) promote: the canary becomes stable

`Controller.tick()` runs on the event loop; every read and write of the store (FileStore's files,
the ConfigMap store's API calls) runs in a thread, and the routes a change wrote are handed to
`on_change` back on the loop, so the gateway applies them where it serves. One lock orders ticks
and operators' `resume`, so neither overwrites the other's rollout state.

Gate sources: `LocalGateSource` (this gateway's own metrics) or `PrometheusGateSource` (every
replica's, summed). Only one controller may write: embedded in the one gateway on a machine (a
file lock, `LeaderLock`, elects one worker), or `lorafleet controller` in a cluster, with the
gateways only reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from monitor.gate import GateDecision, VersionSignals, evaluate_gate
from monitor.metrics import GateResult, Metrics
from monitor.signals import LocalSignals, PrometheusSignals, Snapshot
from router.errors import ConflictError, RouteNotFoundError, RoutesFileError
from router.policy import Analysis, Pause, Route, RoutesFile, SetWeight
from router.rollout import Clock, Rollouts, utcnow
from router.store import HistoryEvent, Progress, RolloutState

log = logging.getLogger("lorafleet.rollout")

T = TypeVar("T")


class GateSource(Protocol):
    """Canary and stable signals of a route since a moment (`mark` starts a step's count)."""

    def mark(self, route: str, canary: str, stable: str) -> None: ...

    async def __call__(
        self, route: str, canary: str, stable: str, since: dt.datetime
    ) -> tuple[VersionSignals, VersionSignals]: ...


class LocalGateSource:
    """Canary and stable signals from this gateway's own metrics, since the step's weight was set."""

    def __init__(self, signals: LocalSignals) -> None:
        self.signals = signals
        self.marks: dict[tuple[str, str, str], tuple[Snapshot, Snapshot]] = {}

    def mark(self, route: str, canary: str, stable: str) -> None:
        self.marks[(route, canary, stable)] = (
            self.signals.mark(route, canary),
            self.signals.mark(route, stable),
        )

    async def __call__(
        self, route: str, canary: str, stable: str, since: dt.datetime
    ) -> tuple[VersionSignals, VersionSignals]:
        key = (route, canary, stable)
        if key not in self.marks:  # a restarted controller: count from now on
            self.mark(route, canary, stable)
        c, s = self.marks[key]
        return self.signals.since(c), self.signals.since(s)


class PrometheusGateSource:
    """Canary and stable signals from Prometheus, summed over every gateway replica."""

    def __init__(self, base_url: str, client: httpx.AsyncClient, clock: Clock = utcnow) -> None:
        self.base_url = base_url
        self.client = client
        self.clock = clock

    def mark(self, route: str, canary: str, stable: str) -> None:
        pass

    async def __call__(
        self, route: str, canary: str, stable: str, since: dt.datetime
    ) -> tuple[VersionSignals, VersionSignals]:
        window = max((self.clock() - since).total_seconds(), 30.0)
        prom = PrometheusSignals(self.base_url, window, self.client)
        found = await prom.versions(route)
        empty = VersionSignals(requests=0)
        return found.get((route, canary), empty), found.get((route, stable), empty)


class Controller:
    """Advances canaries through their steps; the one writer of rollout progress."""

    def __init__(
        self,
        rollouts: Rollouts,
        source: GateSource,
        metrics: Metrics | None = None,
        actor: str = "controller",
        on_change: Callable[[RoutesFile], None] | None = None,
    ) -> None:
        self.rollouts = rollouts
        self.store = rollouts.store
        self.source = source
        self.metrics = metrics
        self.actor = actor
        self.clock: Clock = rollouts.clock
        self.on_change = on_change
        self._lock = asyncio.Lock()

    async def _change(self, change: Callable[..., RoutesFile | None], *args: Any, **kwargs: Any) -> None:
        """A change of the routes, made in a thread; the routes it wrote applied on the loop."""
        written = await asyncio.to_thread(change, *args, **kwargs)
        if written is not None and self.on_change is not None:
            self.on_change(written)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def tick(self) -> None:
        """One pass over every route: expire retired versions, advance each canary by at most one step."""
        async with self._lock:
            await self._tick()

    async def _tick(self) -> None:
        await self._change(self.rollouts.expire, self.actor)
        routes = await self._io(self.store.load)
        state = await self._io(self.store.load_state)
        changed = False
        for name in list(state.routes):
            route = routes.routes.get(name)
            if route is None or route.canary is None or route.canary.version != state.routes[name].version:
                del state.routes[name]
                changed = True
        for name, route in routes.routes.items():
            if self.metrics is not None:
                self.metrics.canary_weight.labels(name).set(
                    (route.canary.weight if route.canary else 0) / 100
                )
            if route.canary is None:
                if self.metrics is not None:
                    self.metrics.rollout_step.labels(name).set(-1)
                continue
            progress = state.routes.get(name)
            if progress is None:
                progress = Progress(version=route.canary.version, step_started_at=self.clock())
                state.routes[name] = progress
                self.source.mark(name, route.canary.version, route.stable)
                changed = True
            if self.metrics is not None:
                self.metrics.rollout_step.labels(name).set(progress.step)
            changed |= await self._advance(name, route, progress, state)
        if changed:
            await self._io(self.store.save_state, state)

    def _next(self, progress: Progress) -> None:
        progress.step += 1
        progress.step_started_at = self.clock()
        progress.failures = 0
        progress.inconclusive = 0
        progress.evaluated_at = None
        progress.paused = False
        progress.pause_reason = None

    async def _advance(self, name: str, route: Route, progress: Progress, state: RolloutState) -> bool:
        assert route.canary is not None
        if progress.paused:
            return False
        steps = route.canary.steps
        if progress.step >= len(steps):
            await self._change(self.rollouts.promote, name, self.actor, reason="every canary step passed")
            del state.routes[name]
            return True
        step = steps[progress.step]
        if isinstance(step, SetWeight):
            if route.canary.weight != step.weight:
                await self._change(
                    self.rollouts.set_canary_weight,
                    name,
                    step.weight,
                    self.actor,
                    f"step {progress.step + 1} of {len(steps)}",
                )
            self.source.mark(name, route.canary.version, route.stable)
            self._next(progress)
            progress.last_decision = None
            return True
        if isinstance(step, Pause):
            if step.duration_s is None:
                progress.paused = True
                progress.pause_reason = "waiting for `lorafleet route promote --step`"
                return True
            elapsed = (self.clock() - progress.step_started_at).total_seconds()
            if elapsed < step.duration_s:
                return False
            if step.min_requests:
                canary, _ = await self.source(
                    name, route.canary.version, route.stable, progress.step_started_at
                )
                if canary.requests < step.min_requests:
                    return False
            self._next(progress)
            return True
        assert isinstance(step, Analysis)
        now = self.clock()
        if (
            progress.evaluated_at is not None
            and (now - progress.evaluated_at).total_seconds() < step.interval_s
        ):
            return False
        progress.evaluated_at = now
        since = progress.step_started_at
        canary, stable = await self.source(name, route.canary.version, route.stable, since)
        decision = evaluate_gate(canary, stable, step.gate)
        progress.last_decision = _decision_view(decision, canary, stable)
        if self.metrics is not None:
            self.metrics.gate_decisions.labels(name, decision.result.value).inc()
        if decision.result is GateResult.PASS:
            await self._record_gate(name, "gate_pass", decision)
            self._next(progress)
            return True
        if decision.result is GateResult.FAIL:
            progress.failures += 1
            if progress.failures > step.failure_limit:
                reason = "canary gate failed: " + "; ".join(decision.reasons)
                await self._change(self.rollouts.abort, name, self.actor, reason, gate=True)
                del state.routes[name]
            return True
        progress.inconclusive += 1
        if step.inconclusive_limit and progress.inconclusive >= step.inconclusive_limit:
            progress.paused = True
            progress.pause_reason = "gate inconclusive: " + "; ".join(decision.reasons)
            await self._record_gate(name, "pause", decision)
        return True

    async def _record_gate(self, name: str, action: str, decision: GateDecision) -> None:
        revision = (await self._io(self.store.load)).revision
        event = HistoryEvent(
            at=self.clock(),
            route=name,
            action=action,
            actor=self.actor,
            reason="; ".join(decision.reasons) or decision.result.value,
            after={"checks": [c.model_dump(mode="json") for c in decision.checks]},
            revision=revision,
        )
        await self._io(self.store.append_history, event)

    async def resume(self, name: str, actor: str) -> RoutesFile:
        """`promote --step`: end the current pause (or inconclusive wait) and go to the next step."""
        async with self._lock:
            routes = await self._io(self.store.load)
            route = routes.routes.get(name)
            if route is None:
                raise RouteNotFoundError(name)
            if route.canary is None:
                raise ConflictError(f"route '{name}' has no canary")
            state = await self._io(self.store.load_state)
            progress = state.routes.get(name) or Progress(
                version=route.canary.version, step_started_at=self.clock()
            )
            self._next(progress)
            state.routes[name] = progress
            await self._io(self.store.save_state, state)
            event = HistoryEvent(
                at=self.clock(), route=name, action="resume", actor=actor, revision=routes.revision
            )
            await self._io(self.store.append_history, event)
            return routes

    async def run(self, interval_s: float) -> None:
        paused_by: str | None = None  # the routes file's error, logged once while it lasts
        while True:
            try:
                await self.tick()
                if paused_by is not None:
                    log.info("rollout controller resumed: the routes file is valid again")
                paused_by = None
            except RoutesFileError as exc:
                if exc.message != paused_by:
                    log.error("rollout controller paused until the routes file is valid: %s", exc.message)
                paused_by = exc.message
            except Exception:
                log.exception("rollout controller tick failed; trying again in %.0f s", interval_s)
            await asyncio.sleep(interval_s)


def _decision_view(decision: GateDecision, canary: VersionSignals, stable: VersionSignals) -> dict[str, Any]:
    return {
        "result": decision.result.value,
        "reasons": decision.reasons,
        "checks": [c.model_dump(mode="json") for c in decision.checks],
        "canary": canary.model_dump(),
        "stable": stable.model_dump(),
    }


class LeaderLock:
    """One controller per machine: the worker holding this file lock runs it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
