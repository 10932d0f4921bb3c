"""The operators' changes to routes: create, set weights, canary, promote, rollback, shadow, pin, retire.

Every change is one atomic write of the routes file at the revision the change was computed from
(a concurrent change makes it fail with StaleRevisionError: nothing is lost), followed by one line in
the append-only history, and returns the routes as written. `Rollouts` does blocking store I/O:
on the event loop, call it in a thread and apply what it returns on the loop (router/admin.py,
router/controller.py do). The controller that advances canaries step by step is router/controller.py.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from lorafleet.baseid import BaseIdentity
from lorafleet.errors import LorafleetError, describe_validation_error
from lorafleet.registry import AdapterRef, Registry
from monitor.metrics import Metrics
from router.errors import BadRequestError, ConflictError, RouteNotFoundError, StaleRevisionError
from router.policy import BASE_FALLBACK, Canary, Route, RoutesFile, Shadow, Step, check_route_name
from router.store import HistoryEvent, RouteStore

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
    if route.enforce_labels:
        view["enforce_labels"] = True
    return view


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


class Rollouts:
    """Every change an operator (or the controller) makes to the routes."""

    def __init__(
        self,
        store: RouteStore,
        registry: Registry,
        metrics: Metrics | None = None,
        clock: Clock = utcnow,
        bases_served: Callable[[], Mapping[str, BaseIdentity]] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.bases_served = bases_served

    def _check_base(self, version: str, param: str = "version") -> None:
        """Refuse a version whose base model no engine serves (when the engines say which they serve)."""
        if self.bases_served is None:
            return
        served = self.bases_served()
        try:
            base = self.registry.get(version).info().base
        except (LorafleetError, OSError, ValueError):
            return
        if base is None or not served or base.fingerprint in served:
            return
        raise BadRequestError(
            f"{version} is an adapter of {base}, which no engine serves; the engines serve "
            f"{', '.join(str(b) for b in served.values())}. Start an engine of that base "
            "(lorafleet serve engine --base-model FOLDER), or name a version trained on a served base",
            param=param,
            code="base_not_served",
        )

    def _check_version(self, version: str, param: str = "version") -> None:
        try:
            AdapterRef.parse(version)
            self.registry.get(version)
        except LorafleetError as exc:
            raise BadRequestError(f"{exc.message}", param=param, code="version_not_found") from None
        self._check_base(version, param)

    def _check_helped(self, version: str, force: bool, param: str = "version") -> str:
        """Refuse a version whose evaluation said fine-tuning did not help, unless `force`; what
        the history records about it ("" when there is nothing to say)."""
        try:
            info = self.registry.get(version).info()
        except (LorafleetError, OSError, ValueError) as exc:
            # No verdict to hold against it; the registry's own checks report the broken file.
            log.warning("%s: no verdict read from its version.json (%s)", version, str(exc).splitlines()[0])
            return ""
        if info.helped is not False:
            return ""
        if not force:
            raise BadRequestError(
                f"{version} did not help: {info.verdict or 'its evaluation found no real gain over the baseline'}; "
                "serve it anyway with --force (the route's history records it)",
                param=param,
                code="did_not_help",
            )
        return f"forced past its verdict: {version} did not help"

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
        return saved

    def _retire(self, route: Route, version: str, routes: RoutesFile) -> dict[str, dt.datetime]:
        retiring = dict(route.retiring)
        retiring[version] = self.clock() + dt.timedelta(days=routes.retention_days)
        return retiring

    # --- operator actions ---------------------------------------------------------------

    def create(
        self,
        name: str,
        stable: str,
        fallback: str | None,
        actor: str,
        expected_revision: int | None = None,
        enforce_labels: bool = False,
        force: bool = False,
    ) -> RoutesFile:
        try:
            check_route_name(name)
        except ValueError as exc:
            raise BadRequestError(str(exc), param="route", code="invalid_route_name") from None
        routes = self.store.load()
        if name in routes.routes:
            raise ConflictError(f"route '{name}' exists already")
        self._check_version(stable, "stable")
        forced = self._check_helped(stable, force, "stable")
        if fallback and fallback != BASE_FALLBACK:
            self._check_version(fallback, "fallback")
        route = Route(stable=stable, fallback=fallback, enforce_labels=enforce_labels)
        return self._commit(routes, name, route, "create", actor, forced, expected_revision)

    def set_enforce_labels(
        self, name: str, enforce: bool, actor: str, reason: str = "", expected_revision: int | None = None
    ) -> RoutesFile:
        """Make the route's label-task versions answer with one of their labels (or stop)."""
        routes = self.store.load()
        route = self._route(routes, name)
        new = route.model_copy(update={"enforce_labels": enforce})
        return self._commit(routes, name, new, "enforce_labels", actor, reason, expected_revision)

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
        force: bool = False,
    ) -> RoutesFile:
        routes = self.store.load()
        route = self._route(routes, name)
        self._check_version(version)
        reason = _joined(reason, self._check_helped(version, force))
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
        force: bool = False,
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
        reason = _joined(reason, self._check_helped(target, force))
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

    def expire(self, actor: str = "controller") -> RoutesFile | None:
        """Drop retiring versions whose retention is over; the routes as written, None if none was."""
        routes = self.store.load()
        now = self.clock()
        dropped = []
        for name, route in routes.routes.items():
            for version, until in route.retiring.items():
                if until <= now:
                    dropped.append((name, version))
        written = None
        for name, version in dropped:
            routes = self.store.load()
            route = routes.routes[name]
            new = route.model_copy(
                update={"retiring": {v: t for v, t in route.retiring.items() if v != version}}
            )
            written = self._commit(
                routes, name, new, "expire", actor, f"retention of {version} is over", None
            )
        return written
