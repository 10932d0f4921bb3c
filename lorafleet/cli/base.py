"""`lorafleet base`: the base model."""

from __future__ import annotations

import typer

from lorafleet import basemodel
from lorafleet.cli._options import BaseModelOpt

app = typer.Typer(
    help="The base model: prepare the embedded default or check a local folder.", no_args_is_help=True
)


@app.command()
def prepare(
    base_model: BaseModelOpt = None,
    force: bool = typer.Option(False, "--force", help="Convert the embedded model again."),
) -> None:
    """Convert the embedded GGUF base model to a safetensors folder (once) and print its path."""
    folder = basemodel.prepare(force=True) if force and base_model is None else basemodel.resolve(base_model)
    print(folder)
