"""`lorafleet eval`: the tuned adapter against the base model (and other baselines) on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorafleet.cli._options import BaseModelOpt, JsonOpt
from lorafleet.cli._output import info, print_json

_BASELINES = "Baselines"


def evaluate(
    test_file: Annotated[Path, typer.Option("--test", help="The held-out test split (chat JSONL).")],
    adapter: Annotated[
        Path, typer.Option("--adapter", help="A PEFT adapter folder (`lorafleet train --out`).")
    ],
    train_file: Annotated[
        Path | None,
        typer.Option(
            "--train",
            help="The training split: the label set, and the examples of --few-shot.",
            rich_help_panel=_BASELINES,
        ),
    ] = None,
    few_shot: Annotated[
        int,
        typer.Option(
            "--few-shot",
            min=0,
            help="Also run the base model with K training examples in the prompt.",
            rich_help_panel=_BASELINES,
        ),
    ] = 0,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--endpoint",
            help="An OpenAI-compatible base URL to compare with (repeatable).",
            rich_help_panel=_BASELINES,
        ),
    ] = None,
    endpoint_model: Annotated[
        list[str] | None,
        typer.Option(
            "--endpoint-model",
            help="The model name for each --endpoint, in order.",
            rich_help_panel=_BASELINES,
        ),
    ] = None,
    endpoint_key_env: Annotated[
        str | None,
        typer.Option(
            "--endpoint-key-env",
            help="The environment variable holding the endpoints' API key.",
            rich_help_panel=_BASELINES,
        ),
    ] = None,
    skip_baseline: Annotated[
        bool,
        typer.Option(
            "--skip-baseline", help="Do not run the base model (faster).", rich_help_panel=_BASELINES
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for eval.json and the PNGs (default: ./<adapter folder name>-eval).",
            show_default=False,
        ),
    ] = None,
    base_model: BaseModelOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts generated at once.")] = 16,
    max_errors: Annotated[
        int | None,
        typer.Option(
            "--max-errors", min=0, help="Wrong answers listed per model in the text report (default: all)."
        ),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Evaluate base vs tuned: accuracy, macro-F1, per-label precision/recall, confusion, every wrong answer."""
    from training.errors import TrainingError
    from training.evaluate import Endpoint, api_key_from_env, write_report
    from training.evaluate import evaluate as run_eval
    from training.outputs import check_output_dir

    urls, models = endpoint or [], endpoint_model or []
    if len(urls) != len(models):
        raise TrainingError(
            f"{len(urls)} --endpoint but {len(models)} --endpoint-model",
            hint="give one --endpoint-model per --endpoint, in the same order",
        )
    key = api_key_from_env(endpoint_key_env)
    endpoints = [Endpoint(u, m, key) for u, m in zip(urls, models, strict=True)]
    folder = adapter.resolve()
    name = folder.parent.name if folder.name == "adapter" else folder.name  # a registry version's adapter/
    target = check_output_dir(out or Path(f"{name}-eval"), "--out")
    report = run_eval(
        test_file,
        adapter,
        train_path=train_file,
        few_shot=few_shot,
        endpoints=endpoints,
        skip_baseline=skip_baseline,
        base_model=base_model,
        batch_size=batch_size,
        log=info,
    )
    written = write_report(report, target, adapter)
    for kind, path in written.items():
        info(f"{kind}: {path}")
    if json:
        print_json(report.model_dump(mode="json"))
    else:
        print(report.render(max_errors))
