"""`lorafleet monitor`: per-version health from a running gateway, or the fleet through Prometheus."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
import typer

from lorafleet.cli._admin import AdminClient, GatewayOpt, TokenFileOpt
from lorafleet.cli._options import JsonOpt, require_span
from lorafleet.cli._output import info, print_json, print_table
from lorafleet.errors import LorafleetError
from monitor.fleet import fleet_status
from monitor.signals import PrometheusSignals

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


PrometheusOpt = Annotated[
    str | None,
    typer.Option(
        "--prometheus",
        help="A Prometheus that scrapes every gateway replica: the fleet's numbers instead of one gateway's.",
        show_default=False,
    ),
]
WindowOpt = Annotated[
    str,
    typer.Option(
        "--window", help="With --prometheus: the span traffic numbers are summed over (15m, 1h, 1d)."
    ),
]


def _fleet(url: str, window: str) -> dict[str, Any]:
    window_s = require_span(window, "--window")

    async def read() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await fleet_status(PrometheusSignals(url, window_s, client))

    versions = asyncio.run(read())  # SignalsUnavailableError names the URL and the failed query
    if not versions:
        raise LorafleetError(
            f"Prometheus at {url} has no lorafleet_version_info series: it scrapes no lorafleet gateway",
            hint="add the gateways' /metrics to its scrape targets (docs/monitoring.md)",
        )
    return {"source": url, "window": window, "versions": versions}


@app.command()
def status(
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    prometheus: PrometheusOpt = None,
    window: WindowOpt = "1h",
    json: JsonOpt = False,
) -> None:
    """One row per live version: is it healthy, and is its traffic still what it was trained for?

    From one gateway (its traffic since it started), or with --prometheus from every replica
    Prometheus scrapes (traffic over --window). Drift and live accuracy are the fleet's either
    way when the gateways share a feedback database.
    """
    if prometheus is not None:
        data = _fleet(prometheus, window)
    else:
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
                *([v["replicas"]] if prometheus else []),
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
            *(["replicas"] if prometheus else []),
            "requests" if not prometheus else f"requests ({window})",
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
