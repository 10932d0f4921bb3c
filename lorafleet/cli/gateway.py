"""`lorafleet gateway`: the OpenAI-compatible gateway in front of the engines."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import typer

from lorafleet.cli._options import RegistryOpt
from lorafleet.cli._output import info
from router.settings import GatewaySettings, build_settings
from router.store import FileStore


def ensure_admin_token(path: Path) -> Path:
    """A local admin token file (0600), made on first use, for a gateway started without one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path


def check_feedback_store(settings: GatewaySettings) -> None:
    """Open the feedback store once (connect, apply its migrations): a wrong or unreachable URL, or
    a foreign schema, stops here in one line (a StoreError naming it without its password)."""
    from monitor.feedback import open_store

    open_store(settings.feedback_target(), flush_interval_s=3600).close()


def settings_json(settings: GatewaySettings) -> str:
    """The settings as JSON with their secrets in clear (pydantic masks SecretStr), for worker processes."""
    data = settings.model_dump(mode="json")
    data["admin_token"] = settings.admin_token.get_secret_value() if settings.admin_token else None
    data["api_keys"] = [k.get_secret_value() for k in settings.api_keys]
    if settings.feedback.url is not None:
        data["feedback"]["url"] = settings.feedback.url.get_secret_value()
    return json.dumps(data)


def gateway(
    routes: Path | None = typer.Option(
        None, "--routes", help="The routes file (default: $LORAFLEET_HOME/routes.yaml)."
    ),
    engine: list[str] = typer.Option(
        [], "--engine", help="An engine URL, or dns+http://SERVICE:PORT (repeatable)."
    ),
    registry: RegistryOpt = None,
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to listen on (default 8080)."),
    workers: int | None = typer.Option(None, help="Worker processes."),
    admin_token_file: Path | None = typer.Option(
        None, help="File holding the admin bearer token (default: made once in the state folder)."
    ),
    prometheus_url: str | None = typer.Option(
        None, help="The canary gate reads its signals from this Prometheus."
    ),
    controller: str | None = typer.Option(None, help="embedded (this gateway runs rollouts) or external."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Serve the OpenAI-compatible API, routing each request to an adapter version on an engine."""
    import uvicorn

    from lorafleet import logs
    from router.server import GatewayHttpProtocol

    overrides: dict[str, object] = {}
    for key, value in {
        "routes_file": routes,
        "registry": registry,
        "host": host,
        "port": port,
        "workers": workers,
        "admin_token_file": admin_token_file,
        "prometheus_url": prometheus_url,
        "controller": controller,
    }.items():
        if value is not None:
            overrides[key] = value
    if engine:
        overrides["engines"] = engine
    settings = build_settings(**overrides)
    FileStore(settings.routes_file).load()  # an invalid routes file stops here, naming the field
    if settings.admin_token is None and settings.admin_token_file is None:
        token_file = ensure_admin_token(settings.resolved_state_dir / "admin.token")
        settings = settings.model_copy(update={"admin_token_file": token_file})
        info(f"admin token: {token_file} (pass it as LORAFLEET_ADMIN_TOKEN_FILE to `lorafleet route`)")
    settings.admin_secret()  # an empty or unreadable token file stops here, not in a worker
    check_feedback_store(settings)
    logs.configure(log_level)
    # Workers are separate processes: they read the same settings from the environment.
    os.environ["LORAFLEET_ROUTER_SETTINGS_JSON"] = settings_json(settings)
    made_metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made_metrics_dir = tempfile.mkdtemp(prefix="lorafleet-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_metrics_dir
    info(
        f"gateway: http://{settings.host}:{settings.port}/v1 -> {', '.join(settings.engines)}; routes {settings.routes_file}"
    )
    try:
        uvicorn.run(
            "router.app:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=log_level,
            access_log=False,
            http=GatewayHttpProtocol,
            # Nothing in the gateway reads the client's address or scheme: no X-Forwarded-* rewrite.
            proxy_headers=False,
            timeout_graceful_shutdown=30,
        )
    finally:
        if made_metrics_dir is not None:
            shutil.rmtree(made_metrics_dir, ignore_errors=True)
