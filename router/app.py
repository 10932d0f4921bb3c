"""The gateway application: `create_app(settings)` builds everything and the lifespan runs it.

    lifespan:  the request path's Transport (router/http1.py's Http1Pool unless one is given);
               one httpx client for everything else (engine health and adapters, Prometheus, peers)
               -> Fleet (engines) -> Gateway (routes, forwarding)
               -> Observer (metrics, drift, feedback) -> Rollouts (+ Controller when this process
               is the one writer)
    background tasks: routes-file reload, adapter reconcile, drift publishing, the controller

Pass `clock` to move time in tests (retention), `metrics_registry` for a fresh Prometheus registry,
`transport` to forward through another client (fault injection).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lorafleet import __version__, logs
from lorafleet.registry import Registry
from monitor.feedback import FeedbackStore, open_store
from monitor.metrics import Metrics, PendingUpdates, build_metrics
from monitor.signals import LocalSignals
from router import admin, openai_api
from router.auth import AuthMiddleware
from router.controller import Controller, GateSource, LeaderLock, LocalGateSource, PrometheusGateSource
from router.errors import RouterError
from router.gateway import Gateway
from router.ids import new_request_id
from router.observe import Observer
from router.openai_api import CompletionsFastPath
from router.responses import REQUEST_ID_HEADER, error_response, internal_error, openai_error
from router.rollout import Rollouts, utcnow
from router.settings import ControllerMode, GatewaySettings
from router.store import FileStore, RouteStore, check_routes
from router.upstream import Transport, build_client, build_transport
from serve.fleet import Fleet

log = logging.getLogger("lorafleet.router")


def _exposition_registry(own: CollectorRegistry, pending: PendingUpdates) -> CollectorRegistry:
    """With several workers (PROMETHEUS_MULTIPROC_DIR set), /metrics sums every worker's files
    (this worker's pending updates written first)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        merged.register(pending)
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged
    return own


def open_feedback_store(settings: GatewaySettings, metrics: Metrics) -> FeedbackStore:
    """The answer log and feedback store the settings name (a StoreError when it cannot be opened)."""
    f = settings.feedback
    return open_store(
        settings.feedback_target(),
        retention=dt.timedelta(days=settings.retention_days),
        flush_interval_s=f.flush_interval_s,
        max_pending=f.max_pending,
        log_inputs=f.log_inputs,
        on_drop=metrics.answer_log_dropped.inc,
    )


async def _every(interval_s: float, what: str, fn: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            result = fn()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("%s failed; trying again in %.0f s", what, interval_s)


def _tune_gc() -> None:
    """Each request allocates many short-lived objects (parsed JSON) while the heap holds long-lived
    ones (drift windows, metrics, the routes): with CPython's default thresholds the cyclic GC
    re-scans that heap every few thousand requests. Freezing what start-up built and collecting
    the first generation less often cuts the gateway's CPU per request by ~15%
    (bench/gateway_overhead.py). Objects freed by reference counting are freed as before."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


class RequestIdMiddleware:
    """Every response carries `x-request-id`, errors included: the client's own, or one made here.

    A made one is added to the request's headers too, so the gateway passes the same id upstream.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = REQUEST_ID_HEADER.encode()
        request_id = next((v for k, v in scope["headers"] if k.lower() == name and v), None)
        if request_id is None:
            request_id = new_request_id().encode()
            # In place: the error handler of last resort sees this scope, not a copy.
            scope["headers"] = [*scope["headers"], (name, request_id)]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(k.lower() == name for k, _ in headers):
                    message = {**message, "headers": [*headers, (name, request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class GatewayApp(FastAPI):
    """FastAPI with the two completion endpoints served in front of it: before FastAPI's and
    Starlette's own layers and the middleware stack (router/openai_api.py, CompletionsFastPath)."""

    fast_path: CompletionsFastPath

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.fast_path(scope, receive, send):
            await super().__call__(scope, receive, send)


def create_app(
    settings: GatewaySettings,
    *,
    store: RouteStore | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
    metrics_registry: CollectorRegistry | None = None,
    run_controller: bool | None = None,
    transport: Transport | None = None,
) -> FastAPI:
    registry_metrics = metrics_registry or CollectorRegistry()
    metrics = build_metrics(registry_metrics)

    def exposition() -> CollectorRegistry:
        return _exposition_registry(registry_metrics, metrics.pending)

    route_store = store or FileStore(settings.routes_file)
    registry = Registry(settings.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        forwarding = transport or build_transport(settings)
        http = build_client(settings)
        feedback = await asyncio.to_thread(open_feedback_store, settings, metrics)

        def engine_left(url: str) -> None:
            metrics.engine_up.remove(url)
            forwarding.forget(url)

        fleet = Fleet(
            settings.engines,
            http,
            on_load_failure=lambda engine, version, reason: metrics.adapter_load_failures.labels(
                version, engine
            ).inc(),
            on_health=lambda engine, up: metrics.engine_up.labels(engine).set(1 if up else 0),
            on_removed=engine_left,
        )
        observer = Observer(
            metrics,
            registry,
            feedback,
            drift_window=settings.drift_window,
            drift_min_samples=settings.drift_min_samples,
            accuracy_window=settings.accuracy_window,
            drift_refresh_s=settings.drift_refresh_s,
            drift_stale_s=settings.drift_stale_s,
        )
        gateway = Gateway(settings, route_store, registry, fleet, forwarding, observer, clock=clock)
        check_routes(route_store)  # an invalid routes file stops the start-up, naming the field
        gateway.reload_now()
        rollouts = Rollouts(route_store, registry, metrics, clock=clock, bases_served=fleet.bases)
        app.state.gateway = gateway
        fast_path.attach(gateway)
        app.state.http = http
        app.state.rollouts = rollouts
        app.state.metrics = metrics
        app.state.metrics_registry = registry_metrics
        app.state.exposition_registry = exposition
        leader = LeaderLock(settings.resolved_state_dir / "controller.lock")
        wants_controller = (
            settings.controller is ControllerMode.EMBEDDED if run_controller is None else run_controller
        )
        is_controller = wants_controller and leader.acquire()
        tasks = [
            asyncio.create_task(_every(settings.reload_interval_s, "routes reload", gateway.reload)),
            asyncio.create_task(
                fleet.run(
                    gateway.desired_adapters,
                    settings.reconcile_interval_s,
                    unload=is_controller,
                    wanted=gateway.wanted_adapters,
                )
            ),
            asyncio.create_task(_every(2.0, "drift publishing", observer.publish)),
            asyncio.create_task(
                _every(settings.drift_refresh_s, "live accuracy refresh", observer.refresh_all_accuracy)
            ),
            asyncio.create_task(_every(1.0, "metrics flush", metrics.pending.flush)),
            asyncio.create_task(
                _every(3600.0, "answer log pruning", lambda: asyncio.to_thread(feedback.prune))
            ),
        ]
        if is_controller:
            source: GateSource
            if settings.prometheus_url:
                source = PrometheusGateSource(settings.prometheus_url, http, clock)
            else:
                source = LocalGateSource(LocalSignals(exposition()))
            controller = Controller(rollouts, source, metrics, on_change=gateway.apply)
            app.state.controller = controller
            app.state.is_controller = True
            tasks.append(asyncio.create_task(controller.run(settings.controller_interval_s)))
            log.info(
                "this process runs the rollout controller (gate signals from %s)",
                settings.prometheus_url or "this gateway",
            )
        try:
            await fleet.refresh()
            await fleet.reconcile(
                gateway.desired_adapters(), unload=is_controller, wanted=gateway.wanted_adapters()
            )
        except Exception:
            log.exception("first reconcile failed; the loop will retry")
        _tune_gc()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await gateway.shadows.drain()
            metrics.pending.flush()
            leader.release()
            await forwarding.close()
            await http.aclose()
            feedback.close()

    # No /openapi.json or /docs: they would describe the admin API to anyone, without a token.
    app = GatewayApp(
        title="lorafleet gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.admin_token = settings.admin_secret()
    app.state.api_keys = [k.get_secret_value() for k in settings.api_keys]
    app.fast_path = fast_path = CompletionsFastPath(app.state.api_keys)
    app.add_middleware(AuthMiddleware, admin_token=app.state.admin_token, api_keys=app.state.api_keys)
    app.add_middleware(RequestIdMiddleware)  # the outermost: 401s carry the id too
    app.router.routes.extend(openai_api.routes)
    app.include_router(admin.router)

    @app.exception_handler(RouterError)
    async def _router_error(_: Request, exc: RouterError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return openai_error(400, "invalid_request_error", f"invalid request: {first.get('msg', exc)}", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return openai_error(exc.status_code, type_, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Answered outside every middleware, RequestIdMiddleware's included: set the id here.
        return internal_error(exc, request.headers.get(REQUEST_ID_HEADER))

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        gateway: Gateway = request.app.state.gateway
        healthy = len(gateway.fleet.healthy())
        return JSONResponse(
            {"status": "ok", "engines_healthy": healthy, "revision": gateway.routes.revision},
            status_code=200,
        )

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(exposition()), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_environment() -> FastAPI:
    """The app for uvicorn's workers: settings from LORAFLEET_ROUTER_SETTINGS_JSON, else the environment."""
    logs.configure_from_environment()
    raw = os.environ.get("LORAFLEET_ROUTER_SETTINGS_JSON")
    settings = GatewaySettings.model_validate_json(raw) if raw else GatewaySettings()
    return create_app(settings)
