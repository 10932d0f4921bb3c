"""The routes file: what each route serves, as typed models. Rollouts are data, not code.

    revision: 7                       # bumped by every admin write (optimistic concurrency)
    retention_days: 14                # how long a version retired by a promote stays live
    routes:
      banking:
        stable: banking-v1-20261124
        weights: {banking-v3-20261125: 5}     # fixed A/B shares (whole percent); stable gets the rest
        canary:
          version: banking-v2-20261125
          weight: 10                          # current canary share, set by the rollout controller
          steps:                              # Argo Rollouts' vocabulary
            - set_weight: 10
            - pause: {duration_s: 60, min_requests: 50}
            - analysis: {max_error_ratio: 0.05}
            - set_weight: 50
            - pause: {}                       # no duration: wait for `lorafleet route promote`
        shadow: {version: banking-v3-20261125, percent: 100}
        fallback: base                        # a version, or `base` (the route's base model)
        placement: spread                     # engines per version follow its share (default: all)
        enforce_labels: true                  # answers are one of the version's labels
        retiring: {banking-v0-20261101: 2026-12-08T10:00:00Z}
        pinned: [banking-v0-20261020]         # live for pinned requests only

A step is written `{kind: set_weight, weight: 10}` or in the short form `{set_weight: 10}`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorafleet.errors import InvalidVersionNameError
from lorafleet.registry import TASK_PATTERN, AdapterRef
from monitor.gate import MIN_REQUESTS, GateThresholds
from monitor.metrics import VersionState
from serve.placement import Spread

BASE_FALLBACK = "base"
_ROUTE_RE = re.compile(rf"^{TASK_PATTERN}$")
_BEFORE_EVERY_EXPIRY = dt.datetime.min.replace(tzinfo=dt.UTC)  # every retiring version still live


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SetWeight(_Model):
    kind: Literal["set_weight"] = Field(default="set_weight", description="Set the canary's share.")
    weight: int = Field(ge=0, le=100, description="The canary's share of the route's traffic, in percent.")


class Pause(_Model):
    kind: Literal["pause"] = Field(default="pause", description="Wait before the next step.")
    duration_s: float | None = Field(
        default=None, ge=0, description="Minimum time on this step; none: wait for a promote."
    )
    min_requests: int = Field(default=0, ge=0, description="Canary requests needed before the step ends.")


class Analysis(_Model):
    kind: Literal["analysis"] = Field(
        default="analysis", description="Evaluate the gate: canary against stable."
    )
    gate: GateThresholds = Field(default_factory=GateThresholds, description="The gate's limits (below).")
    interval_s: float = Field(default=10.0, gt=0, description="Time between two evaluations of the gate.")
    failure_limit: int = Field(default=0, ge=0, description="Failed evaluations tolerated before aborting.")
    inconclusive_limit: int = Field(
        default=30,
        ge=0,
        description="Inconclusive evaluations (too little data) before the rollout pauses; 0: wait forever.",
    )


Step = Annotated[SetWeight | Pause | Analysis, Field(discriminator="kind")]

_SHORT_FORMS = {
    "set_weight": "weight",
    "setWeight": "weight",
    "pause": None,
    "analysis": None,
    "analyze": None,
}


def _expand_step(raw: Any) -> Any:
    """`{set_weight: 10}` -> `{kind: set_weight, weight: 10}`; `{pause: {...}}` -> `{kind: pause, ...}`."""
    if not isinstance(raw, dict) or "kind" in raw or len(raw) != 1:
        return raw
    ((key, value),) = raw.items()
    if key not in _SHORT_FORMS:
        return raw
    kind = {"setWeight": "set_weight", "analyze": "analysis"}.get(key, key)
    scalar_field = _SHORT_FORMS[key]
    if scalar_field is not None and not isinstance(value, dict):
        return {"kind": kind, scalar_field: value}
    if kind == "analysis" and isinstance(value, dict) and "gate" not in value:
        limits = {k: value[k] for k in ("interval_s", "failure_limit", "inconclusive_limit") if k in value}
        gate = {k: v for k, v in value.items() if k not in limits}
        return {"kind": kind, "gate": gate, **limits}
    return {"kind": kind, **(value or {})}


def default_steps(weights: list[int], duration_s: float = 60, min_requests: int = MIN_REQUESTS) -> list[Step]:
    """set_weight, pause, analysis for each weight: the plan `route canary --steps 5,25,50` builds.

    `min_requests` is asked of the pause and of the analysis' gate alike, so that
    `--min-requests` means one thing.
    """
    steps: list[Step] = []
    for w in weights:
        steps += [
            SetWeight(weight=w),
            Pause(duration_s=duration_s, min_requests=min_requests),
            Analysis(gate=GateThresholds(min_requests=min_requests)),
        ]
    return steps


def _check_version(value: str) -> str:
    try:
        AdapterRef.parse(value)
    except InvalidVersionNameError as exc:
        raise ValueError(exc.message) from None
    return value


class Canary(_Model):
    version: str = Field(description="The candidate version.")
    weight: int = Field(default=0, ge=0, le=100, description="Current share; the rollout controller sets it.")
    steps: list[Step] = Field(
        default_factory=lambda: default_steps([10, 50]),
        description="The plan; default: 10% and 50%, each held 60 s and 20 requests and gated, then promote.",
    )

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return _check_version(v)

    @field_validator("steps", mode="before")
    @classmethod
    def _short_steps(cls, v: Any) -> Any:
        return [_expand_step(s) for s in v] if isinstance(v, list) else v


class Shadow(_Model):
    version: str = Field(description="The version that gets a copy of the requests; its answers are scored.")
    percent: int = Field(default=100, ge=0, le=100, description="Share of the route's requests mirrored.")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return _check_version(v)


class Route(_Model):
    stable: str = Field(description="The version that takes the traffic no other version takes.")
    weights: dict[str, int] = Field(default_factory=dict, description="Other versions with fixed shares (%).")
    canary: Canary | None = Field(default=None, description="A canary in progress (below).")
    shadow: Shadow | None = Field(default=None, description="Mirrored traffic (below).")
    fallback: str | None = Field(
        default=None, description="A version, or 'base' for the base model of the stable version."
    )
    previous: str | None = Field(default=None, description="The stable version before the last promote.")
    retiring: dict[str, dt.datetime] = Field(
        default_factory=dict, description="Versions retired by a promote, live and pinnable until the time."
    )
    pinned: list[str] = Field(
        default_factory=list, description="Versions kept live for pinned requests only."
    )
    placement: Spread = Field(
        default=Spread.ALL,
        description="Which engines of its base hold each version: all of them, or `spread`: a number that "
        "follows the version's share of the route's traffic (at least one).",
    )
    enforce_labels: bool = Field(
        default=False,
        description="Versions of a label task answer with one of their labels: the gateway asks the engine "
        "for it (vLLM structured outputs `choice`), unless the request sets its own structured output.",
    )

    @field_validator("stable", "previous")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        return None if v is None else _check_version(v)

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, v: str | None) -> str | None:
        return v if v in (None, BASE_FALLBACK) else _check_version(str(v))

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, int]) -> dict[str, int]:
        for name, w in v.items():
            _check_version(name)
            if not 0 <= w <= 100:
                raise ValueError(f"weight of {name} must be a whole percent from 0 to 100, got {w}")
        return v

    @field_validator("pinned")
    @classmethod
    def _pinned(cls, v: list[str]) -> list[str]:
        return [_check_version(name) for name in v]

    @field_validator("retiring")
    @classmethod
    def _retiring(cls, v: dict[str, dt.datetime]) -> dict[str, dt.datetime]:
        out = {}
        for name, until in v.items():
            _check_version(name)
            out[name] = until if until.tzinfo else until.replace(tzinfo=dt.UTC)
        return out

    @model_validator(mode="after")
    def _shares(self) -> Route:
        others = sum(self.weights.values()) + (self.canary.weight if self.canary else 0)
        if others > 100:
            raise ValueError(
                f"canary and weighted versions take {others}% of traffic; at most 100% is possible"
            )
        if self.stable in self.weights:
            raise ValueError(f"stable version {self.stable} cannot also have a fixed weight")
        if self.canary and (self.canary.version == self.stable or self.canary.version in self.weights):
            raise ValueError(
                f"canary version {self.canary.version} is already the stable or a weighted version"
            )
        return self

    def serving(self) -> dict[str, VersionState]:
        """Versions that take the route's traffic -> their state (stable, canary, weighted)."""
        states = {self.stable: VersionState.STABLE}
        states.update(dict.fromkeys(self.weights, VersionState.WEIGHTED))
        if self.canary:
            states[self.canary.version] = VersionState.CANARY
        return states

    def shares(self) -> dict[str, float]:
        """Each serving or shadowed version's share of the route's traffic (0-1): what `spread` follows."""
        others = sum(self.weights.values()) + (self.canary.weight if self.canary else 0)
        out = {self.stable: (100 - others) / 100}
        out.update({name: w / 100 for name, w in self.weights.items()})
        if self.canary:
            out[self.canary.version] = self.canary.weight / 100
        if self.shadow:
            out[self.shadow.version] = max(out.get(self.shadow.version, 0.0), self.shadow.percent / 100)
        return out

    def named(self) -> set[str]:
        """Every version this route names: what it would need loaded were no retiring version
        expired yet; `previous` aside, as it only records history."""
        return set(self.live(_BEFORE_EVERY_EXPIRY))

    def live(self, now: dt.datetime) -> dict[str, VersionState]:
        """Every version this route needs loaded -> its state; retiring ones until their time is up."""
        states: dict[str, VersionState] = dict.fromkeys(self.pinned, VersionState.PINNED)
        for name, until in self.retiring.items():
            if until > now:
                states[name] = VersionState.RETIRING
        if self.fallback and self.fallback != BASE_FALLBACK:
            states[self.fallback] = VersionState.FALLBACK
        if self.shadow:
            states[self.shadow.version] = VersionState.SHADOW
        states.update(self.serving())
        return states


def check_route_name(name: str) -> str:
    """`name` if it can name a route (what clients send as `model`), else ValueError saying why."""
    if not _ROUTE_RE.match(name) or AdapterRef.is_version_name(name):
        raise ValueError(
            f"route name '{name}' is invalid: use lowercase letters, digits, '-' or '_' (not a version name)"
        )
    return name


class RoutesFile(_Model):
    revision: int = Field(default=0, ge=0, description="Bumped by every admin write; a stale write gets 409.")
    retention_days: float = Field(
        default=14.0, ge=0, description="How long a version retired by a promote stays loaded and pinnable."
    )
    routes: dict[str, Route] = Field(
        default_factory=dict,
        description="Route name (what clients send as `model`) -> route. A version belongs to one route.",
    )

    @field_validator("routes")
    @classmethod
    def _names(cls, v: dict[str, Route]) -> dict[str, Route]:
        for name in v:
            check_route_name(name)
        return v

    @model_validator(mode="after")
    def _one_route_per_version(self) -> RoutesFile:
        # A version's metrics, pins and /v1/models entry name one route.
        owner: dict[str, str] = {}
        for route_name, route in self.routes.items():
            for version in sorted(route.named()):
                if owner.setdefault(version, route_name) != route_name:
                    raise ValueError(
                        f"version {version} is named by routes '{owner[version]}' and '{route_name}':"
                        " a version belongs to one route"
                    )
        return self

    def live_versions(self, now: dt.datetime) -> dict[str, tuple[str, VersionState]]:
        """Every live version -> (route, state)."""
        out: dict[str, tuple[str, VersionState]] = {}
        for route_name, route in self.routes.items():
            for version, state in route.live(now).items():
                out.setdefault(version, (route_name, state))
        return out
