"""`lorafleet data`: check, audit, split and import chat JSONL datasets.

    check FILE        every problem, one per line (FILE:LINE: field: message); exit 1 if any
    audit FILE        duplicates, conflicts, leakage, class balance, token counts, cost; exit 0
    split FILE        train/val/test.jsonl and manifest.json, stratified, deterministic per seed
    import-csv CSV    a labelled spreadsheet (text, label) to chat JSONL

`training` is imported inside the commands: it is the training install's package, and `lorafleet
--help` should not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorafleet.cli._options import BaseModelOpt, JsonOpt
from lorafleet.cli._output import info, print_json, print_table

app = typer.Typer(
    help="Datasets: check, audit, split and import chat JSONL (OpenAI's fine-tuning format).",
    no_args_is_help=True,
)

FileArg = Annotated[Path, typer.Argument(help='A chat JSONL file: one {"messages": [...]} object per line.')]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        min=1,
        help="The longest conversation allowed, in tokens through the chat template "
        "(default: the model's context, at most 2048).",
        show_default=False,
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random choices (same seed, same result).")]


def _model_dir(base_model: str | None) -> Path | None:
    return None if base_model is None else Path(base_model)


@app.command()
def check(
    file: FileArg,
    max_tokens: MaxTokensOpt = None,
    base_model: BaseModelOpt = None,
    json: JsonOpt = False,
) -> None:
    """List every problem of a chat JSONL file, one per line, and exit 1 if there is any."""
    from lorafleet import basemodel
    from training.check import check as check_dataset

    model_dir = basemodel.resolve(base_model)
    result = check_dataset(file, max_tokens=max_tokens, tokenizer_dir=model_dir)
    if json:
        print_json(
            {
                "file": result.path,
                "examples": result.records,
                "valid": result.valid,
                "max_tokens": result.max_tokens,
                "problems": [
                    {"file": p.file, "line": p.line, "field": p.field, "message": p.message}
                    for p in result.problems
                ],
            }
        )
    else:
        for problem in result.problems:
            print(problem)
    info(result.summary())
    if result.problems:
        # Not typer.Exit: lorafleet.cli.main runs the app with standalone_mode=False, where click
        # returns typer.Exit's code instead of raising it, and the code would be lost.
        raise SystemExit(1)


@app.command()
def audit(
    file: FileArg,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            "--against",
            help="Another dataset (e.g. the test split) to look for leaked inputs in; repeat for several.",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs of the training to price.")] = 3,
    gpu_hourly_usd: Annotated[
        float | None,
        typer.Option(
            "--gpu-hourly-usd",
            min=0,
            help="Price of one hour of the training machine (default: $1.00).",
            show_default=False,
        ),
    ] = None,
    tokens_per_second: Annotated[
        float | None,
        typer.Option(
            "--tokens-per-second",
            min=0,
            help="Training throughput (default: 500, measured on the reference 2-core CPU; a GPU is faster).",
            show_default=False,
        ),
    ] = None,
    api_price_per_1m_usd: Annotated[
        float | None,
        typer.Option(
            "--api-price-per-1m-usd",
            min=0,
            help="An API's fine-tuning price per 1M training tokens (default: $3.00, gpt-4o-mini's).",
            show_default=False,
        ),
    ] = None,
    review_out: Annotated[
        Path | None,
        typer.Option(
            "--review-out",
            help="Write 50 seeded random examples here for a person to read (.csv for a spreadsheet, else JSONL).",
            show_default=False,
        ),
    ] = None,
    seed: SeedOpt = 0,
    max_tokens: MaxTokensOpt = None,
    base_model: BaseModelOpt = None,
    json: JsonOpt = False,
) -> None:
    """Report duplicates, conflicts, leakage, class balance, token counts and the cost of training."""
    from training import audit as audit_lib

    report = audit_lib.audit_file(
        file,
        against or (),
        tokenizer_dir=_model_dir(base_model),
        epochs=epochs,
        max_tokens=max_tokens,
        gpu_hourly_usd=audit_lib.GPU_HOURLY_USD if gpu_hourly_usd is None else gpu_hourly_usd,
        tokens_per_second=audit_lib.TOKENS_PER_SECOND if tokens_per_second is None else tokens_per_second,
        api_price_per_1m_usd=audit_lib.API_PRICE_PER_1M_USD
        if api_price_per_1m_usd is None
        else api_price_per_1m_usd,
        review_out=review_out,
        seed=seed,
    )
    if json:
        print_json(report.model_dump(mode="json"))
    else:
        print(report.render())
    n, w = report.examples, len(report.warnings)
    info(f"{n} example{'' if n == 1 else 's'}, {w} warning{'' if w == 1 else 's'}")


@app.command()
def split(
    file: FileArg,
    out: Annotated[
        Path, typer.Option("--out", help="The folder to write the splits and manifest.json into.")
    ],
    seed: SeedOpt = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the split files in a folder that is not empty.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Split into train/val/test (80/10/10), stratified by label, duplicates on one side only."""
    from training.split import split_file

    manifest = split_file(file, out, seed=seed, force=force)
    if json:
        print_json(manifest.model_dump(mode="json"))
    else:
        print_table(
            ["split", "examples", "file", "sha256"],
            [
                [name, manifest.counts[name], out / f"{name}.jsonl", manifest.sha256[name][:16]]
                for name in manifest.counts
            ],
        )
    for warning in manifest.warnings:
        info(f"warning: {warning}")
    info(
        f"wrote {out} (seed {seed}, {'stratified by label' if manifest.stratified else 'not stratified'}, "
        f"{manifest.groups} groups of distinct inputs)"
    )


@app.command(name="import-csv")
def import_csv(
    csv_file: Annotated[Path, typer.Argument(metavar="CSV", help="A CSV file with a header row.")],
    out: Annotated[Path, typer.Option("--out", help="The chat JSONL file to write.")],
    text_column: Annotated[
        str, typer.Option("--text-column", help="The column holding the input text.")
    ] = "text",
    label_column: Annotated[
        str, typer.Option("--label-column", help="The column holding the answer.")
    ] = "label",
    system: Annotated[
        str | None,
        typer.Option("--system", help="A system prompt to put first in every example.", show_default=False),
    ] = None,
    system_from_labels: Annotated[
        bool,
        typer.Option(
            "--system-from-labels", help="Put a system prompt listing every label first in every example."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the output file if it exists.")] = False,
) -> None:
    """Convert a labelled CSV (one row per example) to chat JSONL: user = text, assistant = label."""
    from training.csvimport import import_csv as import_lib

    n = import_lib(
        csv_file,
        out,
        text_column=text_column,
        label_column=label_column,
        system=system,
        system_from_labels=system_from_labels,
        force=force,
    )
    info(f"wrote {n} examples to {out}")
