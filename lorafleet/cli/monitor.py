"""`lorafleet monitor`: per-version health from a running gateway."""

from __future__ import annotations

from typing import Any

import typer

from lorafleet.cli._admin import AdminClient, GatewayOpt, TokenFileOpt
from lorafleet.cli._options import JsonOpt
from lorafleet.cli._output import info, print_json, print_table

app = typer.Typer(
    help="Monitoring: per-version traffic, errors, latency, entropy, drift, live accuracy.",
    no_args_is_help=True,
)


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _drift(v: dict[str, Any]) -> str:
    features = v["drift"]["features"]
    if not features:
        return f"(window {v['drift']['window']})"
    worst = max(features.items(), key=lambda kv: kv[1]["psi"])
    return f"{worst[0]} {worst[1]['psi']:.2f} {worst[1]['level']}"


@app.command()
def status(gateway: GatewayOpt = None, token_file: TokenFileOpt = None, json: JsonOpt = False) -> None:
    """One row per live version: is it healthy, and is its traffic still what it was trained for?"""
    data = AdminClient(gateway, token_file).call("GET", "/admin/monitor")
    if json:
        print_json(data)
        return
    rows = []
    for v in data["versions"]:
        acc = v["live_accuracy"]
        interval = v["live_accuracy_interval"]
        rows.append(
            [
                v["route"],
                v["version"],
                v["state"],
                v["requests"],
                _fmt(v["error_ratio"], ".1%"),
                _fmt(v["p95_latency_s"], ".3f"),
                _fmt(v["mean_entropy_nats"], ".3f"),
                _fmt(v["other_label_ratio"], ".1%") if v.get("task", "labels") == "labels" else "n/a: text",
                _drift(v),
                ""
                if acc is None
                else f"{acc:.1%} [{interval[0]:.0%}-{interval[1]:.0%}] n={v['feedback']['total']}",
            ]
        )
    print_table(
        [
            "route",
            "version",
            "state",
            "requests",
            "errors",
            "p95 s",
            "entropy",
            "not a label",
            "worst drift (PSI)",
            "live accuracy",
        ],
        rows,
    )
    for v in data["versions"]:
        if v.get("task") == "text":
            info(f"{v['version']}: {v['label_signals']}")
