"""The gateway against the real vLLM engine, driven by the unmodified `openai` SDK."""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from lorafleet.registry import Registry
from router.gateway import VERSION_HEADER
from tests.support import versions_loaded, wait_until

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "I still have not received my new card, where is it?"}]


def _routes(stable: str, extra: str = "", fallback: str = "base") -> str:
    return f"routes:\n  banking:\n    stable: {stable}\n    fallback: {fallback}\n{extra}"


@pytest.fixture
def versions(trained_registry: tuple[Registry, list[str]]) -> tuple[Registry, str, str]:
    registry, (v1, v2) = trained_registry
    return registry, v1, v2


def _wait_loaded(gw_url: str, versions: list[str], timeout_s: float = 60) -> None:
    wait_until(lambda: versions_loaded(gw_url, versions), timeout_s, f"versions {versions} to be loaded")


def test_sdk_sync_and_async_streaming_and_not(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str]
) -> None:
    registry, v1, v2 = versions
    gw = start_gateway(_routes(v1, f"    weights: {{{v2}: 50}}\n"), registry, [engine.url])
    _wait_loaded(gw.url, [v1, v2])
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")

    raw = client.chat.completions.with_raw_response.create(
        model="banking",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        user="alice",
        extra_headers={"x-request-id": "req-abc"},
    )
    reply = raw.parse()
    assert raw.headers[VERSION_HEADER] in (v1, v2)
    assert raw.headers["x-request-id"] == "req-abc"
    assert reply.choices[0].message.content
    assert reply.choices[0].logprobs is None  # asked for entropy on the client's behalf, then stripped
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(model=v2, messages=MESSAGES, max_tokens=6, temperature=0, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and all(c.usage is None for c in chunks)  # the usage chunk was not asked for: not passed on
    full = client.chat.completions.create(model=v2, messages=MESSAGES, max_tokens=6, temperature=0)
    assert full.choices[0].message.content == text

    with_usage = list(
        client.chat.completions.create(
            model="banking",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=2,
        )
    )
    assert with_usage[-1].usage is not None and not with_usage[-1].choices
    token_chunks = [c for c in with_usage if c.choices and c.choices[0].logprobs]
    assert token_chunks and all(
        len(t.top_logprobs) == 2 for c in token_chunks for t in c.choices[0].logprobs.content
    )

    completion = client.completions.create(
        model="banking", prompt="My card has not arrived", max_tokens=3, temperature=0
    )
    assert completion.choices[0].text

    async def run_async() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused")
        first = await aclient.chat.completions.create(
            model=v1, messages=MESSAGES, max_tokens=4, temperature=0
        )
        stream = await aclient.chat.completions.create(
            model=v1, messages=MESSAGES, max_tokens=4, temperature=0, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await aclient.close()
        return [first.choices[0].message.content or "", "".join(parts)]

    a, b = asyncio.run(run_async())
    assert a == b


def test_models_list_routes_and_live_versions_in_openai_shape(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str]
) -> None:
    registry, v1, v2 = versions
    gw = start_gateway(_routes(v1, f"    pinned: [{v2}]\n"), registry, [engine.url])
    _wait_loaded(gw.url, [v1, v2])
    models = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x").models.list()
    by_id = {m.id: m for m in models.data}
    assert set(by_id) == {"banking", v1, v2}
    # the true parent: the base model training recorded, not the name the engine serves it under
    assert by_id[v1].model_extra["parent"] == "SmolLM2-135M-Instruct"
    assert by_id[v2].model_extra["root"] == str(registry.get(v2).adapter_path)
    assert by_id[v2].model_extra["lorafleet"]["state"] == "pinned"


def test_pinning_by_model_name_and_by_header(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str]
) -> None:
    registry, v1, v2 = versions
    gw = start_gateway(_routes(v1, f"    pinned: [{v2}]\n"), registry, [engine.url])
    _wait_loaded(gw.url, [v1, v2])
    body = {"messages": MESSAGES, "max_tokens": 1}
    by_name = httpx.post(f"{gw.url}/v1/chat/completions", json={**body, "model": v2}, timeout=60)
    assert by_name.headers[VERSION_HEADER] == v2 and by_name.headers["x-lorafleet-arm"] == "pinned"
    by_header = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={**body, "model": "banking"},
        headers={"x-lorafleet-version": v2},
        timeout=60,
    )
    assert by_header.headers[VERSION_HEADER] == v2
    plain = httpx.post(f"{gw.url}/v1/chat/completions", json={**body, "model": "banking"}, timeout=60)
    assert plain.headers[VERSION_HEADER] == v1
    unknown = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={**body, "model": "banking"},
        headers={"x-lorafleet-version": "banking-v9-20261125"},
        timeout=60,
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_weighted_split_over_many_users_and_sticky_users(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str]
) -> None:
    registry, v1, v2 = versions
    gw = start_gateway(_routes(v1, f"    weights: {{{v2}: 30}}\n"), registry, [engine.url])
    _wait_loaded(gw.url, [v1, v2])

    async def send(users: list[str]) -> dict[str, str]:
        sem = asyncio.Semaphore(16)
        # Idle connections expire on the client's side well before uvicorn's 5 s keep-alive closes
        # them: with httpx's default (also 5 s) a slow machine can reuse one the server is closing.
        limits = httpx.Limits(keepalive_expiry=2.0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:

            async def one(user: str) -> tuple[str, str]:
                async with sem:
                    r = await client.post(
                        f"{gw.url}/v1/completions",
                        json={"model": "banking", "prompt": "card", "max_tokens": 1, "user": user},
                    )
                    assert r.status_code == 200, r.text
                    return user, r.headers[VERSION_HEADER]

            return dict(await asyncio.gather(*(one(u) for u in users)))

    users = [f"user-{i}" for i in range(300)]
    first = asyncio.run(send(users))
    share = collections.Counter(first.values())[v2] / len(users)
    assert abs(share - 0.30) < 0.08, share
    again = asyncio.run(send(users[:60]))
    assert all(first[u] == again[u] for u in again)
    session = [
        httpx.post(
            f"{gw.url}/v1/completions",
            json={"model": "banking", "prompt": "x", "max_tokens": 1},
            headers={"x-session-id": "session-42"},
            timeout=60,
        ).headers[VERSION_HEADER]
        for _ in range(5)
    ]
    assert len(set(session)) == 1


def test_error_shapes_are_openai_and_never_500(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str]
) -> None:
    registry, v1, _ = versions
    gw = start_gateway(_routes(v1), registry, [engine.url], max_tokens_limit=64, max_body_bytes=20_000)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert not_found.value.body["param"] == "model"
    cases: list[tuple[Any, int, str | None]] = [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        ({"model": "banking"}, 400, "messages"),
        ({"model": "banking", "messages": "hello"}, 400, "messages"),
        ({"model": 7, "messages": MESSAGES}, 400, "model"),
        ({"model": "banking", "messages": MESSAGES, "max_tokens": 1000}, 400, "max_tokens"),
        ({"model": "banking", "messages": MESSAGES, "max_tokens": "ten"}, 400, "max_tokens"),
        ({"model": "banking", "messages": [{"role": "user", "content": "x" * 30_000}]}, 413, None),
    ]
    for body, status, param in cases:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = httpx.post(
            f"{gw.url}/v1/chat/completions",
            timeout=30,
            headers={"content-type": "application/json"},
            **kwargs,
        )
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        if param:
            assert err["param"] == param
    # A prompt too long for the engine's context is the engine's 400, passed on in the same shape.
    long = httpx.post(
        f"{gw.url}/v1/completions",
        json={"model": "banking", "prompt": "card " * 2100, "max_tokens": 5},
        timeout=60,
    )
    assert long.status_code == 400 and set(long.json()["error"]) == {"message", "type", "param", "code"}


def test_fallback_when_the_chosen_version_fails_and_503_when_all_fail(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str], fault_proxy: Any
) -> None:
    registry, v1, v2 = versions
    faults = fault_proxy(engine.url, fail=lambda body: v1.encode() in body)
    gw = start_gateway(_routes(v1, fallback=v2), registry, [faults.url])
    _wait_loaded(gw.url, [v1, v2])
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "banking", "messages": MESSAGES, "max_tokens": 2},
        timeout=60,
    )
    assert (
        r.status_code == 200
        and r.headers[VERSION_HEADER] == v2
        and r.headers["x-lorafleet-arm"] == "fallback"
    )
    assert faults.failed == 1
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert (
        f'lorafleet_router_fallbacks_total{{reason="status_5xx",route="banking",version="{v1}"}} 1.0'
        in metrics
    )
    # The version that failed counts the request as one of its own, failed: its error ratio sees it.
    requests = "lorafleet_router_requests_total"
    assert f'{requests}{{arm="stable",code_class="5xx",route="banking",version="{v1}"}} 1.0' in metrics
    assert f'lorafleet_router_errors_total{{reason="fallback",route="banking",version="{v1}"}} 1.0' in metrics
    assert f'{requests}{{arm="fallback",code_class="2xx",route="banking",version="{v2}"}} 1.0' in metrics

    dead = start_gateway(_routes(v1), registry, [f"http://127.0.0.1:{_closed_port()}"])
    r = httpx.post(
        f"{dead.url}/v1/chat/completions", json={"model": "banking", "messages": MESSAGES}, timeout=60
    )
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "service_unavailable"
    with pytest.raises(openai.APIStatusError) as err:
        openai.OpenAI(base_url=f"{dead.url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="banking", messages=MESSAGES
        )
    assert err.value.status_code == 503


def _closed_port() -> int:
    """A port nothing listens on: bound once, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_routes_file_reloads_while_traffic_flows(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str], tmp_path: Path
) -> None:
    registry, v1, v2 = versions
    gw = start_gateway(_routes(v1, f"    pinned: [{v2}]\n"), registry, [engine.url])
    _wait_loaded(gw.url, [v1, v2])
    routes_file = next(tmp_path.glob("routes-*.yaml"))
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=60) as client:
            i = 0
            while not stop.is_set():
                r = client.post(
                    f"{gw.url}/v1/completions",
                    json={"model": "banking", "prompt": "card", "max_tokens": 2, "user": f"u{i}"},
                )
                seen.append((r.status_code, r.headers.get(VERSION_HEADER, "")))
                i += 1

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(2)
    new = routes_file.with_suffix(".new")
    new.write_text(_routes(v2, f"    pinned: [{v1}]\n"))
    new.replace(routes_file)
    wait_until(lambda: any(v == v2 for _, v in seen[-3:]), 20, f"answers of {v2}")
    time.sleep(1)
    stop.set()
    for w in workers:
        w.join()
    assert seen and all(code == 200 for code, _ in seen), collections.Counter(seen)
    assert seen[0][1] == v1 and seen[-1][1] == v2


def test_a_stream_that_breaks_midway_ends_with_an_error_event(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str], fault_proxy: Any
) -> None:
    registry, v1, _ = versions
    faults = fault_proxy(engine.url, break_after=2)
    gw = start_gateway(_routes(v1), registry, [faults.url])
    _wait_loaded(gw.url, [v1])
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json={"model": "banking", "messages": MESSAGES, "max_tokens": 20, "stream": True},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"code":"stream_aborted"' in lines[-2]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match=f"the stream of {v1} broke \\(request req-"):
        list(client.chat.completions.create(model="banking", messages=MESSAGES, max_tokens=20, stream=True))
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert (
        f'lorafleet_router_errors_total{{reason="stream_aborted",route="banking",version="{v1}"}} 2.0'
        in metrics
    )


def test_metrics_are_summed_over_several_gateway_workers(
    engine: Any, versions: tuple[Registry, str, str], tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    registry, v1, _ = versions
    routes = tmp_path / "routes.yaml"
    routes.write_text(_routes(v1))
    port = _closed_port()
    env = {**os.environ, "LORAFLEET_ROUTER_ADMIN_TOKEN": "t", "LORAFLEET_ROUTER_RECONCILE_INTERVAL_S": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [
        str(Path(sys.executable).parent / "lorafleet"), "gateway", "--routes", str(routes), "--registry",
        str(registry.root), "--engine", engine.url, "--port", str(port), "--workers", "2", "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_loaded(url, [v1], timeout_s=90)
        with httpx.Client(timeout=60) as client:
            for i in range(12):
                # A new connection each time, so that both workers take requests.
                r = httpx.post(
                    f"{url}/v1/completions", json={"model": "banking", "prompt": f"card {i}", "max_tokens": 1}
                )
                assert r.status_code == 200
            # Each worker writes its pending updates every second (and when scraped itself).
            deadline = time.monotonic() + 10
            while True:
                text = client.get(f"{url}/metrics").text
                total = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("lorafleet_router_requests_total{")
                )
                if total == 12 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        assert total == 12
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_stream_null_is_false_and_max_tokens_defaults_to_the_limit(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str]
) -> None:
    registry, v1, _ = versions
    gw = start_gateway(_routes(v1), registry, [engine.url], max_tokens_limit=3)
    _wait_loaded(gw.url, [v1])
    # ignore_eos (vLLM's): without the gateway's default the engine would fill its whole context.
    body = {"model": "banking", "prompt": "My card", "temperature": 0, "ignore_eos": True, "stream": None}
    r = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    assert r.json()["usage"]["completion_tokens"] == 3
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_a_request_without_max_tokens_is_answered_when_the_limit_exceeds_the_engines_context(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str]
) -> None:
    """The default limit (4096) is above the test engine's context (2048): the engine caps the answer."""
    registry, v1, _ = versions
    gw = start_gateway(_routes(v1), registry, [engine.url])
    _wait_loaded(gw.url, [v1])
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    reply = client.chat.completions.create(model="banking", messages=MESSAGES, temperature=0)
    assert reply.choices[0].message.content
    stream = client.chat.completions.create(model="banking", messages=MESSAGES, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_what_the_engine_refuses_is_the_clients_400_in_openais_shape(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str]
) -> None:
    registry, v1, _ = versions
    gw = start_gateway(_routes(v1), registry, [engine.url])
    _wait_loaded(gw.url, [v1])
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="banking", messages=MESSAGES, max_tokens=2, temperature=-1)
    assert err.value.status_code == 400 and "temperature" in err.value.message
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error", body
    assert err.value.response.headers[VERSION_HEADER] == v1
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert (
        f'lorafleet_router_errors_total{{reason="bad_request",route="banking",version="{v1}"}} 1.0' in metrics
    )


def test_a_version_that_is_no_longer_live_loses_its_drift_and_accuracy_series(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str], tmp_path: Path
) -> None:
    registry, v1, v2 = versions
    gw = start_gateway(
        _routes(v1, f"    pinned: [{v2}]\n"), registry, [engine.url], drift_window=10, drift_min_samples=1
    )
    _wait_loaded(gw.url, [v1, v2])
    answer = httpx.post(
        f"{gw.url}/v1/completions", json={"model": v2, "prompt": "card", "max_tokens": 2}, timeout=60
    )
    assert answer.status_code == 200
    feedback = httpx.post(
        f"{gw.url}/v1/feedback", json={"completion_id": answer.json()["id"], "correct": True}, timeout=30
    )
    assert feedback.status_code == 201, feedback.text
    series = (
        f'lorafleet_drift_window_requests{{route="banking",version="{v2}"}}',
        f'lorafleet_live_accuracy_ratio{{route="banking",version="{v2}"}}',
    )

    def exported() -> set[str]:
        text = httpx.get(f"{gw.url}/metrics").text
        return {s for s in series if s in text}

    wait_until(lambda: exported() == set(series), 30, f"{series} to be exported")
    routes_file = next(tmp_path.glob("routes-*.yaml"))
    routes_file.write_text(_routes(v1))
    wait_until(lambda: not exported(), 30, f"{v2}'s series to go after it left the routes")


def test_engine_answers_of_another_layout_or_shape(
    start_gateway: Any, engine: Any, versions: tuple[Registry, str, str], fault_proxy: Any
) -> None:
    """Bytes laid out otherwise take the generic path (same answer, entropy still scored); JSON
    that is no answer object, or no JSON at all, is a 503 in OpenAI's error shape."""
    registry, v1, _ = versions
    body = {"model": "banking", "messages": MESSAGES, "max_tokens": 3, "temperature": 0}
    direct = start_gateway(_routes(v1), registry, [engine.url])
    spaced = start_gateway(
        _routes(v1),
        registry,
        [fault_proxy(engine.url, rewrite=lambda b: json.dumps(json.loads(b)).encode()).url],
    )
    _wait_loaded(direct.url, [v1])
    _wait_loaded(spaced.url, [v1])
    expected = httpx.post(f"{direct.url}/v1/chat/completions", json=body, timeout=60).json()
    r = httpx.post(f"{spaced.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and b'"logprobs":null' in r.content
    reply = r.json()
    assert reply["choices"][0]["message"] == expected["choices"][0]["message"]
    assert reply["choices"][0]["logprobs"] is None
    metrics = httpx.get(f"{spaced.url}/metrics").text
    assert f'lorafleet_response_token_entropy_nats_count{{route="banking",version="{v1}"}} 1.0' in metrics

    for answer in (b"[1, 2]", b"<html>engine overloaded</html>"):
        bad = start_gateway(
            _routes(v1), registry, [fault_proxy(engine.url, rewrite=lambda _, a=answer: a).url]
        )
        _wait_loaded(bad.url, [v1])
        r = httpx.post(f"{bad.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["type"] == "service_unavailable" and "answer could not be read" in error["message"]
