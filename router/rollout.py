"""Changes to routes (set weights, canary, promote, rollback, shadow, pin, retire) and the controller.

Every change is one atomic write of the routes file at the revision the change was computed from
(a concurrent change makes it fail with StaleRevisionError: nothing is lost), followed by one line in
the append-only history. `Rollouts` makes the changes; `Controller.tick()` advances canaries step by
step, Argo Rollouts' way:

    set_weight N   write canary.weight = N, start counting the step
    pause          wait for duration_s and min_requests; without a duration, wait for a promote
    analysis       evaluate the gate (canary against stable, since the weight was set):
                     pass -> next step; fail (beyond failure_limit) -> abort: canary weight 0,
                     canary removed, the reason recorded; inconclusive (beyond its limit) -> pause
    (no more steps) promote: the canary becomes stable

Only one controller may write: embedded in the one gateway on a machine (a file lock elects one
worker), or `lorafleet controller` in a cluster, with the gateways only reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from lorafleet.errors import LorafleetError, describe_validation_error
from lorafleet.registry import AdapterRef, Registry
from monitor.gate import GateDecision, VersionSignals, evaluate_gate
from monitor.metrics import GateResult, Metrics
from monitor.signals import LocalSignals, PrometheusSignals, Snapshot
from router.errors import (
    BadRequestError,
    ConflictError,
    RouteNotFoundError,
    RoutesFileError,
    StaleRevisionError,
)
from router.policy import (
    BASE_FALLBACK,
    Analysis,
    Canary,
    Pause,
    Route,
    RoutesFile,
    SetWeight,
    Shadow,
    Step,
    check_route_name,
)
from router.store import HistoryEvent, Progress, RolloutState, RouteStore

log = logging.getLogger("lorafleet.rollout")

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _route_view(route: Route | None) -> dict[str, Any]:
    if route is None:
        return {}
    view: dict[str, Any] = {"stable": route.stable}
    if route.weights:
        view["weights"] = dict(route.weights)
    if route.canary:
        view["canary"] = {"version": route.canary.version, "weight": route.canary.weight}
    if route.shadow:
        view["shadow"] = {"version": route.shadow.version, "percent": route.shadow.percent}
    if route.pinned:
        view["pinned"] = sorted(route.pinned)
    if route.retiring:
        view["retiring"] = {v: until.isoformat() for v, until in sorted(route.retiring.items())}
    return view


class Rollouts:
    """Every change an operator (or the controller) makes to the routes."""

    def __init__(
        self,
        store: RouteStore,
        registry: Registry,
        metrics: Metrics | None = None,
        clock: Clock = utcnow,
        on_change: Callable[[RoutesFile], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.on_change = on_change

    def _check_version(self, version: str, param: str = "version") -> None:
        try:
            AdapterRef.parse(version)
            self.registry.get(version)
        except LorafleetError as exc:
            raise BadRequestError(f"{exc.message}", param=param, code="version_not_found") from None

    def _route(self, routes: RoutesFile, name: str) -> Route:
        route = routes.routes.get(name)
        if route is None:
            raise RouteNotFoundError(name)
        return route

    def _commit(
        self,
        routes: RoutesFile,
        name: str,
        new_route: Route | None,
        action: str,
        actor: str,
        reason: str,
        expected_revision: int | None,
    ) -> RoutesFile:
        """Write one route's change at the revision it was computed from, then record it."""
        expected = routes.revision if expected_revision is None else expected_revision
        if expected != routes.revision:
            raise StaleRevisionError(expected, routes.revision)
        before = routes.routes.get(name)
        new_routes = dict(routes.routes)
        if new_route is None:
            new_routes.pop(name, None)
        else:
            new_routes[name] = new_route
        # Validated whole, as a reader will parse it: model_copy alone checks nothing, and one bad
        # field written would make the file unreadable for every replica and every later write.
        try:
            candidate = RoutesFile.model_validate(
                {**routes.model_dump(), "routes": {k: r.model_dump() for k, r in new_routes.items()}}
            )
        except ValidationError as exc:
            raise BadRequestError(
                describe_validation_error(exc, "routes file"),
                param=".".join(str(p) for p in exc.errors()[0]["loc"]) or None,
            ) from None
        saved = self.store.save(candidate, expected)
        self.store.append_history(
            HistoryEvent(
                at=self.clock(),
                route=name,
                action=action,
                actor=actor,
                before=_route_view(before),
                after=_route_view(new_route),
                reason=reason,
                revision=saved.revision,
            )
        )
        if self.metrics is not None:
            self.metrics.rollout_events.labels(name, action).inc()
        log.info(
            "route %s: %s by %s (revision %s)%s",
            name,
            action,
            actor,
            saved.revision,
            f": {reason}" if reason else "",
        )
        if self.on_change is not None:
            self.on_change(saved)
        return saved

    def _retire(self, route: Route, version: str, routes: RoutesFile) -> dict[str, dt.datetime]:
        retiring = dict(route.retiring)
        retiring[version] = self.clock() + dt.timedelta(days=routes.retention_days)
        return retiring

    # --- operator actions ---------------------------------------------------------------

    def create(
        self, name: str, stable: str, fallback: str | None, actor: str, expected_revision: int | None = None
    ) -> RoutesFile:
        try:
            check_route_name(name)
        except ValueError as exc:
            raise BadRequestError(str(exc), param="route", code="invalid_route_name") from None
        routes = self.store.load()
        if name in routes.routes:
            raise ConflictError(f"route '{name}' exists already")
        self._check_version(stable, "stable")
        if fallback and fallback != BASE_FALLBACK:
            self._check_version(fallback, "fallback")
        return self._commit(
            routes, name, Route(stable=stable, fallback=fallback), "create", actor, "", expected_revision
        )

    def set_weights(
        self,
        name: str,
        weights: dict[str, int],
        actor: str,
        reason: str = "",
        expected_revision: int | None = None,
    ) -> RoutesFile:
        routes = self.store.load()
        route = self._route(routes, name)
        for version in weights:
            self._check_version(version, "weights")
        new = route.model_copy(update={"weights": {v: w for v, w in weights.items() if w > 0}})
        return self._commit(
            routes, name, self._validated(new), "set_weight", actor, reason, expected_revision
        )

    @staticmethod
    def _validated(route: Route) -> Route:
        try:
            return Route.model_validate(route.model_dump())
        except ValidationError as exc:
            raise BadRequestError(
                describe_validation_error(exc, "route"),
                param=".".join(str(p) for p in exc.errors()[0]["loc"]) or None,
            ) from None

    def start_canary(
        self,
        name: str,
        version: str,
        steps: list[Step] | None,
        actor: str,
        reason: str = "",
        expected_revision: int | None = None,
    ) -> RoutesFile:
        routes = self.store.load()
        route = self._route(routes, name)
        self._check_version(version)
        if route.canary is not None:
            raise ConflictError(
                f"route '{name}' already has a canary ({route.canary.version}); promote or abort it first"
            )
        canary = Canary(version=version) if steps is None else Canary(version=version, steps=steps)
        weights = {v: w for v, w in route.weights.items() if v != version}
        new = self._validated(route.model_copy(update={"canary": canary, "weights": weights}))
        return self._commit(routes, name, new, "canary", actor, reason, expected_revision)

    def set_canary_weight(self, name: str, weight: int, actor: str, reason: str = "") -> RoutesFile:
        routes = self.store.load()
        route = self._route(routes, name)
        if route.canary is None:
            raise ConflictError(f"route '{name}' has no canary")
        new = self._validated(
            route.model_copy(update={"canary": route.canary.model_copy(update={"weight": weight})})
        )
        return self._commit(routes, name, new, "set_weight", actor, reason, None)

    def promote(
        self,
        name: str,
        actor: str,
        version: str | None = None,
        reason: str = "",
        expected_revision: int | None = None,
    ) -> RoutesFile:
        """The canary (or `version`) becomes stable in one change; the old stable retires."""
        routes = self.store.load()
        route = self._route(routes, name)
        target = version or (route.canary.version if route.canary else None)
        if target is None:
            raise ConflictError(f"route '{name}' has no canary to promote; name a version")
        if target == route.stable:
            raise ConflictError(f"{target} is already the stable version of '{name}'")
        self._check_version(target)
        retiring = self._retire(route, route.stable, routes)
        retiring.pop(target, None)
        new = route.model_copy(
            update={
                "stable": target,
                "previous": route.stable,
                "canary": None,
                "weights": {v: w for v, w in route.weights.items() if v != target},
                "retiring": retiring,
                "shadow": None if route.shadow and route.shadow.version == target else route.shadow,
            }
        )
        return self._commit(routes, name, self._validated(new), "promote", actor, reason, expected_revision)

    def abort(self, name: str, actor: str, reason: str, gate: bool = False) -> RoutesFile:
        """Stop a canary: its weight goes to 0 and it leaves the route; it stays pinnable while retiring."""
        routes = self.store.load()
        route = self._route(routes, name)
        if route.canary is None:
            raise ConflictError(f"route '{name}' has no canary to abort")
        new = route.model_copy(
            update={"canary": None, "retiring": self._retire(route, route.canary.version, routes)}
        )
        if self.metrics is not None:
            self.metrics.rollbacks.labels(name, "gate" if gate else "manual").inc()
        return self._commit(routes, name, self._validated(new), "abort", actor, reason, None)

    def rollback(
        self, name: str, actor: str, reason: str = "", expected_revision: int | None = None
    ) -> RoutesFile:
        """Abort a running canary; or, with none, make the previous stable version stable again."""
        routes = self.store.load()
        route = self._route(routes, name)
        if route.canary is not None:
            return self.abort(name, actor, reason or "rollback", gate=False)
        if route.previous is None:
            raise ConflictError(f"route '{name}' has no previous stable version to roll back to")
        retiring = self._retire(route, route.stable, routes)
        retiring.pop(route.previous, None)
        new = route.model_copy(
            update={"stable": route.previous, "previous": route.stable, "retiring": retiring}
        )
        if self.metrics is not None:
            self.metrics.rollbacks.labels(name, "manual").inc()
        return self._commit(routes, name, self._validated(new), "rollback", actor, reason, expected_revision)

    def set_shadow(
        self,
        name: str,
        version: str | None,
        percent: int,
        actor: str,
        reason: str = "",
        expected_revision: int | None = None,
    ) -> RoutesFile:
        routes = self.store.load()
        route = self._route(routes, name)
        if version is not None:
            self._check_version(version)
        shadow = Shadow(version=version, percent=percent) if version else None
        new = self._validated(route.model_copy(update={"shadow": shadow}))
        return self._commit(routes, name, new, "shadow", actor, reason, expected_revision)

    def pin(
        self, name: str, version: str, actor: str, reason: str = "", expected_revision: int | None = None
    ) -> RoutesFile:
        """Keep `version` live and pinnable on the route (no share of its traffic)."""
        routes = self.store.load()
        route = self._route(routes, name)
        self._check_version(version)
        if version in route.pinned:
            return routes
        new = self._validated(route.model_copy(update={"pinned": [*route.pinned, version]}))
        return self._commit(routes, name, new, "pin", actor, reason, expected_revision)

    def retire(
        self, name: str, version: str, actor: str, reason: str = "", expected_revision: int | None = None
    ) -> RoutesFile:
        """Take a version off the route now (it is unloaded); the stable and the canary cannot be retired."""
        routes = self.store.load()
        route = self._route(routes, name)
        if version == route.stable or (route.canary and route.canary.version == version):
            raise ConflictError(
                f"{version} serves '{name}' as stable or canary; promote, roll back or abort first"
            )
        new = route.model_copy(
            update={
                "retiring": {v: t for v, t in route.retiring.items() if v != version},
                "pinned": [v for v in route.pinned if v != version],
                "weights": {v: w for v, w in route.weights.items() if v != version},
                "shadow": None if route.shadow and route.shadow.version == version else route.shadow,
                "fallback": None if route.fallback == version else route.fallback,
                "previous": None if route.previous == version else route.previous,
            }
        )
        return self._commit(routes, name, self._validated(new), "retire", actor, reason, expected_revision)

    def expire(self, actor: str = "controller") -> list[tuple[str, str]]:
        """Drop retiring versions whose retention is over; return (route, version) of each."""
        routes = self.store.load()
        now = self.clock()
        dropped = []
        for name, route in routes.routes.items():
            for version, until in route.retiring.items():
                if until <= now:
                    dropped.append((name, version))
        for name, version in dropped:
            routes = self.store.load()
            route = routes.routes[name]
            new = route.model_copy(
                update={"retiring": {v: t for v, t in route.retiring.items() if v != version}}
            )
            self._commit(routes, name, new, "expire", actor, f"retention of {version} is over", None)
        return dropped


SignalsFn = Callable[[str, str, str, dt.datetime], Awaitable[tuple[VersionSignals, VersionSignals]]]


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
        source: LocalGateSource | PrometheusGateSource,
        metrics: Metrics | None = None,
        actor: str = "controller",
    ) -> None:
        self.rollouts = rollouts
        self.store = rollouts.store
        self.source = source
        self.metrics = metrics
        self.actor = actor
        self.clock = rollouts.clock

    def _save(self, state: RolloutState) -> None:
        self.store.save_state(state)

    async def tick(self) -> None:
        """One pass over every route: expire retired versions, advance each canary by at most one step."""
        self.rollouts.expire(self.actor)
        routes = self.store.load()
        state = self.store.load_state()
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
            self._save(state)

    def _next(self, progress: Progress, route: Route) -> None:
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
            self.rollouts.promote(name, self.actor, reason="every canary step passed")
            del state.routes[name]
            return True
        step = steps[progress.step]
        if isinstance(step, SetWeight):
            if route.canary.weight != step.weight:
                self.rollouts.set_canary_weight(
                    name, step.weight, self.actor, f"step {progress.step + 1} of {len(steps)}"
                )
            self.source.mark(name, route.canary.version, route.stable)
            self._next(progress, route)
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
            self._next(progress, route)
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
            self._record_gate(name, "gate_pass", decision)
            self._next(progress, route)
            return True
        if decision.result is GateResult.FAIL:
            progress.failures += 1
            if progress.failures > step.failure_limit:
                reason = "canary gate failed: " + "; ".join(decision.reasons)
                self.rollouts.abort(name, self.actor, reason, gate=True)
                del state.routes[name]
            return True
        progress.inconclusive += 1
        if step.inconclusive_limit and progress.inconclusive >= step.inconclusive_limit:
            progress.paused = True
            progress.pause_reason = "gate inconclusive: " + "; ".join(decision.reasons)
            self._record_gate(name, "pause", decision)
        return True

    def _record_gate(self, name: str, action: str, decision: GateDecision) -> None:
        self.store.append_history(
            HistoryEvent(
                at=self.clock(),
                route=name,
                action=action,
                actor=self.actor,
                reason="; ".join(decision.reasons) or decision.result.value,
                after={"checks": [c.model_dump(mode="json") for c in decision.checks]},
                revision=self.store.load().revision,
            )
        )

    def resume(self, name: str, actor: str) -> RoutesFile:
        """`promote --step`: end the current pause (or inconclusive wait) and go to the next step."""
        routes = self.store.load()
        route = routes.routes.get(name)
        if route is None:
            raise RouteNotFoundError(name)
        if route.canary is None:
            raise ConflictError(f"route '{name}' has no canary")
        state = self.store.load_state()
        progress = state.routes.get(name) or Progress(
            version=route.canary.version, step_started_at=self.clock()
        )
        self._next(progress, route)
        state.routes[name] = progress
        self._save(state)
        self.store.append_history(
            HistoryEvent(at=self.clock(), route=name, action="resume", actor=actor, revision=routes.revision)
        )
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
