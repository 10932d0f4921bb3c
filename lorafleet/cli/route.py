"""`lorafleet route`: see and change what each route serves, through the admin API."""

from __future__ import annotations

from typing import Any

import typer

from lorafleet.cli._admin import AdminAPIError, AdminClient, GatewayOpt, TokenFileOpt
from lorafleet.cli._options import JsonOpt
from lorafleet.cli._output import info, print_json, print_table
from monitor.gate import MIN_REQUESTS

app = typer.Typer(
    help="Routes: status, weights, canary, promote, rollback, shadow, pin, retire (Argo Rollouts' words).",
    no_args_is_help=True,
)

ReasonOpt = typer.Option("", "--reason", help="Why: recorded in the route's history.")
RevisionOpt = typer.Option(
    None, "--revision", help="Refuse the change if the routes moved past this revision."
)


def _render_status(data: dict[str, Any]) -> None:
    print(
        f"routes revision {data['revision']}"
        + (f"  (reload error: {data['reload_error']})" if data.get("reload_error") else "")
    )
    for name, route in data["routes"].items():
        print()
        line = f"route {name}: stable {route['stable']}"
        if route.get("fallback"):
            line += f", fallback {route['fallback']}"
        print(line)
        rows = []
        for v in route["versions"]:
            weight = v.get("weight")
            rows.append(
                [
                    v["version"],
                    v["state"] + (f" until {v['until'][:16].replace('T', ' ')}" if v.get("until") else ""),
                    "" if weight is None else f"{weight}%",
                    ", ".join(v["loaded_on"]) or "NOT LOADED",
                    "; ".join(f"{k}: {r}" for k, r in v.get("load_failures", {}).items()),
                ]
            )
        print_table(["version", "state", "weight", "loaded on", "load failures"], rows)
        canary = route.get("canary")
        if canary:
            progress = canary.get("progress") or {}
            steps = canary["steps"]
            step = progress.get("step", 0)
            print(
                f"canary {canary['version']} at {canary['weight']}%: step {min(step + 1, len(steps))} of {len(steps)}",
                end="",
            )
            if progress.get("paused"):
                print(f", PAUSED ({progress.get('pause_reason')})", end="")
            print()
            decision = progress.get("last_decision")
            if decision:
                print(
                    f"  last gate: {decision['result']}"
                    + (f": {'; '.join(decision['reasons'])}" if decision["reasons"] else "")
                )
        if route.get("shadow"):
            shadow = route["shadow"]
            line = f"shadow {shadow['version']} on {shadow['percent']}% of requests"
            acc = shadow.get("accuracy")
            if acc and acc["total"]:
                low, high = acc["interval"]
                line += f"; shadow accuracy {acc['ratio']:.1%} [{low:.0%}-{high:.0%}] over {acc['total']} verdicts"
            print(line)
    engines = data.get("engines", [])
    if engines:
        print()
        print_table(
            ["engine", "healthy", "adapters"],
            [
                [e["url"], "yes" if e["healthy"] else f"no: {e.get('last_error')}", len(e["adapters"])]
                for e in engines
            ],
        )


def _done(data: dict[str, Any], json: bool, message: str) -> None:
    if json:
        print_json(data)
    else:
        info(f"{message} (revision {data['revision']})")


@app.command()
def status(
    route: str | None = typer.Argument(None, help="Only this route."),
    history: int = typer.Option(0, "--history", help="Also show the last N changes."),
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Each route's versions and their states (stable, canary, shadow, retiring until DATE), canary progress."""
    client = AdminClient(gateway, token_file)
    data = client.call("GET", "/admin/status")
    if route is not None:
        if route not in data["routes"]:
            raise AdminAPIError(
                f"the gateway has no route '{route}'; its routes: {', '.join(data['routes']) or 'none'}"
            )
        data["routes"] = {route: data["routes"][route]}
    events = (
        client.call("GET", "/admin/history", params={"route": route, "limit": history})["events"]
        if history
        else []
    )
    if json:
        print_json({**data, "history": events} if history else data)
        return
    _render_status(data)
    if events:
        print()
        _print_history(events)


def _print_history(events: list[dict[str, Any]]) -> None:
    print_table(
        ["when", "route", "action", "by", "change", "why"],
        [
            [e["at"][:19].replace("T", " "), e["route"], e["action"], e["actor"], _change(e), e["reason"]]
            for e in events
        ],
    )


def _change(event: dict[str, Any]) -> str:
    """What the event changed, e.g. `stable v1 -> v2; canary v3 5% -> 25%` (empty if none is shown)."""
    before, after = event.get("before", {}), event.get("after", {})
    changes = []
    if before.get("stable") != after.get("stable"):
        changes.append(f"stable {before.get('stable') or 'none'} -> {after.get('stable') or 'none'}")
    b, a = (before.get("canary") or {}), (after.get("canary") or {})
    if a != b:
        changes.append(
            f"canary {a.get('version') or b.get('version')} {b.get('weight', 0)}% -> {a.get('weight', 0)}%"
        )
    if before.get("weights") != after.get("weights"):
        changes.append(f"weights {_shares(before.get('weights'))} -> {_shares(after.get('weights'))}")
    b, a = (before.get("shadow") or {}), (after.get("shadow") or {})
    if a != b:
        changes.append(
            "shadow " + " -> ".join(f"{s['version']} {s['percent']}%" if s else "off" for s in (b, a))
        )
    return "; ".join(changes)


def _shares(weights: dict[str, int] | None) -> str:
    return ", ".join(f"{v} {w}%" for v, w in (weights or {}).items()) or "none"


@app.command()
def history(
    route: str | None = typer.Argument(None, help="Only this route."),
    limit: int = typer.Option(50, help="How many changes, newest last."),
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """The append-only history of route changes: who, when, from, to, why."""
    events = AdminClient(gateway, token_file).call(
        "GET", "/admin/history", params={"route": route, "limit": limit}
    )["events"]
    if json:
        print_json(events)
        return
    _print_history(events)


@app.command()
def create(
    route: str = typer.Argument(..., help="The route name clients send as `model`."),
    stable: str = typer.Option(..., "--stable", help="The version that serves it."),
    fallback: str | None = typer.Option(None, "--fallback", help="A version, or 'base'."),
    enforce_labels: bool = typer.Option(
        False, "--enforce-labels", help="Answers are one of the version's labels (vLLM structured outputs)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Serve a version whose evaluation said fine-tuning did not help."
    ),
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create a route."""
    data = AdminClient(gateway, token_file).call(
        "POST",
        f"/admin/routes/{route}",
        {"stable": stable, "fallback": fallback, "enforce_labels": enforce_labels, "force": force},
    )
    _done(data, json, f"route {route} serves {stable}")


@app.command("labels")
def labels(
    route: str = typer.Argument(...),
    enforce: bool = typer.Option(
        ..., "--enforce/--no-enforce", help="Restrict answers to the version's labels, or stop."
    ),
    reason: str = ReasonOpt,
    revision: int | None = RevisionOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make a route's label-task versions answer only with one of their labels (or stop)."""
    data = AdminClient(gateway, token_file).call(
        "POST", f"/admin/routes/{route}/labels", {"enforce": enforce, "reason": reason, "revision": revision}
    )
    _done(
        data,
        json,
        f"route {route}: answers {'restricted to' if enforce else 'no longer restricted to'} the labels",
    )


@app.command()
def weights(
    route: str = typer.Argument(...),
    weight: list[str] = typer.Option(
        ..., "--weight", help="VERSION=PERCENT (repeatable); the stable gets the rest."
    ),
    reason: str = ReasonOpt,
    revision: int | None = RevisionOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Set fixed traffic shares for versions besides the stable one (an A/B split)."""
    shares: dict[str, int] = {}
    for item in weight:
        version, sep, pct = item.partition("=")
        if not sep or not pct.strip().isdigit():
            raise typer.BadParameter(f"expected VERSION=PERCENT, got {item!r}", param_hint="--weight")
        shares[version.strip()] = int(pct)
    body = {"weights": shares, "reason": reason, "revision": revision}
    data = AdminClient(gateway, token_file).call("POST", f"/admin/routes/{route}/weights", body)
    _done(data, json, f"route {route} weights set")


@app.command()
def canary(
    route: str = typer.Argument(...),
    version: str = typer.Argument(..., help="The candidate version."),
    steps: str = typer.Option(
        "10,50", "--steps", help="Canary weights in percent, e.g. 5,25,50 (then promote)."
    ),
    step_duration_s: float = typer.Option(60.0, "--step-duration-s", help="Minimum seconds per step."),
    min_requests: int = typer.Option(MIN_REQUESTS, "--min-requests", help="Canary requests needed per step."),
    force: bool = typer.Option(
        False, "--force", help="Serve a version whose evaluation said fine-tuning did not help."
    ),
    reason: str = ReasonOpt,
    revision: int | None = RevisionOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Start a canary: each step sets the weight, waits, and passes the gate before the next; then promote."""
    try:
        weights_list = [int(w) for w in steps.split(",") if w.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected whole percents like 5,25,50, got {steps!r}", param_hint="--steps"
        ) from None
    body = {
        "version": version,
        "weights": weights_list,
        "step_duration_s": step_duration_s,
        "min_requests": min_requests,
        "reason": reason,
        "revision": revision,
        "force": force,
    }
    data = AdminClient(gateway, token_file).call("POST", f"/admin/routes/{route}/canary", body)
    _done(data, json, f"canary {version} started on {route} with steps {weights_list}")


@app.command()
def promote(
    route: str = typer.Argument(...),
    version: str | None = typer.Option(None, "--version", help="Promote this version instead of the canary."),
    step: bool = typer.Option(False, "--step", help="Only end the current pause and go to the next step."),
    force: bool = typer.Option(
        False, "--force", help="Serve a version whose evaluation said fine-tuning did not help."
    ),
    reason: str = ReasonOpt,
    revision: int | None = RevisionOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make the canary (or --version) stable in one change; the old stable retires (kept for the retention)."""
    body = {"version": version, "step": step, "reason": reason, "revision": revision, "force": force}
    data = AdminClient(gateway, token_file).call("POST", f"/admin/routes/{route}/promote", body)
    _done(data, json, f"route {route}: " + ("next step" if step else "promoted"))


@app.command()
def rollback(
    route: str = typer.Argument(...),
    reason: str = ReasonOpt,
    revision: int | None = RevisionOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Abort a running canary; with none, make the previous stable version stable again, now."""
    data = AdminClient(gateway, token_file).call(
        "POST", f"/admin/routes/{route}/rollback", {"reason": reason, "revision": revision}
    )
    _done(data, json, f"route {route} rolled back")


@app.command()
def abort(
    route: str = typer.Argument(...),
    reason: str = ReasonOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Abort the canary: its weight goes to 0."""
    data = AdminClient(gateway, token_file).call("POST", f"/admin/routes/{route}/abort", {"reason": reason})
    _done(data, json, f"canary of {route} aborted")


@app.command()
def shadow(
    route: str = typer.Argument(...),
    version: str | None = typer.Argument(None, help="The shadow version; leave out with --off."),
    percent: int = typer.Option(100, "--percent", help="Share of requests mirrored."),
    off: bool = typer.Option(False, "--off", help="Stop mirroring."),
    reason: str = ReasonOpt,
    revision: int | None = RevisionOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Mirror a share of the route's traffic to a version; clients get the primary answer only."""
    if off == (version is not None):
        raise typer.BadParameter("name the shadow version, or pass --off (not both)", param_hint="VERSION")
    body = {"version": version, "percent": percent, "reason": reason, "revision": revision}
    data = AdminClient(gateway, token_file).call("POST", f"/admin/routes/{route}/shadow", body)
    _done(data, json, f"route {route}: shadow " + ("off" if off else f"{version} on {percent}%"))


@app.command()
def pin(
    route: str = typer.Argument(...),
    version: str = typer.Argument(...),
    reason: str = ReasonOpt,
    revision: int | None = RevisionOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Keep a version live for requests that pin it (by model name or header), without a share of traffic."""
    data = AdminClient(gateway, token_file).call(
        "POST",
        f"/admin/routes/{route}/pin",
        {"version": version, "reason": reason, "revision": revision},
    )
    _done(data, json, f"{version} is pinnable on {route}")


@app.command()
def retire(
    route: str = typer.Argument(...),
    version: str = typer.Argument(...),
    reason: str = ReasonOpt,
    revision: int | None = RevisionOpt,
    gateway: GatewayOpt = None,
    token_file: TokenFileOpt = None,
    json: JsonOpt = False,
) -> None:
    """Take a retiring, pinned or weighted version off the route now; the engines unload it."""
    data = AdminClient(gateway, token_file).call(
        "POST",
        f"/admin/routes/{route}/retire",
        {"version": version, "reason": reason, "revision": revision},
    )
    _done(data, json, f"{version} retired from {route}")
