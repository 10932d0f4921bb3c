"""Settings of the gateway and the rollout controller, from flags or LORAFLEET_ROUTER_* variables.

Built once at start-up and passed down. Nested fields use `__`, e.g.
LORAFLEET_ROUTER_TIMEOUTS__READ_S=60.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lorafleet import paths
from lorafleet.errors import ConfigFileError, describe_validation_error


class ControllerMode(enum.StrEnum):
    EMBEDDED = "embedded"  # this gateway runs the rollout controller (one machine)
    EXTERNAL = "external"  # `lorafleet controller` runs it; this gateway only reads the routes


class Timeouts(BaseModel):
    connect_s: float = Field(default=2.0, gt=0, description="Longest wait for a connection to an engine.")
    read_s: float = Field(default=120.0, gt=0, description="Longest silence between bytes from an engine.")
    write_s: float = Field(
        default=10.0, gt=0, description="Longest wait to send a body on the engine-management calls."
    )
    pool_s: float = Field(default=5.0, gt=0, description="Longest wait for a free upstream connection.")
    request_s: float = Field(
        default=300.0,
        gt=0,
        description="Deadline of a whole request, stream and fallback included; a client's own timeout "
        "(X-Request-Timeout, or the openai SDKs' X-Stainless-Timeout / X-Stainless-Read-Timeout) shortens it.",
    )


class FeedbackSettings(BaseModel):
    url: SecretStr | None = Field(
        default=None,
        description="postgresql://USER:PASSWORD@HOST:PORT/DB: one answer log and feedback store for every "
        "replica (a fleet); none: a SQLite file in state_dir (one machine).",
    )
    log_inputs: bool = Field(
        default=True,
        description="Keep each answer's input and system prompt for the retention (what `feedback export` "
        "needs); false: only their SHA-256 (a privacy choice).",
    )
    max_pending: int = Field(
        default=50_000, ge=100, description="Answers queued while the database is slow or down; then dropped."
    )
    flush_interval_s: float = Field(
        default=0.2, gt=0, description="How often queued answers are written (the loss window of a crash)."
    )


def _default_routes() -> Path:
    return paths.home() / "routes.yaml"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORAFLEET_ROUTER_", env_nested_delimiter="__", extra="ignore"
    )

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(default=1, ge=1, description="Gateway worker processes (uvicorn).")
    routes_file: Path = Field(
        default_factory=_default_routes, description="The declarative routes file (YAML)."
    )
    registry: Path = Field(default_factory=paths.default_registry, description="The adapter registry folder.")
    engine_registry: Path | None = Field(
        default=None,
        description="Where the engines see the registry, if not at the same path (e.g. a volume).",
    )
    engines: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8100"],
        description="Engine URLs, or dns+http://SERVICE:PORT for every address of a headless Service.",
    )
    peers: list[str] = Field(
        default_factory=list,
        description="Other gateway replicas (URLs, or dns+http://SERVICE:PORT of their headless Service),"
        " asked for feedback on an answer this one did not give.",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of /admin (or admin_token_file)."
    )
    admin_token_file: Path | None = Field(default=None, description="File holding the admin token.")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Keys the inference endpoints accept; empty: no key needed."
    )
    max_body_bytes: int = Field(
        default=1 << 20, gt=0, description="Largest request body accepted (413 above)."
    )
    max_tokens_limit: int = Field(
        default=4096,
        gt=0,
        description="Largest max_tokens a request may ask for; a request without one gets it, unless the engine's context is smaller (the engine then caps the answer).",
    )
    max_answer_bytes: int = Field(
        default=64 << 20, gt=0, description="Largest JSON answer read from an engine (503 above)."
    )
    max_n: int = Field(
        default=8, ge=1, description="Largest n (answers per request) and best_of a request may ask for."
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Upstream timeouts (below).")
    max_connections: int = Field(
        default=512,
        gt=0,
        description="Most connections open to any one engine; past it, requests wait in line up to `pool_s`.",
    )
    reconcile_interval_s: float = Field(
        default=5.0, gt=0, description="How often the engines are made to hold the adapters the routes need."
    )
    reload_interval_s: float = Field(default=1.0, gt=0, description="How often the routes file is checked.")
    pin_header: str = Field(default="x-lorafleet-version", description="Request header that pins a version.")
    session_header: str = Field(
        default="x-session-id", description="Request header that keeps a user sticky."
    )
    entropy_top_k: int = Field(
        default=5, ge=0, le=20, description="Top logprobs asked per token; 0: no entropy."
    )
    entropy_sample_percent: int = Field(
        default=100,
        ge=0,
        le=100,
        description="Share of requests that ask for logprobs (entropy); lower it to cut the gateway's CPU cost.",
    )
    entropy_max_per_s: int = Field(
        default=50,
        ge=0,
        description=(
            "Per version, about how many requests a second ask for logprobs at most (beyond, a random "
            "share scored); 0: no limit, every request of `entropy_sample_percent`."
        ),
    )
    drift_window: int = Field(
        default=500,
        ge=10,
        description="Requests per version in each process's drift window; the fleet's drift sums the "
        "windows of every process and replica (pooled in the feedback store).",
    )
    drift_min_samples: int = Field(
        default=200, ge=1, description="Requests in the window before drift is scored."
    )
    drift_refresh_s: float = Field(
        default=5.0, gt=0, description="How often the pooled drift and live accuracy gauges are refreshed."
    )
    drift_stale_s: float = Field(
        default=600.0,
        gt=0,
        description="A replica's drift window counts in the fleet's until it has not been updated for this long.",
    )
    accuracy_window: int = Field(default=500, ge=10, description="Labelled answers in the rolling accuracy.")
    state_dir: Path | None = Field(
        default=None, description="Feedback database and local state; default: beside the routes file."
    )
    feedback: FeedbackSettings = Field(
        default_factory=FeedbackSettings, description="The answer log and feedback store (below)."
    )
    controller: ControllerMode = Field(
        default=ControllerMode.EMBEDDED,
        description="embedded: this gateway advances canaries; external: `lorafleet controller` does.",
    )
    controller_interval_s: float = Field(
        default=2.0, gt=0, description="How often the controller evaluates rollouts."
    )
    prometheus_url: str | None = Field(default=None, description="With it, the canary gate reads Prometheus.")
    shadow_max_concurrency: int = Field(
        default=16, ge=1, description="Shadow requests in flight at most; more are dropped (and counted)."
    )
    retention_days: float = Field(default=14.0, ge=0, description="Default retention of retired versions.")

    @field_validator("admin_token_file")
    @classmethod
    def _token_file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v} does not exist or is not a file")
        return v

    def admin_secret(self) -> str | None:
        """The admin token, from the setting or its file (read at start-up)."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        if self.admin_token_file is not None:
            try:
                token = self.admin_token_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigFileError(
                    f"cannot read the admin token file {self.admin_token_file}: {exc}"
                ) from None
            if not token:
                raise ConfigFileError(f"admin token file {self.admin_token_file} is empty")
            return token
        return None

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir or self.routes_file.parent

    def feedback_target(self) -> str | Path:
        """The feedback store: the PostgreSQL URL, else the SQLite file in the state folder."""
        if self.feedback.url is not None:
            return self.feedback.url.get_secret_value()
        return self.resolved_state_dir / "feedback.sqlite3"

    def engine_path(self, registry_path: Path) -> Path:
        """An adapter's path as the engines see it."""
        if self.engine_registry is None:
            return registry_path
        return self.engine_registry / registry_path.relative_to(self.registry)


def build_settings(**overrides: object) -> GatewaySettings:
    """GatewaySettings from the environment and `overrides`; a bad value is a ConfigFileError naming it."""
    try:
        return GatewaySettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        message = describe_validation_error(exc, "gateway setting")
        raise ConfigFileError(
            message, hint="options override the LORAFLEET_ROUTER_* variables; see --help"
        ) from None
