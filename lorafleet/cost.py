"""The cost of ownership: a self-hosted GPU fleet against a per-token API, for one monthly volume.

    CostInputs                  what a team states (prices, throughput, volume); validated
    parse_inputs(values)        CostInputs from option values; errors name the option and the value
    estimate(inputs)            -> CostEstimate

The arithmetic, with V the tokens per month (input + output) and the input/output mix held fixed:

    capacity (tokens per GPU-month)  C = tokens_per_second * utilization * hours_per_month * 3600
    GPUs needed                      V / C; billed: max(gpus, ceil(V / C))
    self-hosted (USD per month)      S(V) = billed * gpu_hourly_usd * hours_per_month + ops_usd_per_month
    API (USD per month)              A(V) = input / 1e6 * api_input + output / 1e6 * api_output = b * V
                                     (b: the API's blended price per token at this mix)

S is a staircase (one more GPU every C tokens) and A a straight line, so with G the monthly price of
one GPU and F the fixed operations cost:

  - if b * C <= G, one fully used GPU is worth no more at API prices than it costs: the API is never
    dearer, at any volume, and there is no break-even;
  - else the first volume where both cost the same is V1 = (n1 * G + F) / b with
    n1 = max(gpus, ceil(F / (b * C - G))) GPUs; but just past a multiple of C the next GPU can make
    self-hosting dearer again, for a while. From V0 = (m * G + F) / b, with
    m = max(gpus, ceil((G + F) / (b * C - G))), self-hosting is never dearer. Often V0 == V1.

Pure arithmetic, no I/O: `lorafleet cost` parses the options and renders. docs/cost.md works an example.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.errors import LorafleetError

SECONDS_PER_HOUR = 3600
HOURS_PER_MONTH = 730.0  # 365 * 24 / 12, what cloud price sheets use
MILLION = 1_000_000

_PER_REQUEST = ("requests_per_month", "input_tokens_per_request", "output_tokens_per_request")
_PER_MONTH = ("input_tokens_per_month", "output_tokens_per_month")


class CostInputError(LorafleetError):
    """The cost inputs are invalid; the message names each bad option and its value."""


def option_name(field: str) -> str:
    """The `lorafleet cost` option of a CostInputs field."""
    return "--" + field.replace("_", "-")


class CostInputs(BaseModel):
    """A deployment to price: the GPU side, the API side, and the monthly volume (one of two forms)."""

    model_config = ConfigDict(allow_inf_nan=False)

    gpu_hourly_usd: float = Field(
        ge=0, description="Price of one GPU-hour (on demand, reserved or amortised)."
    )
    gpus: int = Field(default=1, ge=1, description="GPUs run whatever the volume (e.g. 2 for redundancy).")
    hours_per_month: float = Field(
        default=HOURS_PER_MONTH, gt=0, le=744, description="Hours the GPUs are paid for each month."
    )
    tokens_per_second: float = Field(
        gt=0,
        description="Throughput of one GPU, input and output tokens together, at your prompt mix and "
        "concurrency (measured with your model, or stated by the vendor).",
    )
    utilization: float = Field(
        default=0.5,
        description="Share of the month a GPU runs at that throughput (traffic has peaks and troughs).",
    )
    api_input_usd_per_1m: float = Field(ge=0, description="API price of 1M input tokens.")
    api_output_usd_per_1m: float = Field(ge=0, description="API price of 1M output tokens.")
    requests_per_month: float | None = Field(default=None, ge=0)
    input_tokens_per_request: float | None = Field(default=None, ge=0)
    output_tokens_per_request: float | None = Field(default=None, ge=0)
    input_tokens_per_month: float | None = Field(default=None, ge=0)
    output_tokens_per_month: float | None = Field(default=None, ge=0)
    ops_usd_per_month: float = Field(
        default=0.0, ge=0, description="Fixed self-hosting costs: on-call, storage, the engineer's time."
    )

    @field_validator("utilization")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("must be in (0, 1]: a share of the month, 0.6 means 60%")
        return value

    @model_validator(mode="after")
    def _one_volume_form(self) -> CostInputs:
        per_request = [f for f in _PER_REQUEST if getattr(self, f) is not None]
        per_month = [f for f in _PER_MONTH if getattr(self, f) is not None]
        both = " and ".join
        if per_request and per_month:
            raise ValueError(
                f"give the volume one way: {both(map(option_name, per_request))} "
                f"or {both(map(option_name, per_month))}, not both"
            )
        if not per_request and not per_month:
            raise ValueError(
                f"give the monthly volume: {', '.join(map(option_name, _PER_REQUEST))}, "
                f"or {both(map(option_name, _PER_MONTH))}"
            )
        form, given = (_PER_REQUEST, per_request) if per_request else (_PER_MONTH, per_month)
        missing = [f for f in form if f not in given]
        if missing:
            raise ValueError(f"{both(map(option_name, given))} needs {both(map(option_name, missing))} too")
        return self

    @property
    def per_request(self) -> bool:
        return self.requests_per_month is not None

    def monthly_tokens(self) -> tuple[float, float]:
        """(input, output) tokens per month."""
        if self.per_request:
            assert self.requests_per_month is not None
            assert self.input_tokens_per_request is not None and self.output_tokens_per_request is not None
            return (
                self.requests_per_month * self.input_tokens_per_request,
                self.requests_per_month * self.output_tokens_per_request,
            )
        assert self.input_tokens_per_month is not None and self.output_tokens_per_month is not None
        return self.input_tokens_per_month, self.output_tokens_per_month

    def input_share(self) -> float | None:
        """The input tokens' share of all tokens (the mix), or None when no tokens are stated at all."""
        if self.per_request:
            assert self.input_tokens_per_request is not None and self.output_tokens_per_request is not None
            tin, tout = self.input_tokens_per_request, self.output_tokens_per_request
        else:
            tin, tout = self.monthly_tokens()
        return None if tin + tout == 0 else tin / (tin + tout)


class BreakEven(BaseModel):
    """Where the self-hosted staircase meets the API's line."""

    tokens_per_month: float | None = Field(
        description="The smallest monthly volume at which both cost the same (None: never)."
    )
    gpus: int | None = Field(description="GPUs billed at that volume.")
    requests_per_month: float | None = Field(description="The same volume in requests (per-request form).")
    stays_cheaper_from_tokens_per_month: float | None = Field(
        description="From this volume on, self-hosting is never dearer (>= tokens_per_month)."
    )
    stays_cheaper_gpus: int | None = None
    reason: str | None = Field(default=None, description="Why there is no break-even, if there is none.")


class CostEstimate(BaseModel):
    inputs: CostInputs
    input_tokens_per_month: float
    output_tokens_per_month: float
    tokens_per_month: float
    capacity_tokens_per_gpu_month: float
    gpus_needed: float = Field(description="Volume / capacity, unrounded.")
    gpus_billed: int
    fleet_load_ratio: float = Field(description="Volume / the billed GPUs' capacity at that utilization.")
    gpu_usd_per_month: float = Field(description="One GPU for the month.")
    self_hosted_usd_per_month: float
    api_usd_per_month: float
    self_hosted_usd_per_1m_tokens: float | None
    api_usd_per_1m_tokens: float | None = Field(description="The API's blended price at this mix.")
    cheaper: Literal["self-hosted", "api", "same"]
    savings_usd_per_month: float = Field(description="What the cheaper option saves each month.")
    break_even: BreakEven


def _ceil(x: float, what: str) -> int:
    if not math.isfinite(x):
        raise OverflowError(f"{what} come to {x}")
    # Float division can land a hair above a whole number (2.0000000000000004 GPUs is 2 GPUs).
    return math.ceil(x - 1e-9 * max(1.0, abs(x)))


def _not_finite(value: Any, where: str = "") -> list[str]:
    """The dotted names of the numbers in a model dump that are inf or NaN."""
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _not_finite(v, f"{where}.{k}" if where else k)]
    return [where] if isinstance(value, float) and not math.isfinite(value) else []


def break_even(inputs: CostInputs) -> BreakEven:
    """Where self-hosting starts to cost no more than the API, at the inputs' input/output mix."""
    share = inputs.input_share()
    g = inputs.gpu_hourly_usd * inputs.hours_per_month
    cap = capacity_per_gpu_month(inputs)
    f = inputs.ops_usd_per_month

    def none(reason: str) -> BreakEven:
        return BreakEven(
            tokens_per_month=None,
            gpus=None,
            requests_per_month=None,
            stays_cheaper_from_tokens_per_month=None,
            reason=reason,
        )

    if share is None:
        return none("no tokens stated: the input/output mix, and so the API's price per token, is unknown")
    b = (share * inputs.api_input_usd_per_1m + (1 - share) * inputs.api_output_usd_per_1m) / MILLION
    if b == 0:
        return none("the API costs nothing at these prices")
    margin = b * cap - g  # what one fully used GPU earns over its price, at API prices
    if margin <= 0:
        return none(
            f"a GPU's whole capacity ({cap:,.0f} tokens/month at this throughput and utilization) "
            f"would cost ${b * cap:,.2f} through the API, no more than the GPU's ${g:,.2f}: "
            "the API is cheaper (or equal) at every volume"
        )
    n1 = max(inputs.gpus, _ceil(f / margin, "the GPUs at break-even"))
    m = max(inputs.gpus, _ceil((g + f) / margin, "the GPUs at break-even"))
    v1 = (n1 * g + f) / b
    v0 = (m * g + f) / b
    requests = None
    if inputs.per_request:
        assert inputs.input_tokens_per_request is not None and inputs.output_tokens_per_request is not None
        requests = v1 / (inputs.input_tokens_per_request + inputs.output_tokens_per_request)
    return BreakEven(
        tokens_per_month=v1,
        gpus=n1,
        requests_per_month=requests,
        stays_cheaper_from_tokens_per_month=v0,
        stays_cheaper_gpus=m,
    )


def capacity_per_gpu_month(inputs: CostInputs) -> float:
    """Tokens one GPU processes in a month at the stated throughput and utilization."""
    return inputs.tokens_per_second * inputs.utilization * inputs.hours_per_month * SECONDS_PER_HOUR


def estimate(inputs: CostInputs) -> CostEstimate:
    """Both monthly costs at the stated volume, which is cheaper, and the break-even volume.

    Raises CostInputError when finite inputs still overflow a float (2e308 tokens, say).
    """
    try:
        result = _estimate(inputs)
        problems = [f"{name} comes to inf or NaN" for name in _not_finite(result.model_dump())]
    except ArithmeticError as exc:
        problems = [str(exc)]
    if problems:
        raise CostInputError(
            f"the inputs are out of range: {'; '.join(problems)}. "
            "Some volume, price or throughput is far too large or too small to compute with",
            hint="state realistic magnitudes; see docs/cost.md",
        )
    return result


def _estimate(inputs: CostInputs) -> CostEstimate:
    tin, tout = inputs.monthly_tokens()
    volume = tin + tout
    cap = capacity_per_gpu_month(inputs)
    if cap == 0:
        raise OverflowError("the capacity of a GPU rounds to 0 tokens/month")
    needed = volume / cap
    billed = max(inputs.gpus, _ceil(needed, "the GPUs needed (monthly tokens / capacity per GPU)"))
    gpu_month = inputs.gpu_hourly_usd * inputs.hours_per_month
    self_hosted = billed * gpu_month + inputs.ops_usd_per_month
    api = tin / MILLION * inputs.api_input_usd_per_1m + tout / MILLION * inputs.api_output_usd_per_1m
    cheaper: Literal["self-hosted", "api", "same"] = (
        "same" if math.isclose(self_hosted, api) else "self-hosted" if self_hosted < api else "api"
    )
    return CostEstimate(
        inputs=inputs,
        input_tokens_per_month=tin,
        output_tokens_per_month=tout,
        tokens_per_month=volume,
        capacity_tokens_per_gpu_month=cap,
        gpus_needed=needed,
        gpus_billed=billed,
        fleet_load_ratio=volume / (billed * cap),
        gpu_usd_per_month=gpu_month,
        self_hosted_usd_per_month=self_hosted,
        api_usd_per_month=api,
        self_hosted_usd_per_1m_tokens=None if volume == 0 else self_hosted / volume * MILLION,
        api_usd_per_1m_tokens=None if volume == 0 else api / volume * MILLION,
        cheaper=cheaper,
        savings_usd_per_month=abs(self_hosted - api),
        break_even=break_even(inputs),
    )


def parse_inputs(values: Mapping[str, Any]) -> CostInputs:
    """CostInputs from option values (None: not given); every problem names its option and value."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return CostInputs.model_validate(given)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            if not field:
                lines.append(msg)
                continue
            shown = f", got {err['input']!r}" if err["type"] != "missing" else ""
            lines.append(f"{option_name(field)}: {msg[:1].lower()}{msg[1:]}{shown}")
        message = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        raise CostInputError(message, hint="see `lorafleet cost --help` and docs/cost.md") from None
