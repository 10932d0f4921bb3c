"""`lorafleet controller`: the one rollout controller of a cluster, with the admin API.

It is the gateway application (router.app.create_app) in embedded-controller mode, serving no user
traffic: the admin API under /admin (the only place routes change when gateways run with
`controller: external`), /metrics and /health; the canary gate (from Prometheus with
--prometheus-url); and the adapter reconcile loop over the engines. Its store is a Kubernetes
ConfigMap (--routes-configmap, router/k8s_store.py) or a routes file (--routes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from lorafleet.cli._options import RegistryOpt
from lorafleet.cli._output import info
from lorafleet.cli.gateway import ensure_admin_token
from lorafleet.errors import LorafleetError
from router.settings import GatewaySettings, build_settings
from router.store import FileStore, RouteStore

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _namespace(value: str | None) -> str:
    """The namespace given, else the pod's own (from its service account), else `default`."""
    if value:
        return value
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def build_store(
    routes: Path | None,
    configmap: str | None,
    namespace: str | None,
    settings: GatewaySettings,
    max_history_events: int,
) -> RouteStore:
    """The store the options name: a ConfigMap, a routes file, or the default routes file."""
    if routes is not None and configmap is not None:
        raise LorafleetError(
            "give --routes FILE or --routes-configmap NAME, not both",
            hint="in a cluster use the ConfigMap; on one machine the file",
        )
    if configmap is None:
        return FileStore(routes or settings.routes_file)
    try:
        from router.k8s_store import ConfigMapStore
    except ImportError as exc:
        raise LorafleetError(
            f"--routes-configmap needs the kubernetes client, which is not installed ({exc.name})",
            hint="pip install 'lorafleet[k8s]' (the controller image has it)",
        ) from None
    return ConfigMapStore(configmap, _namespace(namespace), max_history_events=max_history_events)


def controller(
    routes_configmap: Annotated[
        str | None,
        typer.Option(
            "--routes-configmap",
            help="Keep routes, rollout state and history in this ConfigMap (the gateways mount it).",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            help="The ConfigMap's namespace (default: the pod's own, else 'default').",
            show_default=False,
        ),
    ] = None,
    routes: Annotated[
        Path | None,
        typer.Option(
            "--routes",
            help="Keep the routes in this file instead (one machine, or a shared volume).",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOpt = None,
    engine: Annotated[
        list[str] | None,
        typer.Option(
            "--engine",
            help="An engine URL, or dns+http://SERVICE:PORT for every pod of a headless Service (repeatable).",
            show_default=False,
        ),
    ] = None,
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            "--prometheus-url",
            help="The canary gate reads the gateways' metrics from this Prometheus (needed with several "
            "gateway replicas: the controller serves no traffic itself).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on (default 127.0.0.1).", show_default=False),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port of the admin API and /metrics.")
    ] = 8090,
    admin_token_file: Annotated[
        Path | None,
        typer.Option(
            "--admin-token-file",
            help="File holding the admin bearer token (default: made once in the state folder).",
            show_default=False,
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", help="Writable folder for local state (leader lock, feedback).", show_default=False
        ),
    ] = None,
    interval_s: Annotated[
        float | None,
        typer.Option(
            "--interval-s", min=0.1, help="Seconds between controller ticks (default 2).", show_default=False
        ),
    ] = None,
    max_history_events: Annotated[
        int,
        typer.Option(
            "--max-history-events", min=1, help="Events the ConfigMap's history keeps (1 MiB limit)."
        ),
    ] = 500,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the rollout controller: admin API, canary gate and adapter reconcile, one per cluster."""
    import uvicorn

    from lorafleet import logs
    from router.app import create_app

    overrides: dict[str, object] = {"controller": "embedded", "port": port, "workers": 1}
    for key, value in {
        "registry": registry,
        "host": host,
        "admin_token_file": admin_token_file,
        "prometheus_url": prometheus_url,
        "state_dir": state_dir,
        "controller_interval_s": interval_s,
        "routes_file": routes,
    }.items():
        if value is not None:
            overrides[key] = value
    if engine:
        overrides["engines"] = engine
    settings = build_settings(**overrides)
    if settings.admin_token is None and settings.admin_token_file is None:
        token_file = ensure_admin_token(settings.resolved_state_dir / "admin.token")
        settings = settings.model_copy(update={"admin_token_file": token_file})
        info(f"admin token: {token_file}")
    store = build_store(routes, routes_configmap, namespace, settings, max_history_events)
    # Fail here, in one line, if the store is unreadable (no ConfigMap, no RBAC, a broken file),
    # rather than later inside the server's start-up.
    revision = store.load().revision
    logs.configure(log_level)
    info(
        f"controller: admin API http://{settings.host}:{settings.port}/admin; routes in {store!r} "
        f"(revision {revision}); engines {', '.join(settings.engines)}; "
        f"gate signals from {settings.prometheus_url or 'this process (no --prometheus-url)'}"
    )
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        info("PROMETHEUS_MULTIPROC_DIR is set but the controller runs one process; it is ignored")
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR")
    app = create_app(settings, store=store, run_controller=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
