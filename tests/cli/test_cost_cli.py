"""`lorafleet cost`: hand-computed costs and break-evens, the staircase of GPUs, validation messages."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lorafleet.cli import app
from lorafleet.cost import CostInputError, CostInputs, estimate, parse_inputs

LORAFLEET = Path(sys.executable).parent / "lorafleet"

# The worked example of docs/cost.md: one GPU at $2/h, 2,500 tokens/s at 60% utilization; an API at
# $0.50 / $1.50 per 1M input / output tokens; 1M requests of 1,000 input + 250 output tokens a month.
EXAMPLE: dict[str, Any] = {
    "gpu_hourly_usd": 2.0,
    "tokens_per_second": 2500,
    "utilization": 0.6,
    "api_input_usd_per_1m": 0.5,
    "api_output_usd_per_1m": 1.5,
    "requests_per_month": 1_000_000,
    "input_tokens_per_request": 1000,
    "output_tokens_per_request": 250,
}
EXAMPLE_ARGS = [
    "--gpu-hourly-usd=2",
    "--tokens-per-second=2500",
    "--utilization=0.6",
    "--api-input-usd-per-1m=0.5",
    "--api-output-usd-per-1m=1.5",
    "--requests-per-month=1000000",
    "--input-tokens-per-request=1000",
    "--output-tokens-per-request=250",
]
# By hand:
#   one GPU-month        2.00 * 730                         = $1,460
#   capacity per GPU     2,500 * 0.6 * 730 h * 3,600 s      = 3,942,000,000 tokens
#   volume               1e6 * (1,000 + 250)                = 1,250,000,000 tokens (0.3171 GPUs)
#   API                  1e9 / 1e6 * 0.5 + 2.5e8 / 1e6 * 1.5 = 500 + 375 = $875; blended $0.70 / 1M
#   break-even           1,460 / 0.70e-6                    = 2,085,714,285.7 tokens (1,668,571.4 requests)
#   one more GPU past 3,942,000,000 tokens: 2 * 1,460 = $2,920, the API there costs $2,759.40
#   stays cheaper from   2,920 / 0.70e-6                    = 4,171,428,571.4 tokens


def lorafleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LORAFLEET, "cost", *args], capture_output=True, text=True, timeout=60)


def inputs(**changes: Any) -> CostInputs:
    return parse_inputs({**EXAMPLE, **changes})


def test_worked_example_by_hand() -> None:
    r = estimate(inputs())
    assert r.gpu_usd_per_month == pytest.approx(1460.0)
    assert r.capacity_tokens_per_gpu_month == pytest.approx(3_942_000_000)
    assert r.tokens_per_month == pytest.approx(1_250_000_000)
    assert r.gpus_needed == pytest.approx(1_250_000_000 / 3_942_000_000)
    assert r.gpus_billed == 1
    assert r.self_hosted_usd_per_month == pytest.approx(1460.0)
    assert r.api_usd_per_month == pytest.approx(875.0)
    assert r.api_usd_per_1m_tokens == pytest.approx(0.70)
    assert r.self_hosted_usd_per_1m_tokens == pytest.approx(1460 / 1250)
    assert r.cheaper == "api"
    assert r.savings_usd_per_month == pytest.approx(585.0)
    be = r.break_even
    assert be.tokens_per_month == pytest.approx(2_085_714_285.714, rel=1e-9)
    assert be.requests_per_month == pytest.approx(1_668_571.4286, rel=1e-9)
    assert be.gpus == 1
    assert be.stays_cheaper_from_tokens_per_month == pytest.approx(4_171_428_571.43, rel=1e-9)
    assert be.stays_cheaper_gpus == 2


def _at(tokens_per_request_total: float, **changes: Any) -> tuple[float, float]:
    """(self-hosted, API) monthly cost at a volume, keeping the example's 4:1 input/output mix."""
    requests = tokens_per_request_total / 1250
    r = estimate(inputs(requests_per_month=requests, **changes))
    return r.self_hosted_usd_per_month, r.api_usd_per_month


def test_the_staircase_around_the_break_even_points() -> None:
    be = estimate(inputs()).break_even
    assert be.tokens_per_month is not None and be.stays_cheaper_from_tokens_per_month is not None
    self_hosted, api = _at(be.tokens_per_month)
    assert self_hosted == pytest.approx(api)  # the definition of break-even
    self_hosted, api = _at(be.tokens_per_month * 0.99)
    assert api < self_hosted
    self_hosted, api = _at(3_942_000_000)  # one GPU, full
    assert self_hosted == pytest.approx(1460)
    assert api == pytest.approx(2759.4)
    self_hosted, api = _at(4_000_000_000)  # the second GPU: the API is cheaper again
    assert self_hosted == pytest.approx(2920)
    assert api == pytest.approx(2800)
    for volume in (be.stays_cheaper_from_tokens_per_month * 1.0001, 7.9e9, 8e9, 12e9, 1e12):
        self_hosted, api = _at(volume)
        assert self_hosted <= api, volume


def test_fixed_operations_cost_moves_the_break_even_to_more_gpus() -> None:
    # margin of one full GPU at API prices: 3,942e6 * 0.70e-6 - 1,460 = 1,299.40
    # n1 = ceil(3,000 / 1,299.40) = ceil(2.309) = 3   -> (3 * 1,460 + 3,000) / 0.70e-6
    # m  = ceil(4,460 / 1,299.40) = ceil(3.432) = 4   -> (4 * 1,460 + 3,000) / 0.70e-6
    be = estimate(inputs(ops_usd_per_month=3000)).break_even
    assert be.gpus == 3
    assert be.tokens_per_month == pytest.approx(7380 / 0.70e-6, rel=1e-9)  # 10,542,857,142.9
    assert be.stays_cheaper_gpus == 4
    assert be.stays_cheaper_from_tokens_per_month == pytest.approx(8840 / 0.70e-6, rel=1e-9)


def test_no_break_even_when_a_full_gpu_is_worth_less_than_it_costs() -> None:
    # capacity 100 * 0.5 * 2,628,000 = 131,400,000 tokens; at $650 / 1.1e9 tokens that is $77.65 < $1,460
    r = estimate(
        parse_inputs(
            {
                "gpu_hourly_usd": 2,
                "tokens_per_second": 100,
                "api_input_usd_per_1m": 0.5,
                "api_output_usd_per_1m": 1.5,
                "input_tokens_per_month": 1e9,
                "output_tokens_per_month": 1e8,
            }
        )
    )
    assert r.capacity_tokens_per_gpu_month == pytest.approx(131_400_000)
    assert r.gpus_needed == pytest.approx(1.1e9 / 131_400_000)  # 8.37
    assert r.gpus_billed == 9
    assert r.self_hosted_usd_per_month == pytest.approx(9 * 1460)
    assert r.api_usd_per_month == pytest.approx(650)
    assert r.break_even.tokens_per_month is None
    assert r.break_even.reason is not None and "$77.65" in r.break_even.reason
    assert r.break_even.requests_per_month is None  # monthly-token form: no requests to report


def test_minimum_gpus_and_whole_gpus_at_exact_capacity() -> None:
    small = estimate(inputs(gpus=2, requests_per_month=10))
    assert small.gpus_billed == 2
    assert small.self_hosted_usd_per_month == pytest.approx(2920)
    # 0.7 is not exact in binary: 3 * capacity / capacity must still be 3 GPUs, not 4.
    cap = 1000 * 0.7 * 730 * 3600
    r = estimate(inputs(tokens_per_second=1000, utilization=0.7, requests_per_month=3 * cap / 1250))
    assert r.gpus_billed == 3


def test_free_api_and_zero_volume() -> None:
    free = estimate(inputs(api_input_usd_per_1m=0, api_output_usd_per_1m=0))
    assert free.api_usd_per_month == 0
    assert free.break_even.tokens_per_month is None and free.break_even.reason
    idle = estimate(inputs(requests_per_month=0))
    assert idle.tokens_per_month == 0
    assert idle.self_hosted_usd_per_1m_tokens is None and idle.api_usd_per_1m_tokens is None
    assert idle.break_even.tokens_per_month == pytest.approx(2_085_714_285.714)  # mix from per-request


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"gpu_hourly_usd": -1}, "--gpu-hourly-usd: input should be greater than or equal to 0, got -1"),
        (
            {"api_input_usd_per_1m": -0.5},
            "--api-input-usd-per-1m: input should be greater than or equal to 0",
        ),
        ({"utilization": 0}, "--utilization: must be in (0, 1]"),
        (
            {"utilization": 1.5},
            "--utilization: must be in (0, 1]: a share of the month, 0.6 means 60%, got 1.5",
        ),
        ({"tokens_per_second": 0}, "--tokens-per-second: input should be greater than 0, got 0"),
        ({"gpus": 0}, "--gpus: input should be greater than or equal to 1, got 0"),
        (
            {"input_tokens_per_month": 1e9},
            "give the volume one way: --requests-per-month and --input-tokens-per-request and "
            "--output-tokens-per-request or --input-tokens-per-month, not both",
        ),
        (
            {"output_tokens_per_request": None},
            "--requests-per-month and --input-tokens-per-request needs --output-tokens-per-request too",
        ),
        (
            {"requests_per_month": None, "input_tokens_per_request": None, "output_tokens_per_request": None},
            "give the monthly volume:",
        ),
    ],
)
def test_invalid_inputs_name_the_option_and_the_value(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(CostInputError) as info:
        parse_inputs({**EXAMPLE, **changes})
    assert expected in info.value.message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(CostInputError) as info:
        parse_inputs({**EXAMPLE, "gpu_hourly_usd": -2, "utilization": 2, "tokens_per_second": 0})
    assert [line.strip().split(":")[0] for line in info.value.message.splitlines()] == [
        "3 problems",
        "--gpu-hourly-usd",
        "--tokens-per-second",
        "--utilization",
    ]


def test_table_output() -> None:
    result = CliRunner().invoke(app, ["cost", *EXAMPLE_ARGS])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert (
        "volume: 1,000,000 requests/month x (1,000 in + 250 out) tokens = 1,250,000,000 tokens/month" in out
    )
    assert "cost per month      $1,460.00" in out and "$875.00" in out
    assert "cost per 1M tokens  $1.17" in out and "$0.70" in out
    assert "1 billed (0.32 needed, 32% loaded)" in out
    assert "3,942,000,000 tokens/month (2,500 tokens/s at 60%)" in out
    assert "cheaper: the API, by $585.00 per month" in out
    assert "break-even: 2,085,714,286 tokens/month (1,668,571 requests) on 1 GPU(s)" in out
    assert "stays cheaper from 4,171,428,571 tokens/month (2 GPUs)" in out


def test_json_output_is_the_estimate() -> None:
    result = CliRunner().invoke(app, ["cost", *EXAMPLE_ARGS, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == estimate(inputs()).model_dump(mode="json")
    assert data["break_even"]["gpus"] == 1
    assert data["cheaper"] == "api"


def test_monthly_token_form_and_ops_in_the_table() -> None:
    result = CliRunner().invoke(
        app,
        [
            "cost",
            "--gpu-hourly-usd=2",
            "--tokens-per-second=2500",
            "--utilization=0.6",
            "--api-input-usd-per-1m=0.5",
            "--api-output-usd-per-1m=1.5",
            "--input-tokens-per-month=8e9",
            "--output-tokens-per-month=2e9",
            "--ops-usd-per-month=3000",
        ],
    )
    assert result.exit_code == 0, result.output
    # 1e10 tokens: 2.54 GPUs -> 3 billed: 3 * 1,460 + 3,000 = $7,380; API 8,000 * 0.5 + 2,000 * 1.5 = $7,000
    assert "volume: 8,000,000,000 in + 2,000,000,000 out = 10,000,000,000 tokens/month" in result.stdout
    assert "$7,380.00" in result.stdout and "$7,000.00" in result.stdout
    assert "cheaper: the API, by $380.00 per month" in result.stdout


def test_errors_exit_1_with_one_line_per_problem_and_a_hint() -> None:
    proc = lorafleet(
        *[a for a in EXAMPLE_ARGS if not a.startswith("--utilization")],
        "--utilization=-0.2",
        "--api-output-usd-per-1m=-3",
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines()[:3] == [
        "error: 2 problems:",
        "  --utilization: must be in (0, 1]: a share of the month, 0.6 means 60%, got -0.2",
        "  --api-output-usd-per-1m: input should be greater than or equal to 0, got -3.0",
    ]
    assert "hint: see `lorafleet cost --help` and docs/cost.md" in proc.stderr
    assert "Traceback" not in proc.stderr


MONTHLY_ARGS = [
    "--gpu-hourly-usd=2",
    "--tokens-per-second=2500",
    "--api-input-usd-per-1m=0.5",
    "--api-output-usd-per-1m=1.5",
    "--input-tokens-per-month=8e9",
    "--output-tokens-per-month=2e9",
]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--gpu-hourly-usd", "inf"),
        ("--input-tokens-per-month", "inf"),
        ("--tokens-per-second", "Infinity"),
        ("--api-output-usd-per-1m", "nan"),
        ("--ops-usd-per-month", "-inf"),
    ],
)
def test_infinite_and_nan_inputs_are_refused_naming_the_option(option: str, value: str) -> None:
    proc = lorafleet(*MONTHLY_ARGS, f"{option}={value}")
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout == ""
    assert (
        proc.stderr.splitlines()[0]
        == f"error: {option}: input should be a finite number, got {float(value)!r}"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # 1e308 + 1e308 tokens overflow the volume: the GPUs needed come to inf.
        (
            ["--input-tokens-per-month=1e308", "--output-tokens-per-month=1e308"],
            "the GPUs needed (monthly tokens / capacity per GPU) come to inf",
        ),
        (["--gpu-hourly-usd=1e306"], "gpu_usd_per_month comes to inf or NaN"),
        (
            ["--tokens-per-second=5e-324", "--utilization=0.5"],
            "the capacity of a GPU rounds to 0 tokens/month",
        ),
    ],
)
def test_finite_inputs_that_overflow_are_refused(args: list[str], expected: str) -> None:
    proc = lorafleet(*MONTHLY_ARGS, *args)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("error: the inputs are out of range: "), proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def _doc_examples() -> list[tuple[list[str], str]]:
    """(arguments, expected output) of every `$ lorafleet cost` console block in docs/cost.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "cost.md").read_text()
    examples = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        lines = block.splitlines()
        command = []
        while lines:
            line = lines.pop(0)
            command.append(line.removeprefix("$ ").rstrip("\\").strip())
            if not line.endswith("\\"):
                break
        args = shlex.split(" ".join(command))
        assert args[:2] == ["lorafleet", "cost"], args
        examples.append((args[1:], "\n".join(lines) + "\n"))
    return examples


def test_the_docs_examples_print_what_the_docs_show() -> None:
    examples = _doc_examples()
    assert len(examples) == 2
    for args, expected in examples:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert result.stdout == expected
