"""Options shared by several commands, as Annotated aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorafleet import paths

RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="The adapter registry folder (default: $LORAFLEET_REGISTRY, else $LORAFLEET_HOME/registry).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]
BaseModelOpt = Annotated[
    str | None,
    typer.Option(
        "--base-model",
        help="A local model folder; default: the embedded SmolLM2-135M-Instruct (prepared once).",
        show_default=False,
    ),
]


def registry_path(value: Path | None) -> Path:
    return value.expanduser() if value else paths.default_registry()
