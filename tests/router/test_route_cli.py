"""`lorafleet route ...` and `lorafleet monitor status` against a real gateway over HTTP, its engine
the benchmarks' FAKE upstream (so requests are answered without vLLM). Successful commands run in
process (typer's runner); failures run the installed `lorafleet` script, whose entry point turns
errors into one line and an exit code. The fixtures are in tests/router/conftest.py."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from lorafleet.cli import app
from lorafleet.registry import Registry
from router.gateway import VERSION_HEADER
from tests.support import wait_until

TOKEN = "test-admin-token"  # the admin token of the `gateway` fixture
AUTH = {"authorization": f"Bearer {TOKEN}"}
LORAFLEET = Path(sys.executable).parent / "lorafleet"
ACTOR = f"{getpass.getuser()}@{socket.gethostname()}"


def cli(gw: Any, *args: str) -> str:
    """Run a command that must succeed against the gateway `gw`; return its stdout."""
    result = CliRunner().invoke(
        app, [*args, "--gateway", gw.url], env={"LORAFLEET_ADMIN_TOKEN": TOKEN}, catch_exceptions=False
    )
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def cli_json(gw: Any, *args: str) -> Any:
    return json.loads(cli(gw, *args, "--json"))


def lorafleet(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env["LORAFLEET_ADMIN_TOKEN"] = token
    return subprocess.run([LORAFLEET, *args], capture_output=True, text=True, timeout=120, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit 1, and on stderr one `error:` line saying `expected` (and perhaps a `hint:` line)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert all(line.startswith("hint: ") for line in lines[1:]), proc.stderr
    for text in expected:
        assert text in lines[0], (text, proc.stderr)


def admin(gw: Any, path: str) -> Any:
    r = httpx.get(f"{gw.url}/admin/{path}", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def states(status: dict[str, Any], route: str = "banking") -> dict[str, str]:
    return {v["version"]: v["state"] for v in status["routes"][route]["versions"]}


def wait_loaded(gw: Any, version: str) -> None:
    wait_until(
        lambda: any(
            v["version"] == version and v["loaded_on"]
            for v in admin(gw, "status")["routes"]["banking"]["versions"]
        ),
        60,
        f"{version} loaded on the fake engine",
    )


def ask(gw: Any, n: int) -> list[str]:
    """Send n chat requests to the route 'banking'; return the version that answered each."""
    body = {
        "model": "banking",
        "messages": [{"role": "user", "content": "Where is my card?"}],
        "max_tokens": 4,
    }
    answers = [httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30) for _ in range(n)]
    assert [r.status_code for r in answers] == [200] * n, [r.text for r in answers]
    return [r.headers[VERSION_HEADER] for r in answers]


def test_a_rollout_from_create_to_retire_through_the_cli(
    gateway: Callable[..., Any], fake_engines: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    gw = gateway(None, [fake_engines().url], reconcile_interval_s=0.2)

    created = cli_json(gw, "route", "create", "banking", "--stable", v1)
    assert created["revision"] == 1 and states(created["status"]) == {v1: "stable"}
    table = cli(gw, "route", "status")
    assert "banking" in table and v1 in table and "stable" in table
    wait_loaded(gw, v1)
    assert ask(gw, 2) == [v1, v1]

    cli(gw, "route", "weights", "banking", "--weight", f"{v2}=20", "--reason", "a/b test")
    status = cli_json(gw, "route", "status")
    weights = {v["version"]: (v["state"], v["weight"]) for v in status["routes"]["banking"]["versions"]}
    assert weights == {v1: ("stable", 80), v2: ("weighted", 20)}

    cli(gw, "route", "canary", "banking", v2, "--steps", "5,25", "--step-duration-s", "3600")
    status = cli_json(gw, "route", "status")
    canary = status["routes"]["banking"]["canary"]
    assert states(status) == {v1: "stable", v2: "canary"}
    assert canary["version"] == v2
    assert [s["weight"] for s in canary["steps"] if s["kind"] == "set_weight"] == [5, 25]
    assert f"canary {v2}" in cli(gw, "route", "status")

    cli(gw, "route", "promote", "banking", "--reason", "v2 is better")
    status = admin(gw, "status")
    assert status["routes"]["banking"]["stable"] == v2 and status["routes"]["banking"]["canary"] is None
    assert states(status) == {v2: "stable", v1: "retiring"}
    (retiring,) = [
        v for v in cli_json(gw, "route", "status")["routes"]["banking"]["versions"] if v["version"] == v1
    ]
    assert dt.datetime.fromisoformat(retiring["until"]) > dt.datetime.now(dt.UTC)
    assert "retiring until" in cli(gw, "route", "status")

    cli(gw, "route", "rollback", "banking", "--reason", "v2 answers worse")
    assert states(admin(gw, "status")) == {v1: "stable", v2: "retiring"}

    cli(gw, "route", "shadow", "banking", v2, "--percent", "50")
    status = admin(gw, "status")
    shadow = status["routes"]["banking"]["shadow"]
    assert (shadow["version"], shadow["percent"], shadow["accuracy"]["total"]) == (v2, 50, 0)
    assert states(status)[v2] == "shadow"
    cli(gw, "route", "shadow", "banking", "--off")
    assert admin(gw, "status")["routes"]["banking"]["shadow"] is None

    cli(gw, "route", "pin", "banking", v2)
    assert admin(gw, "routes")["routes"]["banking"]["pinned"] == [v2]
    cli(gw, "route", "retire", "banking", v2, "--reason", "done with it")
    route = admin(gw, "routes")["routes"]["banking"]
    assert route["pinned"] == [] and v2 not in route["retiring"]
    assert states(admin(gw, "status")) == {v1: "stable"}

    # Without a route the history holds every route's changes; the controller's own are left out here.
    events = [e for e in cli_json(gw, "route", "history") if e["actor"] == ACTOR]
    assert [e["action"] for e in events] == [
        "create", "set_weight", "canary", "promote", "rollback", "shadow", "shadow", "pin", "retire"
    ]  # fmt: skip
    promote = events[3]
    assert promote["route"] == "banking" and promote["reason"] == "v2 is better"
    assert promote["before"]["stable"] == v1 and promote["after"]["stable"] == v2
    assert dt.datetime.fromisoformat(promote["at"]) <= dt.datetime.now(dt.UTC)
    assert events[1]["after"]["weights"] == {v2: 20} and events[1]["reason"] == "a/b test"
    table = cli(gw, "route", "history")
    assert f"stable {v1} -> {v2}" in table and "v2 is better" in table and ACTOR in table
    assert f"weights none -> {v2} 20%" in table and f"shadow off -> {v2} 50%" in table


def test_status_of_one_route_shows_that_route_only(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    gw = gateway(f"routes:\n  banking:\n    stable: {v1}\n")
    cli(gw, "route", "create", "cards", "--stable", v2)
    assert set(cli_json(gw, "route", "status", "cards")["routes"]) == {"cards"}
    table = cli(gw, "route", "status", "cards")
    assert "route cards" in table and "route banking" not in table
    with_history = cli_json(gw, "route", "status", "cards", "--history", "5")
    assert [e["action"] for e in with_history["history"]] == ["create"]
    assert_one_line_error(
        lorafleet("route", "status", "loans", "--gateway", gw.url), "no route 'loans'", "banking, cards"
    )


def test_a_stale_revision_is_refused_and_changes_nothing(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    gw = gateway(f"routes:\n  banking:\n    stable: {v1}\n")
    revision = admin(gw, "status")["revision"]
    cli(gw, "route", "pin", "banking", v2, "--revision", str(revision))
    for args in (
        ["weights", "banking", "--weight", f"{v2}=10"],
        ["canary", "banking", v2],
        ["promote", "banking", "--version", v2],
        ["shadow", "banking", v2],
        ["retire", "banking", v2],
    ):
        proc = lorafleet("route", *args, "--revision", str(revision), "--gateway", gw.url)
        assert_one_line_error(proc, "409", f"changed since revision {revision} (now {revision + 1})")
    route = admin(gw, "routes")["routes"]["banking"]
    assert route["stable"] == v1 and route["pinned"] == [v2] and route["weights"] == {}
    assert route["canary"] is None and route["shadow"] is None


def test_an_invalid_change_names_the_field_in_one_line(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    gw = gateway(f"routes:\n  banking:\n    stable: {v1}\n")
    proc = lorafleet("route", "weights", "banking", "--weight", f"{v2}=150", "--gateway", gw.url)
    assert_one_line_error(proc, "400", "route: weights")
    assert "pydantic" not in proc.stderr and "input_value" not in proc.stderr
    cli(gw, "route", "pin", "banking", v2)
    pin = cli_json(gw, "route", "history", "banking")[-1]
    assert pin["action"] == "pin" and pin["before"].get("pinned") is None and pin["after"]["pinned"] == [v2]


def test_a_wrong_token_or_no_gateway_is_a_one_line_error(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
    tmp_path: Path,
) -> None:
    _, (v1, _) = versions
    gw = gateway(f"routes:\n  banking:\n    stable: {v1}\n")
    wrong = tmp_path / "admin.token"
    wrong.write_text("not-the-token\n")
    assert_one_line_error(
        lorafleet("route", "status", "--gateway", gw.url, "--token-file", str(wrong)), "401"
    )
    assert_one_line_error(lorafleet("monitor", "status", "--gateway", gw.url, token="wrong"), "401")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nothing = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert_one_line_error(lorafleet("route", "history", "--gateway", nothing), f"cannot reach {nothing}")
    # An engine's URL instead of the gateway's: it has no admin API.
    engine = fake_engines()
    assert_one_line_error(lorafleet("monitor", "status", "--gateway", engine.url), "404")


def test_usage_errors_are_usage_messages_not_tracebacks(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    gw = gateway(f"routes:\n  banking:\n    stable: {v1}\n")
    for args, named in (
        (["weights", "banking", "--weight", v2], "VERSION=PERCENT"),
        (["canary", "banking", v2, "--steps", "5,half"], "--steps"),
        (["shadow", "banking"], "--off"),
        (["shadow", "banking", v2, "--off"], "--off"),
        (["pin", "banking", v2, "--revision", "latest"], "--revision"),
        (["retire", "banking"], "version"),
    ):
        proc = lorafleet("route", *args, "--gateway", gw.url)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "Error: " in proc.stderr and named in proc.stderr, (
            proc.stderr
        )
    assert admin(gw, "status")["revision"] == 0


def test_monitor_status_counts_the_requests_of_each_version(
    gateway: Callable[..., Any], fake_engines: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, v2) = versions
    gw = gateway(f"routes:\n  banking:\n    stable: {v1}\n    pinned: [{v2}]\n", [fake_engines().url])
    assert ask(gw, 3) == [v1] * 3
    monitor = cli_json(gw, "monitor", "status")
    rows = {v["version"]: v for v in monitor["versions"]}
    assert set(rows) == {v1, v2}
    assert rows[v1]["route"] == "banking" and rows[v1]["state"] == "stable"
    assert rows[v1]["requests"] == 3 and rows[v1]["errors"] == 0 and rows[v1]["error_ratio"] == 0
    assert rows[v2]["state"] == "pinned" and rows[v2]["requests"] == 0
    table = cli(gw, "monitor", "status").splitlines()
    (stable_row,) = [line for line in table if v1 in line]
    assert stable_row.split()[:4] == ["banking", v1, "stable", "3"]
