"""`lorafleet cost`: a self-hosted GPU against a per-token API for a monthly volume, and the break-even."""

from __future__ import annotations

from typing import Annotated

import typer

from lorafleet.cli._options import JsonOpt
from lorafleet.cli._output import format_table, print_json
from lorafleet.cost import CostEstimate, estimate, parse_inputs

_FloatOpt = float | None


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def render(result: CostEstimate) -> str:
    """The estimate as a table and a few sentences, for people."""
    i = result.inputs
    if i.per_request:
        volume = (
            f"{_count(i.requests_per_month or 0)} requests/month x ({_count(i.input_tokens_per_request or 0)} in"
            f" + {_count(i.output_tokens_per_request or 0)} out) tokens"
        )
    else:
        volume = f"{_count(result.input_tokens_per_month)} in + {_count(result.output_tokens_per_month)} out"
    lines = [f"volume: {volume} = {_count(result.tokens_per_month)} tokens/month", ""]
    gpus = (
        f"{result.gpus_billed} billed ({result.gpus_needed:.2f} needed, {result.fleet_load_ratio:.0%} loaded)"
    )
    lines.append(
        format_table(
            ["", "self-hosted GPU", "API"],
            [
                ["cost per month", _usd(result.self_hosted_usd_per_month), _usd(result.api_usd_per_month)],
                [
                    "cost per 1M tokens",
                    _usd(result.self_hosted_usd_per_1m_tokens),
                    _usd(result.api_usd_per_1m_tokens),
                ],
                ["GPUs", gpus, "-"],
                [
                    "capacity per GPU",
                    f"{_count(result.capacity_tokens_per_gpu_month)} tokens/month "
                    f"({i.tokens_per_second:,.0f} tokens/s at {i.utilization:.0%})",
                    "-",
                ],
            ],
        )
    )
    lines.append("")
    if result.cheaper == "same":
        lines.append("cheaper: neither, both cost the same")
    else:
        who = "self-hosting" if result.cheaper == "self-hosted" else "the API"
        lines.append(f"cheaper: {who}, by {_usd(result.savings_usd_per_month)} per month")
    be = result.break_even
    if be.tokens_per_month is None:
        lines.append(f"break-even: none ({be.reason})")
    else:
        requests = f" ({_count(be.requests_per_month)} requests)" if be.requests_per_month is not None else ""
        lines.append(f"break-even: {_count(be.tokens_per_month)} tokens/month{requests} on {be.gpus} GPU(s)")
        if be.stays_cheaper_from_tokens_per_month is not None and not _same(
            be.stays_cheaper_from_tokens_per_month, be.tokens_per_month
        ):
            lines.append(
                f"  past {_count(result.capacity_tokens_per_gpu_month * (be.gpus or 1))} tokens/month another "
                f"GPU makes self-hosting dearer again; it stays cheaper from "
                f"{_count(be.stays_cheaper_from_tokens_per_month)} tokens/month ({be.stays_cheaper_gpus} GPUs)"
            )
    return "\n".join(lines)


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def cost(
    gpu_hourly_usd: Annotated[
        _FloatOpt, typer.Option("--gpu-hourly-usd", help="Price of one GPU-hour.", show_default=False)
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus", help="GPUs you run at least, whatever the volume \\[default: 1].", show_default=False
        ),
    ] = None,
    hours_per_month: Annotated[
        _FloatOpt,
        typer.Option(
            "--hours-per-month", help="Hours the GPUs are paid for \\[default: 730].", show_default=False
        ),
    ] = None,
    tokens_per_second: Annotated[
        _FloatOpt,
        typer.Option(
            "--tokens-per-second",
            help="Throughput of one GPU, input and output tokens together, measured at your mix "
            "(or the vendor's figure).",
            show_default=False,
        ),
    ] = None,
    utilization: Annotated[
        _FloatOpt,
        typer.Option(
            "--utilization",
            help="Share of the month in (0, 1] a GPU runs at that throughput \\[default: 0.5].",
            show_default=False,
        ),
    ] = None,
    api_input_usd_per_1m: Annotated[
        _FloatOpt,
        typer.Option("--api-input-usd-per-1m", help="API price of 1M input tokens.", show_default=False),
    ] = None,
    api_output_usd_per_1m: Annotated[
        _FloatOpt,
        typer.Option("--api-output-usd-per-1m", help="API price of 1M output tokens.", show_default=False),
    ] = None,
    requests_per_month: Annotated[
        _FloatOpt, typer.Option("--requests-per-month", help="Requests per month.", show_default=False)
    ] = None,
    input_tokens_per_request: Annotated[
        _FloatOpt,
        typer.Option(
            "--input-tokens-per-request", help="Mean prompt tokens per request.", show_default=False
        ),
    ] = None,
    output_tokens_per_request: Annotated[
        _FloatOpt,
        typer.Option(
            "--output-tokens-per-request", help="Mean completion tokens per request.", show_default=False
        ),
    ] = None,
    input_tokens_per_month: Annotated[
        _FloatOpt,
        typer.Option(
            "--input-tokens-per-month",
            help="Input tokens per month (instead of requests).",
            show_default=False,
        ),
    ] = None,
    output_tokens_per_month: Annotated[
        _FloatOpt,
        typer.Option(
            "--output-tokens-per-month",
            help="Output tokens per month (instead of requests).",
            show_default=False,
        ),
    ] = None,
    ops_usd_per_month: Annotated[
        _FloatOpt,
        typer.Option(
            "--ops-usd-per-month",
            help="Fixed costs of running it yourself: on-call, storage, time \\[default: 0].",
            show_default=False,
        ),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Compare the monthly cost of self-hosted GPUs with a per-token API, and find the break-even volume."""
    # Every option is passed to one pydantic model, which validates them all at once and names each
    # bad option; defaults live there too, so typer's own checks never disagree with it.
    inputs = parse_inputs(
        {
            "gpu_hourly_usd": gpu_hourly_usd,
            "gpus": gpus,
            "hours_per_month": hours_per_month,
            "tokens_per_second": tokens_per_second,
            "utilization": utilization,
            "api_input_usd_per_1m": api_input_usd_per_1m,
            "api_output_usd_per_1m": api_output_usd_per_1m,
            "requests_per_month": requests_per_month,
            "input_tokens_per_request": input_tokens_per_request,
            "output_tokens_per_request": output_tokens_per_request,
            "input_tokens_per_month": input_tokens_per_month,
            "output_tokens_per_month": output_tokens_per_month,
            "ops_usd_per_month": ops_usd_per_month,
        }
    )
    result = estimate(inputs)
    if json:
        print_json(result.model_dump(mode="json"))
    else:
        print(render(result))
