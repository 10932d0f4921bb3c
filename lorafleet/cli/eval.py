"""`lorafleet eval`: the tuned adapter against the base model (and other baselines) on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorafleet.cli._options import BaseModelOpt, JsonOpt
from lorafleet.cli._output import info, print_json

_BASELINES = "Baselines"

EndpointOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--endpoint",
        help="An OpenAI-compatible endpoint to compare with: NAME=URL[,model=MODEL,key-env=VAR,"
        "price-in=USD,price-out=USD] (prices per 1M tokens; repeatable).",
        rich_help_panel=_BASELINES,
    ),
]


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
    endpoint: EndpointOpt = None,
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
    from training.endpoints import Endpoint
    from training.evaluate import evaluate as run_eval
    from training.evaluate import write_report
    from training.outputs import check_output_dir

    endpoints = [Endpoint.parse(spec) for spec in endpoint or []]
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


def baseline(
    data: Annotated[Path, typer.Argument(help="A chat JSONL file (it is split as finetune splits it).")],
    few_shot: Annotated[
        int,
        typer.Option("--few-shot", min=0, help="Also the base model with K training examples in the prompt."),
    ] = 0,
    endpoint: EndpointOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split (finetune's --seed).")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write baseline.json here (a file).", show_default=False)
    ] = None,
    base_model: BaseModelOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts generated at once.")] = 16,
    json: JsonOpt = False,
) -> None:
    """Score the base model (zero-shot, few-shot) and any endpoints on DATA's test split, before training."""
    import tempfile

    from training.endpoints import Endpoint
    from training.evaluate import baseline as run_baseline
    from training.split import split_file

    endpoints = [Endpoint.parse(spec) for spec in endpoint or []]
    with tempfile.TemporaryDirectory(prefix="lorafleet-baseline-") as work:
        manifest = split_file(data, Path(work), seed=seed, force=True)
        info(f"split {data}: {manifest.counts} (seed {seed}; the test split is what finetune tests on)")
        report = run_baseline(
            Path(work) / "test.jsonl",
            train_path=Path(work) / "train.jsonl",
            few_shot=few_shot,
            endpoints=endpoints,
            base_model=base_model,
            batch_size=batch_size,
            log=info,
        )
    if out is not None:
        out.write_text(report.model_dump_json(indent=2) + "\n")
        info(f"baseline: {out}")
    if json:
        print_json(report.model_dump(mode="json"))
    else:
        print(report.render())
