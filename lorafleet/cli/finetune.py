"""`lorafleet finetune`: check, audit, split, train, eval and register in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorafleet.cli._options import BaseModelOpt, JsonOpt, RegistryOpt, registry_path
from lorafleet.cli._output import info, print_json
from lorafleet.cli.eval import EndpointOpt
from lorafleet.cli.train import (
    AlphaOpt,
    BalanceOpt,
    BatchOpt,
    ConfigOpt,
    DeviceOpt,
    DropoutOpt,
    EpochsOpt,
    LrOpt,
    MaxLengthOpt,
    PrecisionOpt,
    QuietOpt,
    RankOpt,
    TargetsOpt,
    ThreadsOpt,
    TooLongOpt,
    train_overrides,
)

_CSV = "A CSV's columns"


def finetune(
    data: Annotated[Path, typer.Argument(help="A chat JSONL file, or a CSV with text,label columns.")],
    task: Annotated[
        str, typer.Option("--task", help="The task name: versions are called <task>-v<N>-<YYYYMMDD>.")
    ],
    registry: RegistryOpt = None,
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
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the split and of training (default: the config's seed, else 0).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    threads: ThreadsOpt = None,
    max_length: MaxLengthOpt = None,
    too_long: TooLongOpt = None,
    few_shot: Annotated[
        int,
        typer.Option("--few-shot", min=0, help="Also evaluate the base model with K examples in the prompt."),
    ] = 0,
    skip_baseline: Annotated[
        bool, typer.Option("--skip-baseline", help="Do not evaluate the base model (faster).")
    ] = False,
    endpoint: EndpointOpt = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir",
            help="Keep the intermediate files (split, adapter, eval) here (default: a temporary folder).",
        ),
    ] = None,
    text_column: Annotated[
        str,
        typer.Option("--text-column", help="A CSV's column holding the input text.", rich_help_panel=_CSV),
    ] = "text",
    label_column: Annotated[
        str, typer.Option("--label-column", help="A CSV's column holding the answer.", rich_help_panel=_CSV)
    ] = "label",
    system: Annotated[
        str | None,
        typer.Option(
            "--system",
            help="A CSV's system prompt for every example (default: one listing the labels).",
            show_default=False,
            rich_help_panel=_CSV,
        ),
    ] = None,
    list_labels: Annotated[
        bool | None,
        typer.Option(
            "--list-labels/--no-list-labels",
            help="Put a system prompt listing the labels on every example of a label task (default: yes "
            "for a CSV without --system, no for JSONL, whose prompts are kept as they are).",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    json: JsonOpt = False,
) -> None:
    """Fine-tune a LoRA adapter on DATA and register it; stop with a message at the first failing stage.

    Without --config, a `train.yaml` beside DATA (the dataset's preset) is used when there is one.
    """
    from training.config import load_config
    from training.endpoints import Endpoint
    from training.pipeline import config_beside
    from training.pipeline import finetune as run_finetune

    config_file = config or config_beside(data)
    if config_file is not None and config is None:
        info(f"config: {config_file} (the preset beside the data; --config FILE to use another)")
    cfg = load_config(
        config_file,
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
    from lorafleet.registry import Registry
    from serve.settings import DEFAULT_MAX_LORA_RANK, rank_size

    reg = Registry(registry_path(registry))
    result = run_finetune(
        data,
        task,
        reg,
        cfg,
        seed=cfg.seed,
        few_shot=few_shot,
        skip_baseline=skip_baseline,
        endpoints=[Endpoint.parse(spec) for spec in endpoint or []],
        work_dir=work_dir,
        text_column=text_column,
        label_column=label_column,
        system=system,
        list_labels=list_labels,
        log=info,
        progress=not quiet,
    )
    timing = ", ".join(f"{stage} {s:.0f} s" for stage, s in result.seconds.items())
    if json:
        print_json(
            {
                "version": result.version,
                "path": str(result.path),
                "summary": result.report.summary,
                "verdict": result.report.verdict,
                "seconds": result.seconds,
            }
        )
        return
    print(result.report.render(max_errors=20))
    print()
    print(f"time: {timing}")
    print(f"registered: {result.version}")
    print(f"path: {result.path}")
    rank = reg.get(result.version).info().lora_rank
    if rank > DEFAULT_MAX_LORA_RANK:
        info(
            f"note: LoRA rank {rank}: engines serve it with --max-lora-rank {rank_size(rank)} or more "
            f"(`lorafleet serve engine --adapter {result.version}` sizes it; the default is {DEFAULT_MAX_LORA_RANK})"
        )
