"""`lorafleet feedback export`: the answers with feedback, as the next version's training data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from lorafleet.cli._options import JsonOpt, RegistryOpt, parse_span, registry_path
from lorafleet.cli._output import info, print_json
from lorafleet.errors import LorafleetError

app = typer.Typer(
    help="Feedback: the answers users judged, as data for the next fine-tune.", no_args_is_help=True
)


def parse_when(value: str | None, option: str) -> dt.datetime | None:
    """`7d`, `12h` (that long ago), or an ISO date or time (UTC unless it says otherwise)."""
    if value is None:
        return None
    ago = parse_span(value)
    if ago is not None:
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ago)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"expected 7d, 12h or an ISO date like 2026-12-01, got {value!r}", param_hint=option
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@app.command()
def export(
    out: Annotated[
        Path, typer.Option("--out", help="The chat JSONL file to write (and FILE.manifest.json).")
    ],
    route: Annotated[str | None, typer.Option("--route", help="Only this route's answers.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Only this version's answers.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Verdicts from then: 7d, 12h or an ISO date.")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Verdicts before then.")] = None,
    corrected_only: Annotated[
        bool, typer.Option("--corrected-only", help="Only the answers judged wrong (with their right label).")
    ] = False,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="Check leakage against this registry version's splits (default: --version): inputs in its "
            "test split are left out.",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="The feedback store: a postgresql:// URL or a SQLite file (default: the gateway's, from "
            "LORAFLEET_ROUTER_FEEDBACK__URL or its state folder).",
        ),
    ] = None,
    registry: RegistryOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    json: JsonOpt = False,
) -> None:
    """Write the answers with feedback as chat JSONL: the right answer as the assistant's turn."""
    from lorafleet.export import export_feedback
    from lorafleet.registry import Registry
    from monitor.feedback import open_store
    from router.settings import build_settings

    if out.exists() and not force:
        raise LorafleetError(f"{out} exists", hint="name a new file, or pass --force to replace it")
    target = store or build_settings().feedback_target()
    checked = against or version
    against_version = Registry(registry_path(registry)).get(checked) if checked else None
    if against_version is None:
        info("no --against (or --version): the export is not checked for leakage against a version's splits")
    with open_store(target, flush_interval_s=3600) as opened:
        manifest = export_feedback(
            opened,
            out,
            route=route,
            version=version,
            since=parse_when(since, "--since"),
            until=parse_when(until, "--until"),
            corrected_only=corrected_only,
            against=against_version,
        )
    if json:
        print_json(manifest.model_dump(mode="json"))
        return
    info(
        f"exported {manifest.exported} examples from {manifest.store} to {out}; skipped {manifest.skipped_no_input} "
        f"without a kept input, {manifest.skipped_no_answer} judged wrong without a label"
    )
    if manifest.checked_against:
        info(
            f"leakage against {checked}: {manifest.left_out_test_leaks} left out (in its test split), "
            f"{manifest.in_training_split} already in its training split"
        )
    info(f"manifest: {out}.manifest.json; next: lorafleet data check {out}")
    print(out)
