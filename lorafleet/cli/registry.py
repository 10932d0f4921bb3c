"""`lorafleet registry`: list and show adapter versions."""

from __future__ import annotations

import typer
import yaml
from pydantic import ValidationError

from lorafleet.cli._options import JsonOpt, RegistryOpt, registry_path
from lorafleet.cli._output import info, print_json, print_table
from lorafleet.errors import RegistryError, describe_validation_error
from lorafleet.modelcard import ModelCard
from lorafleet.registry import CARD_FILE, Registry

app = typer.Typer(
    help="The adapter registry: immutable, date-versioned adapter versions.", no_args_is_help=True
)


def _metric(summary: dict[str, dict[str, float]], model: str, key: str) -> str:
    value = summary.get(model, {}).get(key)
    return "" if value is None else f"{value:.3f}"


@app.command(name="list")
def list_versions(
    task: str | None = typer.Argument(None, help="Only this task's versions."),
    registry: RegistryOpt = None,
    json: JsonOpt = False,
) -> None:
    """List every version, oldest first, with its test accuracy against the base model."""
    reg = Registry(registry_path(registry))
    rows = [reg.summary(v) for v in reg.versions(task)]
    for version, problem in reg.broken(task):
        info(f"warning: skipped {version.path}: not a complete version: {problem}")
    if json:
        print_json(rows)
        return
    if not rows:
        print(f"no versions in {reg.root}" + (f" for task '{task}'" if task else ""))
        return
    print_table(
        ["version", "created", "base acc", "tuned acc", "tuned macro-F1"],
        [
            [
                r["name"],
                r["created_at"][:16].replace("T", " "),
                _metric(r["metrics"], "base", "accuracy"),
                _metric(r["metrics"], "tuned", "accuracy"),
                _metric(r["metrics"], "tuned", "macro_f1"),
            ]
            for r in rows
        ],
    )


@app.command()
def show(
    name: str = typer.Argument(..., help="A version name, or a task (its newest version)."),
    registry: RegistryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show one version: provenance, hyperparameters and the base-vs-tuned metrics."""
    reg = Registry(registry_path(registry))
    version = reg.check(reg.resolve(name))
    summary = reg.summary(version)
    try:
        card = ModelCard.parse((version.path / CARD_FILE).read_text())
    except ValidationError as exc:
        raise RegistryError(
            "the model card's lorafleet block is not valid:\n"
            + describe_validation_error(exc, str(version.path / CARD_FILE))
        ) from None
    except (RegistryError, yaml.YAMLError) as exc:
        raise RegistryError(f"{version.path / CARD_FILE}: the model card cannot be read: {exc}") from None
    if json:
        print_json({**summary, "card": card.model_dump(mode="json"), "eval": version.eval_report()})
        return
    print((version.path / CARD_FILE).read_text().split("\n---\n", 1)[-1].strip())
    print()
    print(f"path: {version.path}")
    print(f"adapter sha256: {summary['adapter_sha256']}")
