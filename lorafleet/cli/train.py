"""`lorafleet train`: a LoRA adapter from chat JSONL train/val files.

The training options are Annotated aliases here because `lorafleet finetune` takes the same ones.
torch, transformers and peft are imported inside the command (the gateway's install has none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lorafleet.cli._options import BaseModelOpt, JsonOpt
from lorafleet.cli._output import info, print_json

_TRAIN = "Training (flags override --config, which overrides the defaults)"

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A YAML or JSON file of training fields (see docs/training.md).",
        rich_help_panel=_TRAIN,
    ),
]
EpochsOpt = Annotated[
    float | None,
    typer.Option(
        "--epochs",
        help="Passes over the data, at most (default: from the data's size and label count).",
        rich_help_panel=_TRAIN,
    ),
]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Learning rate (default: 5e-4).", rich_help_panel=_TRAIN)
]
RankOpt = Annotated[
    int | None,
    typer.Option(
        "--rank",
        "-r",
        help="LoRA rank (default: 16; 64 for a label set of more than 32 labels).",
        rich_help_panel=_TRAIN,
    ),
]
AlphaOpt = Annotated[
    float | None,
    typer.Option("--alpha", help="LoRA alpha (default: twice the rank).", rich_help_panel=_TRAIN),
]
DropoutOpt = Annotated[
    float | None, typer.Option("--dropout", help="LoRA dropout (default: 0.05).", rich_help_panel=_TRAIN)
]
TargetsOpt = Annotated[
    str | None,
    typer.Option(
        "--target-modules",
        help="Comma-separated layer names (default: every attention and MLP projection).",
        rich_help_panel=_TRAIN,
    ),
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Examples per step (default: 8).", rich_help_panel=_TRAIN)
]
BalanceOpt = Annotated[
    str | None,
    typer.Option(
        "--balance",
        help="Unequal label counts: none, weights (loss weighted by 1/frequency) or upsample (default: none).",
        rich_help_panel=_TRAIN,
    ),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Random seed (default: 0).", rich_help_panel=_TRAIN)
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto).",
        rich_help_panel=_TRAIN,
    ),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="Base weights: auto (bf16 where native), bf16 or fp32 (default: auto).",
        rich_help_panel=_TRAIN,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads (default: the cores the machine's load leaves idle, rechecked as it runs).",
        rich_help_panel=_TRAIN,
    ),
]
MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        "--max-length",
        min=8,
        help="Longest example in tokens (default: the base model's context, at most 2048, as `data check`).",
        rich_help_panel=_TRAIN,
    ),
]
TooLongOpt = Annotated[
    str | None,
    typer.Option(
        "--too-long",
        help="An example over --max-length: error (stop, naming each), cut (the prompt's start) or drop "
        "(default: error).",
        rich_help_panel=_TRAIN,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def train_overrides(
    *,
    base_model: str | None = None,
    epochs: float | None = None,
    lr: float | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    dropout: float | None = None,
    target_modules: str | None = None,
    batch_size: int | None = None,
    balance: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    max_length: int | None = None,
    too_long: str | None = None,
) -> dict[str, Any]:
    """The TrainConfig fields the flags set (None: not given)."""
    return {
        "base_model": base_model,
        "epochs": epochs,
        "learning_rate": lr,
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "target_modules": [t.strip() for t in target_modules.split(",") if t.strip()]
        if target_modules
        else None,
        "batch_size": batch_size,
        "balance": balance,
        "seed": seed,
        "device": device,
        "precision": precision,
        "threads": threads,
        "max_length": max_length,
        "too_long": too_long,
    }


def train(
    train_file: Annotated[Path, typer.Option("--train", help="Training split (chat JSONL).")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the adapter, train_config.json and loss_history.json.")
    ],
    val_file: Annotated[
        Path | None, typer.Option("--val", help="Validation split: its loss is reported each epoch.")
    ] = None,
    config: ConfigOpt = None,
    base_model: BaseModelOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    rank: RankOpt = None,
    alpha: AlphaOpt = None,
    dropout: DropoutOpt = None,
    target_modules: TargetsOpt = None,
    batch_size: BatchOpt = None,
    balance: BalanceOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    threads: ThreadsOpt = None,
    max_length: MaxLengthOpt = None,
    too_long: TooLongOpt = None,
    quiet: QuietOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an adapter already in --out.")] = False,
    json: JsonOpt = False,
) -> None:
    """Train a LoRA adapter (loss on the answers only) and save it as a PEFT folder vLLM loads."""
    from training.config import load_config
    from training.outputs import check_output_dir
    from training.train import train as run_training

    cfg = load_config(
        config,
        train_overrides(
            base_model=base_model,
            epochs=epochs,
            lr=lr,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            batch_size=batch_size,
            balance=balance,
            seed=seed,
            device=device,
            precision=precision,
            threads=threads,
            max_length=max_length,
            too_long=too_long,
        ),
    )
    check_output_dir(out, "--out")
    info(f"train: {train_file} -> {out}")
    result = run_training(cfg, train_file, val_file, out, progress=not quiet, force=force)
    info(f"trained with {_describe(result.config)}")
    h = result.history
    summary = {
        "adapter": str(result.out_dir),
        "base_model": str(result.base_model),
        "examples": result.examples,
        "steps": len(h.train),
        "final_train_loss": h.train[-1].loss if h.train else None,
        "val_loss": [p.loss for p in h.val],
        "tokens": h.tokens,
        "seconds": h.seconds,
        "tokens_per_s": h.tokens_per_s,
        "best_epoch": h.best_epoch,
        "stopped_at_epoch": h.stopped_at_epoch,
        "config": result.config.model_dump(mode="json"),
        "notes": h.notes,
    }
    if json:
        print_json(summary)
        return
    val = ", ".join(f"{p.loss:.4f}" for p in h.val) or "no --val"
    info(f"validation loss by epoch: {val}")
    info(f"{h.tokens} tokens in {h.seconds:.0f} s ({h.tokens_per_s:.0f} tokens/s)")
    for note in h.notes:
        info(note)
    print(result.out_dir)


def _describe(cfg: Any) -> str:
    epochs = (
        f"{cfg.epochs:g} epochs, the last kept"
        if cfg.keep == "last"
        else f"at most {cfg.epochs:g} epochs (early stopping after {cfg.early_stopping_patience})"
    )
    return (
        f"r={cfg.rank} alpha={cfg.alpha:g} on {','.join(cfg.target_modules)}, {epochs}, lr {cfg.learning_rate:g}, "
        f"batch {cfg.batch_size}, seed {cfg.seed}"
    )
