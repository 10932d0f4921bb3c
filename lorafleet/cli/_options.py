"""Options shared by several commands, as Annotated aliases."""

from __future__ import annotations

import re
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


_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_span(value: str) -> float | None:
    """Seconds of a span like 30s, 15m, 12h, 7d or 2w; None if `value` is not one."""
    m = _SPAN.match(value.strip())
    return float(m[1]) * _UNIT_S[m[2]] if m else None


def require_span(value: str, option: str) -> float:
    """Seconds of a span like 15m; a usage error naming `option` otherwise."""
    seconds = parse_span(value)
    if seconds is None or seconds <= 0:
        raise typer.BadParameter(f"expected a span like 30s, 15m, 1h or 7d, got {value!r}", param_hint=option)
    return seconds
