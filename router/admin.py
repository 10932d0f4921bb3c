"""The admin API under /admin: rollout status and changes. Every path requires the bearer token
(checked by router/auth.py before routing, whatever the path spelling).

    GET  /admin/status                      routes, versions and their states, canary progress, engines
    GET  /admin/routes                      the routes file as JSON (with its revision)
    GET  /admin/history?route=&limit=       the append-only change history
    GET  /admin/monitor                     per version: traffic, errors, latency, entropy, drift, live accuracy
    POST /admin/routes/{route}              create a route      {stable, fallback?}
    POST /admin/routes/{route}/weights      fixed shares        {weights: {version: percent}}
    POST /admin/routes/{route}/canary       start a canary      {version, steps? | weights?, step_duration_s?, min_requests?}
    POST /admin/routes/{route}/promote      canary -> stable    {version?, step?: true = only end the current pause}
    POST /admin/routes/{route}/rollback     abort the canary, or back to the previous stable
    POST /admin/routes/{route}/abort        abort the canary
    POST /admin/routes/{route}/shadow       mirror traffic      {version | null, percent?}
    POST /admin/routes/{route}/pin          keep a version live for pinned requests {version}
    POST /admin/routes/{route}/retire       unload a retiring/pinned/weighted version now {version}
    POST /admin/routes/{route}/labels       answers restricted to the version's labels {enforce}

Writes take an optional `revision` (the one the caller read; a stale one gives 409) and `reason`;
the actor comes from the X-Lorafleet-Actor header.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import JSONResponse

from lorafleet.errors import describe_validation_error
from monitor.accuracy import wilson_interval
from monitor.gate import MIN_REQUESTS
from monitor.metrics import VersionState
from monitor.signals import LocalSignals, Snapshot
from router.auth import require_admin
from router.controller import Controller
from router.errors import BadRequestError, ConflictError
from router.gateway import Gateway
from router.openai_api import read_json
from router.policy import RoutesFile, Shadow, Step, default_steps
from router.rollout import Rollouts
from router.settings import ControllerMode

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

# What the label-based live signals do, per kind of version (docs/monitoring.md, "Tasks without labels").
LABEL_SIGNALS = (
    "answers matched to the version's labels: predicted-label drift, answers outside the label set, "
    "live accuracy as the named label against the feedback's label"
)
TEXT_SIGNALS = (
    "not a label task (no label set in its reference statistics): no predicted-label drift and no "
    "outside-the-label-set count; live accuracy compares the feedback's label with the whole normalised answer"
)

ACTOR_HEADER = "x-lorafleet-actor"
_B = TypeVar("_B", bound=BaseModel)


class _Write(BaseModel):
    revision: int | None = Field(default=None, description="The revision the change is based on.")
    reason: str = ""


class _Forcing(_Write):
    force: bool = Field(default=False, description="Serve a version whose verdict is 'did not help'.")


class CreateBody(_Forcing):
    stable: str
    fallback: str | None = None
    enforce_labels: bool = False


class LabelsBody(_Write):
    enforce: bool


class WeightsBody(_Write):
    weights: dict[str, int]


class CanaryBody(_Forcing):
    version: str
    steps: list[Step] | None = None
    weights: list[int] | None = Field(
        default=None, description="Shorthand: set_weight/pause/analysis per weight."
    )
    step_duration_s: float = Field(default=60.0, ge=0)
    min_requests: int = Field(default=MIN_REQUESTS, ge=0)


class PromoteBody(_Forcing):
    version: str | None = None
    step: bool = Field(default=False, description="Only end the current pause and go on to the next step.")


class ShadowBody(_Write):
    version: str | None
    percent: int = Field(default=100, ge=0, le=100)


class VersionBody(_Write):
    version: str


async def _parse(request: Request, model: type[_B]) -> _B:
    """The body as `model`; no body at all (`curl -X POST .../rollback`) means `{}`."""
    body = await read_json(request, 1 << 20, empty={})
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise BadRequestError(describe_validation_error(exc, "body")) from None


def _state(request: Request) -> tuple[Gateway, Rollouts, Controller | None]:
    app_state = request.app.state
    return app_state.gateway, app_state.rollouts, getattr(app_state, "controller", None)


def _actor(request: Request) -> str:
    return (request.headers.get(ACTOR_HEADER) or "admin")[:100]


def _check_writer(request: Request) -> Gateway:
    gateway, _, _ = _state(request)
    if gateway.settings.controller is ControllerMode.EXTERNAL and not getattr(
        request.app.state, "is_controller", False
    ):
        raise ConflictError("this gateway only reads the routes; send changes to the rollout controller")
    return gateway


async def _written(request: Request, gateway: Gateway, routes: RoutesFile) -> JSONResponse:
    gateway.apply(routes)  # on the loop, where requests read the routes
    return JSONResponse({"revision": routes.revision, "status": await status(request)})


async def _write(request: Request, change: Callable[[], RoutesFile]) -> JSONResponse:
    """Make a change of the routes (blocking store I/O, in a thread) and apply it here."""
    gateway = _check_writer(request)
    return await _written(request, gateway, await asyncio.to_thread(change))


async def status(request: Request) -> dict[str, Any]:
    gateway, rollouts, _ = _state(request)
    state = await asyncio.to_thread(rollouts.store.load_state)
    now = gateway.clock()
    routes: dict[str, Any] = {}
    for name, route in gateway.routes.routes.items():
        versions = []
        for version, s in sorted(route.live(now).items(), key=lambda kv: kv[1]):
            entry: dict[str, Any] = {
                "version": version,
                "state": s,
                "loaded_on": [e.url for e in gateway.fleet.holders(version)],
                "load_failures": {
                    e.url: e.failures[version].reason
                    for e in gateway.fleet.engines.values()
                    if version in e.failures
                },
            }
            if version in gateway.missing_versions:
                entry["registry_error"] = gateway.missing_versions[version]
            base = gateway.base_of(version)
            entry["base"] = base
            entry["placed_on"] = gateway.fleet.placement.engines_of(version)
            why = gateway.fleet.placement.unplaced.get(version) or gateway.fleet.placement.short.get(version)
            if why:
                entry["placement_problem"] = why
            if s is VersionState.RETIRING:
                entry["until"] = route.retiring[version].isoformat()
            if s in (VersionState.STABLE, VersionState.CANARY, VersionState.WEIGHTED):
                entry["weight"] = (
                    route.weights.get(version)
                    if s is VersionState.WEIGHTED
                    else route.canary.weight
                    if s is VersionState.CANARY and route.canary
                    else 100 - sum(route.weights.values()) - (route.canary.weight if route.canary else 0)
                )
            versions.append(entry)
        progress = state.routes.get(name)
        routes[name] = {
            "stable": route.stable,
            "previous": route.previous,
            "fallback": route.fallback,
            "canary": None
            if route.canary is None
            else {
                "version": route.canary.version,
                "weight": route.canary.weight,
                "steps": [s.model_dump() for s in route.canary.steps],
                "progress": None if progress is None else progress.model_dump(mode="json"),
            },
            "shadow": None if route.shadow is None else await _shadow_view(gateway, name, route.shadow),
            "enforce_labels": route.enforce_labels,
            "versions": versions,
        }
    return {
        "revision": gateway.routes.revision,
        "reload_error": gateway.reload_error,
        "now": now.isoformat(),
        "routes": routes,
        "engines": [
            {**engine, "connections": dataclasses.asdict(gateway.transport.stats(str(engine["url"])))}
            for engine in gateway.fleet.status()
        ],
    }


async def _shadow_view(gateway: Gateway, route: str, shadow: Shadow) -> dict[str, Any]:
    """The shadow and its accuracy: feedback with a label on the primary's answers scores the
    shadow's answers to the same requests too (monitor/feedback/store.py)."""
    view: dict[str, Any] = shadow.model_dump()
    store = gateway.observer.feedback_store
    if store is None:
        return view
    correct, total = await asyncio.to_thread(
        store.rolling, route, shadow.version, gateway.settings.accuracy_window
    )
    low, high = wilson_interval(correct, total) if total else (None, None)
    view["accuracy"] = {
        "correct": correct,
        "total": total,
        "ratio": correct / total if total else None,
        "interval": [low, high] if total else None,
    }
    return view


@router.get("/status")
async def get_status(request: Request) -> JSONResponse:
    return JSONResponse(await status(request))


@router.get("/routes")
async def get_routes(request: Request) -> JSONResponse:
    gateway, _, _ = _state(request)
    return JSONResponse(gateway.routes.model_dump(mode="json"))


@router.get("/history")
async def get_history(request: Request, route: str | None = None, limit: int = 50) -> JSONResponse:
    _, rollouts, _ = _state(request)
    events = await asyncio.to_thread(rollouts.store.history, route, max(1, min(limit, 1000)))
    return JSONResponse({"events": [e.model_dump(mode="json") for e in events]})


@router.post("/reload")
async def reload(request: Request) -> JSONResponse:
    gateway, _, _ = _state(request)
    await gateway.reload(force=True)
    return JSONResponse({"revision": gateway.routes.revision, "reload_error": gateway.reload_error})


@router.post("/routes/{route}")
async def create_route(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, CreateBody)
    _, rollouts, _ = _state(request)
    return await _write(
        request,
        lambda: rollouts.create(
            route, body.stable, body.fallback, _actor(request), body.revision, body.enforce_labels, body.force
        ),
    )


@router.post("/routes/{route}/weights")
async def set_weights(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, WeightsBody)
    _, rollouts, _ = _state(request)
    return await _write(
        request,
        lambda: rollouts.set_weights(route, body.weights, _actor(request), body.reason, body.revision),
    )


@router.post("/routes/{route}/canary")
async def start_canary(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, CanaryBody)
    _, rollouts, _ = _state(request)
    steps = body.steps
    if steps is None and body.weights:
        if any(not 0 <= w <= 100 for w in body.weights):
            raise BadRequestError("canary weights are whole percents from 0 to 100", param="weights")
        steps = default_steps(body.weights, body.step_duration_s, body.min_requests)
    return await _write(
        request,
        lambda: rollouts.start_canary(
            route, body.version, steps, _actor(request), body.reason, body.revision, body.force
        ),
    )


@router.post("/routes/{route}/promote")
async def promote(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, PromoteBody)
    _, rollouts, controller = _state(request)
    if body.step:
        if controller is None:
            raise ConflictError("this process runs no rollout controller; send --step to the controller")
        gateway = _check_writer(request)
        return await _written(request, gateway, await controller.resume(route, _actor(request)))
    return await _write(
        request,
        lambda: rollouts.promote(
            route, _actor(request), body.version, body.reason, body.revision, body.force
        ),
    )


@router.post("/routes/{route}/labels")
async def enforce_labels(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, LabelsBody)
    _, rollouts, _ = _state(request)
    return await _write(
        request,
        lambda: rollouts.set_enforce_labels(route, body.enforce, _actor(request), body.reason, body.revision),
    )


@router.post("/routes/{route}/rollback")
async def rollback(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, _Write)
    _, rollouts, _ = _state(request)
    return await _write(
        request, lambda: rollouts.rollback(route, _actor(request), body.reason, body.revision)
    )


@router.post("/routes/{route}/abort")
async def abort(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, _Write)
    _, rollouts, _ = _state(request)
    return await _write(request, lambda: rollouts.abort(route, _actor(request), body.reason or "aborted"))


@router.post("/routes/{route}/shadow")
async def shadow(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, ShadowBody)
    _, rollouts, _ = _state(request)
    return await _write(
        request,
        lambda: rollouts.set_shadow(
            route, body.version, body.percent, _actor(request), body.reason, body.revision
        ),
    )


@router.post("/routes/{route}/pin")
async def pin(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, VersionBody)
    _, rollouts, _ = _state(request)
    return await _write(
        request, lambda: rollouts.pin(route, body.version, _actor(request), body.reason, body.revision)
    )


@router.post("/routes/{route}/retire")
async def retire(request: Request, route: str) -> JSONResponse:
    body = await _parse(request, VersionBody)
    _, rollouts, _ = _state(request)
    return await _write(
        request, lambda: rollouts.retire(route, body.version, _actor(request), body.reason, body.revision)
    )


@router.get("/monitor")
async def monitor_status(request: Request) -> JSONResponse:
    """Per version: traffic, errors, latency, entropy, labels, drift and live accuracy since start."""
    gateway, _, _ = _state(request)
    signals = LocalSignals(request.app.state.exposition_registry())
    drift = gateway.observer.drift()
    versions = []
    for version, (route, state) in sorted(gateway.live.items()):
        s = signals.since(Snapshot(route, version, 0, 0, (), 0, 0, 0, 0))
        correct, total = await gateway.observer.refresh_accuracy(route, version)
        low, high = wilson_interval(correct, total) if total else (None, None)
        labelled = gateway.observer.label_set(version) is not None
        versions.append(
            {
                "route": route,
                "version": version,
                "state": state,
                "task": "labels" if labelled else "text",
                "label_signals": LABEL_SIGNALS if labelled else TEXT_SIGNALS,
                "requests": s.requests,
                "errors": s.errors,
                "error_ratio": s.error_ratio,
                "p95_latency_s": s.p95_latency_s,
                "mean_entropy_nats": s.mean_entropy_nats,
                "other_label_ratio": gateway.observer.other_label_ratio(route, version),
                "drift": drift.get((route, version), {"window": 0, "features": {}}),
                "max_drift_psi": s.max_drift_psi,
                "feedback": {"correct": correct, "total": total},
                "live_accuracy": correct / total if total else None,
                "live_accuracy_interval": [low, high] if total else None,
            }
        )
    return JSONResponse({"revision": gateway.routes.revision, "versions": versions})
