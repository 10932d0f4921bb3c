"""The gateway over real HTTP, without the vLLM engine: what it answers by itself (auth, validation,
error shapes and headers, the admin API's guards), and engine faults injected with the benchmarks'
FAKE upstream (bench/fakes.py) standing in for engines that refuse connections. The fixtures
`versions`, `gateway` and `fake_engines` are in tests/router/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.fakes import UpstreamConfig
from lorafleet.registry import Registry
from router.gateway import VERSION_HEADER
from router.server import GatewayHttpProtocol
from tests.support import free_port, wait_until

TOKEN = "test-admin-token"  # the admin token of the `gateway` fixture
AUTH = {"authorization": f"Bearer {TOKEN}"}
MESSAGES = [{"role": "user", "content": "Where is my card?"}]


def raw_http(port: int, method: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request with the request target sent exactly as given (httpx would normalise it)."""
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: close",
        "Content-Length: 0",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _routes(stable: str, fallback: str | None = None) -> str:
    return f"routes:\n  banking:\n    stable: {stable}\n" + (
        f"    fallback: {fallback}\n" if fallback else ""
    )


# --- the admin API's guards -------------------------------------------------------------------


def test_every_admin_path_needs_the_token_whatever_its_spelling(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, _) = versions
    gw = gateway(_routes(v1))
    app = gw.app
    admin_routes = [
        (r.path, sorted(r.methods)) for r in app.routes if getattr(r, "path", "").startswith("/admin")
    ]
    assert len(admin_routes) >= 12
    for path, methods in admin_routes:
        concrete = path.replace("{route}", "banking")
        spellings = [
            concrete,
            concrete.upper(),
            "/" + concrete,
            concrete.replace("/admin", "/admin/."),
            concrete.replace("/admin", "/x/../admin"),
            concrete.replace("/admin", "/%61dmin"),
            concrete.replace("/admin/", "/admin%2F"),
        ]
        for spelling in spellings:
            for method in methods:
                for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                    status, body = raw_http(gw.port, method, spelling, headers)
                    assert status == 401, (method, spelling, headers, status, body)
                    assert b'"authentication_error"' in body
    assert httpx.get(f"{gw.url}/admin/status", headers=AUTH).status_code == 200


def test_admin_needs_the_token_under_a_root_path(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, _) = versions
    gw = gateway(_routes(v1), root_path="/api")
    # uvicorn --root-path: the proxy in front strips /api, the app routes on the path without it.
    for target in ("/admin/status", "/ADMIN/status", "//admin/./status", "/admin%2Fstatus"):
        status, body = raw_http(gw.port, "GET", target)
        assert status == 401, (target, status, body)
    assert raw_http(gw.port, "GET", "/admin/status", AUTH)[0] == 200
    assert raw_http(gw.port, "GET", "/v1/models")[0] == 200


def test_no_schema_without_a_token_and_an_empty_admin_body_is_an_empty_object(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, _) = versions
    gw = gateway(_routes(v1))
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(gw.url + path).status_code == 404, path
    # `curl -X POST .../rollback`: no body, no content type.
    r = httpx.post(f"{gw.url}/admin/routes/banking/rollback", headers=AUTH)
    assert r.status_code == 409, r.text  # parsed as {}: there is just nothing to roll back to
    assert "no previous stable version" in r.json()["error"]["message"]


def test_a_routes_file_gone_or_emptied_while_serving_keeps_the_routes(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]], tmp_path: Path
) -> None:
    _, (v1, _) = versions
    gw = gateway(_routes(v1))
    routes_file = tmp_path / "routes-0.yaml"
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 2}
    for text in (None, "", "# being rewritten\n"):
        if text is None:
            routes_file.unlink()
        else:
            routes_file.write_text(text)
        reloaded = httpx.post(f"{gw.url}/admin/reload", headers=AUTH).json()
        assert "missing or empty" in reloaded["reload_error"], reloaded
        # Still routed: 503 as this gateway has no engine; an unknown model would be 404.
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=body).status_code == 503
    routes_file.write_text("routes: {}\n")  # said explicitly: no routes
    reloaded = httpx.post(f"{gw.url}/admin/reload", headers=AUTH).json()
    assert reloaded["reload_error"] is None, reloaded
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body).status_code == 404


def test_a_version_the_registry_cannot_give_is_named_in_the_status(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]], fake_engines: Callable[..., Any]
) -> None:
    _, (v1, _) = versions
    ghost = "banking-v9-20261129"
    gw = gateway(f"routes:\n  banking:\n    stable: {v1}\n    pinned: [{ghost}]\n", [fake_engines().url])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entries = httpx.get(f"{gw.url}/admin/status", headers=AUTH).json()["routes"]["banking"]["versions"]
        found = {e["version"]: e for e in entries}
        if "registry_error" in found[ghost]:
            break
        time.sleep(0.2)
    assert ghost in found[ghost]["registry_error"], found
    assert "registry_error" not in found[v1]


def test_an_invalid_route_name_is_refused_and_the_routes_file_stays_valid(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]], tmp_path: Path
) -> None:
    _, (v1, v2) = versions
    gw = gateway(_routes(v1))
    routes_file = tmp_path / "routes-0.yaml"
    before = routes_file.read_text()
    for name in ("Banking", "banking-v1-20261124", "a b"):
        r = httpx.post(f"{gw.url}/admin/routes/{name}", headers=AUTH, json={"stable": v2})
        assert r.status_code == 400, (name, r.text)
        err = r.json()["error"]
        assert err["param"] == "route" and "route name" in err["message"], err
    assert routes_file.read_text() == before
    created = httpx.post(f"{gw.url}/admin/routes/cards", headers=AUTH, json={"stable": v2})
    assert created.status_code == 200, created.text
    # banking's stable version cannot take a share of cards too: a version belongs to one route.
    later = httpx.post(f"{gw.url}/admin/routes/cards/weights", headers=AUTH, json={"weights": {v1: 10}})
    assert later.status_code == 400 and "a version belongs to one route" in later.text, later.text
    assert set(httpx.get(f"{gw.url}/admin/routes", headers=AUTH).json()["routes"]) == {"banking", "cards"}


# --- request validation and error answers -------------------------------------------------------


def test_bad_fields_are_400_naming_the_field(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, _) = versions
    gw = gateway(_routes(v1), max_n=4)
    chat = {"model": "banking", "messages": MESSAGES}
    prompt = {"model": "banking", "prompt": "card"}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("chat/completions", {**chat, "logprobs": "yes"}, "logprobs"),
        ("chat/completions", {**chat, "logprobs": True, "top_logprobs": "5"}, "top_logprobs"),
        ("chat/completions", {**chat, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ("chat/completions", {**chat, "top_logprobs": 2}, "top_logprobs"),
        ("chat/completions", {**chat, "messages": [{"role": "user", "content": 123}]}, "messages[0].content"),
        ("chat/completions", {**chat, "logprobs": False, "top_logprobs": 0}, "top_logprobs"),
        ("chat/completions", {**chat, "n": 5}, "n"),
        ("chat/completions", {**chat, "n": 0}, "n"),
        ("chat/completions", {**chat, "stream": "yes"}, "stream"),
        ("chat/completions", {**chat, "stream": True, "stream_options": "x"}, "stream_options"),
        ("completions", {**prompt, "logprobs": [1]}, "logprobs"),
        ("completions", {**prompt, "logprobs": -1}, "logprobs"),
        ("completions", {**prompt, "best_of": 100}, "best_of"),
    ]
    for endpoint, body, param in cases:
        r = httpx.post(f"{gw.url}/v1/{endpoint}", json=body, headers={"x-request-id": "req-mine"})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.text)
        assert r.headers["x-request-id"] == "req-mine"


def test_every_error_carries_a_request_id(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, _) = versions
    gw = gateway(_routes(v1))
    answers = [
        httpx.post(f"{gw.url}/v1/chat/completions", content=b"{not json"),
        httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "nope", "messages": MESSAGES}),
        httpx.get(f"{gw.url}/no/such/path"),
        httpx.get(f"{gw.url}/admin/status"),
        httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "banking", "messages": MESSAGES}),
    ]
    assert [r.status_code for r in answers] == [400, 404, 404, 401, 503]
    ids = [r.headers.get("x-request-id") for r in answers]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert answers[-1].headers[VERSION_HEADER] == v1
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=MESSAGES, extra_headers={"x-request-id": "r-1"})
    assert missing.value.request_id == "r-1"


# --- engine faults (fake upstream) --------------------------------------------------------------


def _engine_up(url: str, engine: Any) -> float | None:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'lorafleet_engine_up{{engine="{engine.url}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_refused_connection_marks_the_engine_down_and_answers_503(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    _, (v1, _) = versions
    engine = fake_engines()
    gw = gateway(_routes(v1), [engine.url])
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 4}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body).status_code == 200
    engine.refuse()
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"x-request-id": "req-refused"})
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "service_unavailable"
    assert r.headers["x-request-id"] == "req-refused" and r.headers[VERSION_HEADER] == v1
    assert _engine_up(gw.url, engine) == 0.0


def test_a_slow_engine_times_out_with_504_and_stays_up(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    """An engine that answers later than `timeouts.read_s` is slow, not down: 504, and it keeps
    its traffic."""
    _, (v1, _) = versions
    slow = fake_engines(UpstreamConfig(service_s=1.0))
    gw = gateway(_routes(v1), [slow.url], timeouts={"read_s": 0.3})
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 4}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 504, r.text
    error = r.json()["error"]
    assert error["code"] == "upstream_timeout" and "timeout" in error["message"]
    # the read timeout, not the request's deadline; and no engine address in what the client reads
    assert "timeouts.read_s" in error["message"] and "deadline" not in error["message"]
    assert slow.url.removeprefix("http://") not in error["message"]
    assert _engine_up(gw.url, slow) == 1.0


def test_entropy_max_per_s_bounds_the_answers_scored(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    _, (v1, _) = versions
    engine = fake_engines()
    gw = gateway(_routes(v1), [engine.url], entropy_max_per_s=1)
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 4}
    started = time.monotonic()
    with httpx.Client() as client:
        for _ in range(20):
            assert client.post(f"{gw.url}/v1/chat/completions", json=body).status_code == 200
    seconds = int(time.monotonic() - started) + 2  # the clock seconds the requests spanned, at most
    requests = f'lorafleet_router_requests_total{{arm="stable",code_class="2xx",route="banking",version="{v1}"}} 20.0'
    text = _metrics_showing(gw.url, requests, 10, "the 20 requests were not counted")
    (scored,) = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "lorafleet_response_token_entropy_nats_count" and s.labels.get("version") == v1
    ]
    assert 1 <= scored <= min(2 * seconds, 19)  # at most 2 in a second (twice the budget)


def test_a_failed_engine_is_retried_on_another_engine_holding_the_version(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    _, (v1, _) = versions
    alive, dead = fake_engines(), fake_engines()
    gw = gateway(_routes(v1), [alive.url, dead.url])
    dead.refuse()
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 4}
    # Engines are picked in turn: of two requests, one goes to the dead engine first.
    answers = [httpx.post(f"{gw.url}/v1/chat/completions", json=body) for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert all(r.headers[VERSION_HEADER] == v1 and r.headers["x-lorafleet-arm"] == "stable" for r in answers)
    assert _engine_up(gw.url, dead) == 0.0 and _engine_up(gw.url, alive) == 1.0


def test_api_keys_guard_the_inference_endpoints_and_the_sdk_sends_them(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    _, (v1, _) = versions
    gw = gateway(_routes(v1), [fake_engines().url], api_keys=["team-key-1", "team-key-2"])
    missing = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "banking", "messages": MESSAGES})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    for key in ("wrong", "team-key-12"):
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            client.chat.completions.create(model="banking", messages=MESSAGES, max_tokens=4)
        assert err.value.status_code == 401 and err.value.type == "authentication_error"
    for key in ("team-key-1", "team-key-2"):
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.with_raw_response.create(
            model="banking",
            messages=MESSAGES,
            max_tokens=4,
        )
        assert answer.headers[VERSION_HEADER] == v1
        assert [m.id for m in client.models.list()]
    # Health checks and scrapes need no key; the admin API keeps its own token.
    assert httpx.get(f"{gw.url}/health").status_code == 200
    assert httpx.get(f"{gw.url}/metrics").status_code == 200
    assert (
        httpx.get(f"{gw.url}/admin/status", headers={"authorization": "Bearer team-key-1"}).status_code == 401
    )
    assert httpx.get(f"{gw.url}/admin/status", headers=AUTH).status_code == 200


def test_pin_and_session_headers_match_in_any_case(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    _, (v1, v2) = versions
    routes = f"routes:\n  banking:\n    stable: {v1}\n    pinned: [{v2}]\n"
    gw = gateway(routes, [fake_engines().url], pin_header="X-Pin-Version", session_header="X-Team-Session")
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 4}
    for name in ("x-pin-version", "X-PIN-VERSION"):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={name: v2})
        assert r.status_code == 200 and r.headers[VERSION_HEADER] == v2, r.text
        assert r.headers["x-lorafleet-arm"] == "pinned"
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json=body,
        headers={"X-Request-ID": "req-mine", "X-TEAM-SESSION": "s-1"},
    )
    assert r.status_code == 200 and r.headers[VERSION_HEADER] == v1
    assert r.headers["x-request-id"] == "req-mine"


# Streams are pushed from the engine's connection to the client's socket under the gateway's own
# server, and iterated under any other: both ways.
SERVERS = pytest.mark.parametrize(
    "http", [GatewayHttpProtocol, None], ids=["pushed-gateway-protocol", "iterated-plain-uvicorn"]
)


def _metrics_showing(url: str, line: str, timeout_s: float, failure: str) -> str:
    """The gateway's /metrics once it holds `line` (a stream is counted when its relay closes)."""
    pages: list[str] = []

    def showing() -> bool:
        pages.append(httpx.get(f"{url}/metrics").text)
        return line in pages[-1]

    wait_until(showing, timeout_s, failure)
    return pages[-1]


@SERVERS
def test_a_client_that_leaves_after_done_got_the_whole_answer(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
    http: type[asyncio.Protocol] | None,
) -> None:
    """The SDK stops reading at `[DONE]`; an engine may end its body later: not a cancelled request."""
    _, (v1, _) = versions
    late = fake_engines(UpstreamConfig(end_after_done_s=3.0))
    gw = gateway(_routes(v1), [late.url], http=http)
    body = {"model": "banking", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line == "data: [DONE]":
                break
    completion_id = json.loads(lines[0].removeprefix("data: "))["id"]
    ok = (
        f'lorafleet_router_requests_total{{arm="stable",code_class="2xx",route="banking",version="{v1}"}} 1.0'
    )
    text = _metrics_showing(gw.url, ok, 10, "the stream was not counted as answered")
    assert (
        f'lorafleet_router_errors_total{{reason="client_cancelled",route="banking",version="{v1}"}} 0.0'
        in text
    )
    verdict = httpx.post(f"{gw.url}/v1/feedback", json={"completion_id": completion_id, "correct": True})
    assert verdict.status_code == 201, verdict.text


@SERVERS
def test_an_engine_that_ends_its_body_late_does_not_hold_the_client(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
    http: type[asyncio.Protocol] | None,
) -> None:
    """The response ends with the engine's `[DONE]`; the engine's body is read to its end after."""
    _, (v1, _) = versions
    late = fake_engines(UpstreamConfig(end_after_done_s=8.0))
    gw = gateway(_routes(v1), [late.url], http=http)
    body = {"model": "banking", "messages": MESSAGES, "stream": True}
    # A client that reads the whole HTTP body, with less patience than the engine's lag.
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=4)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    ok = (
        f'lorafleet_router_requests_total{{arm="stable",code_class="2xx",route="banking",version="{v1}"}} 1.0'
    )
    _metrics_showing(gw.url, ok, 15, "the stream was not counted once the engine ended it")


@SERVERS
def test_a_client_that_leaves_mid_stream_is_not_an_error_of_the_version(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
    http: type[asyncio.Protocol] | None,
) -> None:
    _, (v1, _) = versions
    slow = fake_engines(UpstreamConfig(chunks=200, itl_s=0.2))  # 40 s: time to leave mid-stream
    gw = gateway(_routes(v1), [slow.url], http=http)
    body = {"model": "banking", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    series = f'lorafleet_router_errors_total{{reason="client_cancelled",route="banking",version="{v1}"}} 1.0'
    # Counted, and the engine let go, long before the engine would have ended the stream.
    text = _metrics_showing(gw.url, series, 10, "the cancelled stream was not counted")
    engine = gw.app.state.gateway.fleet.engines[slow.url]
    wait_until(lambda: engine.in_flight == 0, 10, "the engine's stream was not let go")
    assert 'reason="stream_aborted",route="banking"' in text  # the series exists, primed at zero
    assert (
        f'lorafleet_router_errors_total{{reason="stream_aborted",route="banking",version="{v1}"}} 0.0' in text
    )
    monitor = httpx.get(f"{gw.url}/admin/monitor", headers=AUTH).json()["versions"]
    (mine,) = [v for v in monitor if v["version"] == v1]
    assert mine["requests"] == 1 and mine["errors"] == 0 and mine["error_ratio"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream-before-its-head"])
def test_a_client_that_leaves_while_the_engine_works_lets_the_engine_go(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
    fault_proxy: Callable[..., Any],
    stream: bool,
) -> None:
    """A client that gives up (its timeout, a closed tab) before the answer: the engine's request
    is abandoned at once (its connection closed: vLLM aborts the generation), and counted as
    cancelled by the client, not as an error of the version."""
    _, (v1, _) = versions
    slow = fault_proxy(fake_engines().url, script=["hang"])  # no answer, not even a head, for 30 s
    gw = gateway(_routes(v1), [slow.url])
    engine = gw.app.state.gateway.fleet.engines[slow.url]
    body = {"model": "banking", "messages": MESSAGES, "stream": stream}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=1)
    series = f'lorafleet_router_errors_total{{reason="client_cancelled",route="banking",version="{v1}"}} 1.0'
    _metrics_showing(gw.url, series, 10, "the request its client left was not counted as cancelled")
    wait_until(
        lambda: engine.in_flight == 0 and _busy_connections(gw.url, slow.url) == 0,
        5,
        "the engine's request was not let go",
    )
    monitor = httpx.get(f"{gw.url}/admin/monitor", headers=AUTH).json()["versions"]
    (mine,) = [v for v in monitor if v["version"] == v1]
    assert mine["errors"] == 0


def test_a_missing_routes_file_is_a_warning_at_start_up(
    gateway: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="lorafleet.router"):
        gw = gateway(None)
    assert any("holds no routes file" in r.getMessage() for r in caplog.records), caplog.text
    assert httpx.post(f"{gw.url}/v1/completions", json={"model": "banking", "prompt": "x"}).status_code == 404


# --- start-up -------------------------------------------------------------------------------------


LORAFLEET = Path(sys.executable).parent / "lorafleet"


def _gateway_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LORAFLEET, "gateway", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_bad_gateway_options_are_one_line_errors_naming_the_setting(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("routes:\n  Banking:\n    stable: banking-v1-20261124\n")
    common: list[str | Path] = ["--registry", tmp_path / "registry"]
    cases: list[tuple[list[str | Path], str]] = [
        (["--port", "70000", "--routes", tmp_path / "none.yaml"], "port"),
        (
            ["--admin-token-file", tmp_path / "missing.token", "--routes", tmp_path / "none.yaml"],
            "admin_token_file",
        ),
        (["--controller", "sometimes", "--routes", tmp_path / "none.yaml"], "controller"),
        (["--routes", routes], "route name 'Banking'"),
    ]
    for args, named in cases:
        proc = _gateway_cli(*args, *common)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and named in proc.stderr, (args, proc.stderr)
        assert proc.stderr.startswith("error: "), proc.stderr


def _feedback_counted(url: str, version: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "lorafleet_feedback_total" and sample.labels.get("version") == version:
                return sample.value
    return 0.0


def test_feedback_reaches_the_replica_that_answered_through_its_peers(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
    tmp_path: Path,
) -> None:
    _, (v1, _) = versions
    engine = fake_engines()
    ports = [free_port(), free_port()]
    # Each replica lists itself too, as the addresses of a headless Service would.
    peers = [f"http://127.0.0.1:{p}" for p in ports]
    a, b = (
        gateway(_routes(v1), [engine.url], port=port, peers=peers, state_dir=tmp_path / name)
        for name, port in zip("ab", ports, strict=True)
    )
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 4}
    completion_id = httpx.post(f"{a.url}/v1/chat/completions", json=body).json()["id"]

    first = httpx.post(f"{b.url}/v1/feedback", json={"completion_id": completion_id, "correct": True})
    assert first.status_code == 201, first.text
    assert first.json()["version"] == v1 and first.json()["completion_id"] == completion_id
    repeat = httpx.post(f"{b.url}/v1/feedback", json={"completion_id": completion_id, "correct": True})
    assert repeat.status_code == 200
    conflict = httpx.post(f"{b.url}/v1/feedback", json={"completion_id": completion_id, "correct": False})
    assert conflict.status_code == 409
    assert _feedback_counted(a.url, v1) == 1.0 and _feedback_counted(b.url, v1) == 0.0

    unknown = httpx.post(f"{b.url}/v1/feedback", json={"completion_id": "chatcmpl-nope", "correct": True})
    assert unknown.status_code == 404
    assert "its 2 gateway peer(s)" in unknown.json()["error"]["message"]

    a.stop()
    gone = httpx.post(f"{b.url}/v1/feedback", json={"completion_id": completion_id, "label": "x"})
    assert gone.status_code == 503 and gone.json()["error"]["type"] == "service_unavailable"
    assert "1 peer(s) did not answer" in gone.json()["error"]["message"]


def test_clients_that_leave_at_any_point_leave_nothing_held(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    """Clients that hang up while the engine thinks, before the first event or mid-stream: the
    engine's in-flight count goes back to 0 and every pooled connection is idle or closed."""
    _, (v1, _) = versions
    slow = fake_engines(UpstreamConfig(chunks=10, service_s=0.05, ttft_s=0.05, itl_s=0.02))
    gw = gateway(_routes(v1), [slow.url])

    async def leave_after(delay_s: float, stream: bool) -> None:
        body = {"model": "banking", "messages": MESSAGES, "stream": stream}
        async with httpx.AsyncClient(timeout=delay_s) as client:
            with contextlib.suppress(httpx.TimeoutException):
                async with client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass

    async def run() -> None:
        delays = [0.005 * i for i in range(1, 60)]
        await asyncio.gather(*(leave_after(d, i % 2 == 0) for i, d in enumerate(delays)))

    asyncio.run(run())
    state = gw.app.state.gateway
    engine = state.fleet.engines[slow.url]
    wait_until(
        lambda: engine.in_flight == 0 and _busy_connections(gw.url, slow.url) == 0,
        10,
        "no request in flight on the slow engine and none of its connections busy",
    )
    answered = httpx.post(
        f"{gw.url}/v1/chat/completions", json={"model": "banking", "messages": MESSAGES}, timeout=10
    )
    assert answered.status_code == 200


def _busy_connections(gateway_url: str, engine_url: str) -> int:
    """Connections of the gateway to the engine that are open but not idle (/admin/status)."""
    engines = httpx.get(f"{gateway_url}/admin/status", headers=AUTH).json()["engines"]
    connections = next(e["connections"] for e in engines if e["url"] == engine_url)
    return int(connections["open"] - connections["idle"])


# --- the request's deadline and faults through the injected transport ----------------------------


class CountingTransport:
    """The default transport (Http1Pool), counting the requests sent to each engine: a test seam
    given to create_app(transport=...), not a fake of the pool."""

    def __init__(self) -> None:
        from router.http1 import Http1Pool

        self.pool = Http1Pool(8)
        self.sent: dict[str, int] = {}

    async def post(
        self, base: str, path: str, body: bytes, headers: dict[str, str], timeouts: Any, deadline: Any = None
    ) -> Any:
        self.sent[base] = self.sent.get(base, 0) + 1
        return await self.pool.post(base, path, body, headers, timeouts, deadline)

    def stats(self, base: str) -> Any:
        return self.pool.stats(base)

    def forget(self, base: str) -> None:
        self.pool.forget(base)

    async def close(self) -> None:
        await self.pool.close()


def test_an_engine_that_dies_after_reading_a_request_is_never_sent_it_twice(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    _, (v1, _) = versions
    dying = fake_engines(UpstreamConfig(die_after_read=True))
    transport = CountingTransport()
    gw = gateway(_routes(v1), [dying.url], app_kwargs={"transport": transport})
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 4}
    r = httpx.post(
        f"{gw.url}/v1/chat/completions", json=body, headers={"x-request-id": "req-dies"}, timeout=30
    )
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert v1 in message and "req-dies" in message and "closed the connection" in message
    assert dying.url.removeprefix("http://") not in message and "Error" not in message
    assert transport.sent[dying.url] == 1
    assert dying.upstream.requests == 1  # the engine read it once, and only once


def test_an_engine_that_never_answers_is_abandoned_at_the_sdk_timeout_fallback_included(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
) -> None:
    """The openai SDK with timeout=3 sends its timeout; the gateway answers 504 before the SDK
    gives up (an APITimeoutError would mean it did not), though the route has a fallback."""
    _, (v1, v2) = versions
    hung = fake_engines(UpstreamConfig(service_s=60.0))
    gw = gateway(_routes(v1, fallback=v2), [hung.url])
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", timeout=3.0, max_retries=0)
    with pytest.raises(openai.APIStatusError) as answered:
        client.chat.completions.create(model="banking", messages=MESSAGES, max_tokens=4)
    assert answered.value.status_code == 504
    assert "deadline" in answered.value.message and v1 in answered.value.message


@SERVERS
def test_a_stream_past_its_deadline_ends_with_an_error_event(
    gateway: Callable[..., Any],
    fake_engines: Callable[..., Any],
    versions: tuple[Registry, list[str]],
    http: type[asyncio.Protocol] | None,
) -> None:
    _, (v1, _) = versions
    slow = fake_engines(UpstreamConfig(chunks=40, itl_s=0.1))
    gw = gateway(_routes(v1), [slow.url], http=http)
    body = {"model": "banking", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST", f"{gw.url}/v1/chat/completions", json=body, headers={"x-request-timeout": "1.5"}, timeout=30
    ) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "deadline_exceeded" and v1 in error["message"]
    contents = [e for e in events[:-2] if '"content"' in e]
    assert 0 < len(contents) < 40  # some of the answer came, not all of it


def test_a_client_timeout_header_that_is_not_a_number_is_a_400(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]]
) -> None:
    _, (v1, _) = versions
    gw = gateway(_routes(v1))
    body = {"model": "banking", "messages": MESSAGES}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"x-request-timeout": "soon"})
    assert r.status_code == 400 and "x-request-timeout" in r.json()["error"]["message"]


# --- versions that did not help -----------------------------------------------------------------


def test_a_version_that_did_not_help_is_refused_unless_forced_and_the_history_says_so(
    gateway: Callable[..., Any], versions: tuple[Registry, list[str]], tmp_path: Path
) -> None:
    from lorafleet.registry import NewVersion

    registry, (v1, _) = versions
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    verdict = "fine-tuning did not help (under the 5-point bar): tuned accuracy 0.810 against 0.800"
    weak = registry.register(
        "banking", NewVersion(adapter_dir=adapter, base_model="base", helped=False, verdict=verdict)
    ).name
    gw = gateway(_routes(v1))
    for path, body in (
        ("/admin/routes/cards", {"stable": weak}),
        ("/admin/routes/banking/canary", {"version": weak, "weights": [10]}),
        ("/admin/routes/banking/promote", {"version": weak}),
    ):
        refused = httpx.post(f"{gw.url}{path}", headers=AUTH, json=body)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (
            error["code"] == "did_not_help" and verdict in error["message"] and "--force" in error["message"]
        )
    forced = httpx.post(
        f"{gw.url}/admin/routes/banking/promote", headers=AUTH, json={"version": weak, "force": True}
    )
    assert forced.status_code == 200, forced.text
    events = httpx.get(f"{gw.url}/admin/history", headers=AUTH, params={"route": "banking"}).json()["events"]
    assert (
        events[-1]["action"] == "promote"
        and f"forced past its verdict: {weak} did not help" in events[-1]["reason"]
    )
