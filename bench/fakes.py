"""The benchmarks' harness: a fake upstream, a minimal proxy, a load generator, and process helpers.

    FakeOpenAIUpstream   a FAKE OpenAI/vLLM server written for the benchmarks (raw asyncio, HTTP/1.1
                         keep-alive): chat completions, non-streaming and SSE streaming with a fixed
                         number of content chunks, logprobs when asked, usage; plus the endpoints the
                         gateway's reconcile loop calls (/health, /v1/models, load/unload adapter).
                         A fixed service time can be added, so a client blocked on a shadow shows.
    PassThroughProxy     a MINIMAL PASS-THROUGH PROXY written for the benchmarks (aiohttp server +
                         one aiohttp client session, uvloop): bytes in, bytes out, no parsing. It is
                         the practical limit of a Python proxy on one core, the yardstick for the
                         gateway's overhead.
    AsgiPassThroughProxy the same minimal pass-through on the gateway's own stack (uvicorn, a plain
                         ASGI callable, one aiohttp client session): what the stack alone costs.
    FastAPIPassThroughProxy  the same minimal pass-through on uvicorn + FastAPI + httpx over
                         httpx-aiohttp: what the stack the design first named would cost.
    ClientPassThroughProxy   the same minimal pass-through on plain ASGI over a tuned aiohttp
                         session, httpcore's pool or pyreqwest: the maintained clients weighed
                         against Http1Pool (bench/upstream_clients.py).
    LoadGenerator        a small HTTP/1.1 client on raw asyncio streams (cheaper per request than
                         aiohttp's), driven over stdin/stdout from the benchmark in its own process.
    Server, LoadGenClient, register_versions, start_gateway, machine_header, summary
                         process plumbing shared by bench/*.py

Run a part alone: `python bench/fakes.py upstream --port 8100`, `... proxy --port 8200 --upstream
http://127.0.0.1:8100`, `... loadgen` (JSON lines on stdin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEMO_CSV = ROOT / "data" / "banking77" / "demo.csv"
BASE_NAME = "base"


def _run_loop(main: Any) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


# --- the fake upstream ------------------------------------------------------------------------


def demo_labels() -> list[str]:
    with DEMO_CSV.open(newline="") as fh:
        return sorted({row["label"] for row in csv.DictReader(fh)})


def _pieces(text: str, n: int) -> list[str]:
    """`text` cut into exactly `n` non-empty pieces (n <= len(text))."""
    bounds = [round(i * len(text) / n) for i in range(n + 1)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class UpstreamConfig:
    chunks: int = 8
    service_s: float = 0.0
    ttft_s: float = 0.0
    itl_s: float = 0.001
    prompt_tokens: int = 40
    end_after_done_s: float = 0.0  # fault injection: a stream's body ends this long after `[DONE]`
    die_after_read: bool = False  # fault injection: read a completion request, close unanswered


class FakeOpenAIUpstream:
    """A FAKE OpenAI upstream for the benchmarks: answers like vLLM, computes nothing.

    Each answer is a label of the demo task, cut into `chunks` tokens; ids are unique per process.
    Non-streaming answers come after `service_s`; streams send their headers at once, the role
    chunk with the first content chunk after `ttft_s`, the next ones `itl_s` apart, then the
    finish chunk, the usage chunk (with stream_options.include_usage) and `data: [DONE]`. Bodies are built once per shape
    and only the id is replaced per request, so the fake costs little CPU beside the proxy it feeds.
    """

    def __init__(self, config: UpstreamConfig | None = None) -> None:
        self.config = config or UpstreamConfig()
        # Short answers are labels of the demo task (the drift window's label feature sees them);
        # longer ones repeat a label until they have `chunks` tokens.
        labels = demo_labels()
        self.labels = [lab for lab in labels if len(lab) >= self.config.chunks] or [
            " ".join([lab] * (self.config.chunks // len(lab) + 1)) for lab in labels
        ]
        self.adapters: dict[str, str] = {}
        self.requests = 0
        self._prefix = uuid.uuid4().hex[:8]
        self._cache: dict[tuple[Any, ...], Any] = {}

    def next_id(self) -> bytes:
        self.requests += 1
        return f"chatcmpl-{self._prefix}{self.requests:09d}".encode()

    # bodies ---------------------------------------------------------------------------------

    def _logprob_items(self, pieces: list[str], top: int) -> list[dict[str, Any]]:
        items = []
        for p in pieces:
            alts = [{"token": p, "logprob": -0.05, "bytes": list(p.encode())}]
            alts += [
                {"token": f"x{j}", "logprob": -3.0 - j, "bytes": list(f"x{j}".encode())}
                for j in range(1, top)
            ]
            items.append(
                {"token": p, "logprob": -0.05, "bytes": list(p.encode()), "top_logprobs": alts[:top]}
            )
        return items

    def _usage(self) -> dict[str, int]:
        c = self.config
        return {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.chunks,
            "total_tokens": c.prompt_tokens + c.chunks,
        }

    def completion_body(self, model: str, label_index: int, top: int | None) -> bytes:
        key = ("full", model, label_index, top)
        if key not in self._cache:
            label = self.labels[label_index]
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": label},
                "logprobs": None,
                "finish_reason": "stop",
            }
            if top is not None:
                choice["logprobs"] = {"content": self._logprob_items(_pieces(label, self.config.chunks), top)}
            body = {
                "id": "@ID@",
                "object": "chat.completion",
                "created": 1764000000,
                "model": model,
                "choices": [choice],
                "usage": self._usage(),
            }
            self._cache[key] = json.dumps(body, separators=(",", ":")).encode()
        return self._cache[key]

    def stream_events(self, model: str, label_index: int, top: int | None, usage: bool) -> list[bytes]:
        key = ("stream", model, label_index, top, usage)
        if key not in self._cache:
            label = self.labels[label_index]
            pieces = _pieces(label, self.config.chunks)
            logprobs = self._logprob_items(pieces, top) if top is not None else None

            def chunk(delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> bytes:
                payload = {
                    "id": "@ID@",
                    "object": "chat.completion.chunk",
                    "created": 1764000000,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}],
                }
                return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

            events = [chunk({"role": "assistant", "content": ""})]
            for i, p in enumerate(pieces):
                events.append(chunk({"content": p}, lp={"content": [logprobs[i]]} if logprobs else None))
            events.append(chunk({}, finish="stop"))
            if usage:
                tail = {
                    "id": "@ID@",
                    "object": "chat.completion.chunk",
                    "created": 1764000000,
                    "model": model,
                    "choices": [],
                    "usage": self._usage(),
                }
                events.append(b"data: " + json.dumps(tail, separators=(",", ":")).encode() + b"\n\n")
            events.append(b"data: [DONE]\n\n")
            self._cache[key] = events
        return list(self._cache[key])

    # requests -------------------------------------------------------------------------------

    def handle(self, conn: _UpstreamConnection, method: str, path: str, body: bytes) -> None:
        path = path.split("?", 1)[0]
        if path == "/health":
            conn.respond(200, b"", b"text/plain")
        elif path == "/v1/models" and method == "GET":
            data = [{"id": BASE_NAME, "object": "model", "root": BASE_NAME, "parent": None}]
            data += [
                {"id": name, "object": "model", "root": root, "parent": BASE_NAME}
                for name, root in sorted(self.adapters.items())
            ]
            conn.respond(200, json.dumps({"object": "list", "data": data}).encode())
        elif path == "/v1/load_lora_adapter" and method == "POST":
            req = json.loads(body or b"{}")
            name = str(req.get("lora_name"))
            if name in self.adapters:
                msg = {"error": {"message": f"The lora adapter '{name}' has already been loaded."}}
                conn.respond(400, json.dumps(msg).encode())
            else:
                self.adapters[name] = str(req.get("lora_path"))
                conn.respond(
                    200, f"Success: LoRA adapter '{name}' added successfully.".encode(), b"text/plain"
                )
        elif path == "/v1/unload_lora_adapter" and method == "POST":
            name = str(json.loads(body or b"{}").get("lora_name"))
            if self.adapters.pop(name, None) is None:
                conn.respond(404, json.dumps({"error": {"message": f"'{name}' is not loaded"}}).encode())
            else:
                conn.respond(
                    200, f"Success: LoRA adapter '{name}' removed successfully.".encode(), b"text/plain"
                )
        elif path == "/v1/chat/completions" and method == "POST":
            self._chat(conn, body)
        else:
            conn.respond(404, b'{"error":{"message":"not found","type":"NotFoundError"}}')

    def _chat(self, conn: _UpstreamConnection, raw: bytes) -> None:
        try:
            req = json.loads(raw)
        except ValueError:
            conn.respond(400, b'{"error":{"message":"invalid JSON","type":"BadRequestError"}}')
            return
        model = str(req.get("model") or BASE_NAME)
        top = None
        if req.get("logprobs"):
            top = max(1, int(req.get("top_logprobs") or 1))
        rid = self.next_id()
        label_index = self.requests % len(self.labels)
        c = self.config
        if c.die_after_read:  # as an engine that crashed while working on the request
            if conn.transport is not None:
                conn.transport.close()
            return
        if not req.get("stream"):
            body = self.completion_body(model, label_index, top).replace(b"@ID@", rid, 1)
            conn.respond_later(c.service_s, 200, body)
            return
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        events = [e.replace(b"@ID@", rid, 1) for e in self.stream_events(model, label_index, top, usage)]
        conn.stream(events, c.ttft_s, c.itl_s)


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the fake upstream; requests are answered in order."""

    def __init__(self, upstream: FakeOpenAIUpstream) -> None:
        self.upstream = upstream
        self.buffer = bytearray()
        self.busy = False
        self.close_after = False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _body(self, start: int, length: int | None) -> tuple[bytes, int] | None:
        """(body, end) from the buffer, or None if it is not complete; length None: chunked."""
        buf = self.buffer
        if length is not None:
            end = start + length
            return (bytes(buf[start:end]), end) if len(buf) >= end else None
        body = bytearray()
        pos = start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                end = buf.find(b"\r\n", eol + 2)
                return (bytes(body), end + 2) if end >= 0 else None
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = bytes(self.buffer[:head_end]).decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length: int | None = 0
            self.close_after = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    length = None
                elif name == "connection" and value.strip().lower() == "close":
                    self.close_after = True
            found = self._body(head_end + 4, length)
            if found is None:
                return
            body, end = found
            del self.buffer[:end]
            self.upstream.handle(self, method, target, body)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _done(self) -> None:
        self.busy = False
        if self.close_after and self.transport is not None:
            self.transport.close()
            return
        self._next()

    def respond(self, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
            status,
            _REASONS.get(status, b"Error"),
            content_type,
            len(body),
        )
        self._write(head + body)

    def respond_later(self, delay_s: float, status: int, body: bytes) -> None:
        if delay_s <= 0:
            self.respond(status, body)
            return
        self.busy = True

        def fire() -> None:
            self.respond(status, body)
            self._done()

        self.loop.call_later(delay_s, fire)

    def stream(self, events: list[bytes], ttft_s: float, itl_s: float) -> None:
        """Headers at once; the role chunk with the first content chunk after `ttft_s`, as vLLM
        does (its first result comes after prefill); the next ones `itl_s` apart; the tail with the last."""
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        framed = [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]
        content = self.upstream.config.chunks
        steps = [framed[0] + framed[1], *framed[2:content], b"".join(framed[content:])]
        last_gap = self.upstream.config.end_after_done_s
        if last_gap > 0:
            steps[-1:] = [b"".join(framed[content:-1]), framed[-1]]
        elif ttft_s <= 0 and itl_s <= 0:
            self._write(head + b"".join(steps))
            return
        self.busy = True
        self._write(head)

        def send(i: int) -> None:
            self._write(steps[i])
            if i + 1 < len(steps):
                self.loop.call_later(last_gap if last_gap > 0 and i + 2 == len(steps) else itl_s, send, i + 1)
            else:
                self._done()

        if ttft_s > 0:
            self.loop.call_later(ttft_s, send, 0)
        else:
            send(0)


async def serve_upstream(host: str, port: int, config: UpstreamConfig) -> None:
    upstream = FakeOpenAIUpstream(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _UpstreamConnection(upstream), host, port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


# --- the minimal pass-through proxy -----------------------------------------------------------


class PassThroughProxy:
    """A MINIMAL PASS-THROUGH PROXY for the benchmarks: the practical limit of a Python proxy here.

    aiohttp's server and one pooled aiohttp client session on uvloop: the request body is sent on
    unread and unparsed, a JSON answer is returned whole, an SSE answer is relayed chunk by chunk as
    it arrives. No routing, no validation, no metrics: anything the gateway does costs more.
    """

    def __init__(self, upstream: str, max_connections: int = 512) -> None:
        self.upstream = upstream.rstrip("/")
        self.max_connections = max_connections
        self.session: Any = None

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with self.session.request(
            request.method, self.upstream + request.rel_url.path_qs, data=body, headers=headers
        ) as resp:
            content_type = resp.headers.get("Content-Type", "application/json")
            if content_type.startswith("text/event-stream"):
                out = web.StreamResponse(
                    status=resp.status, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
                )
                await out.prepare(request)
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
            data = await resp.read()
            return web.Response(body=data, status=resp.status, headers={"Content-Type": content_type})

    async def serve(self, host: str, port: int) -> None:
        import aiohttp
        from aiohttp import web

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
            auto_decompress=False,
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await runner.cleanup()
        await self.session.close()


async def _asgi_lifespan(
    receive: Any, send: Any, open_: Callable[[], None], close: Callable[[], Any]
) -> None:
    """An ASGI lifespan: `open_()` at start-up, `await close()` at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            open_()
            await send({"type": "lifespan.startup.complete"})
        else:
            await close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _asgi_body(receive: Any) -> bytes:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _asgi_stream(send: Any, status: int, content_type: bytes, chunks: AsyncIterator[bytes]) -> None:
    start = [(b"content-type", content_type), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": status, "headers": start})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _asgi_whole(send: Any, status: int, content_type: bytes, data: bytes) -> None:
    start = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": data})


class AsgiPassThroughProxy:
    """A MINIMAL PASS-THROUGH PROXY on the gateway's own stack, for the benchmarks: uvicorn (uvloop,
    httptools) serving a plain ASGI callable that forwards through one aiohttp client session, the
    way the gateway's completion endpoints do (router/openai_api.py CompletionsFastPath).

    It separates what the stack costs from what lorafleet's request path adds on top of it.
    """

    def __init__(self, upstream: str, max_connections: int = 512) -> None:
        self.upstream = upstream.rstrip("/")
        self.max_connections = max_connections
        self.session: Any = None

    def _open(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
            auto_decompress=False,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _asgi_lifespan(receive, send, self._open, lambda: self.session.close())
            return
        body = await _asgi_body(receive)
        headers = {"Content-Type": "application/json"}
        async with self.session.request(
            scope["method"], self.upstream + scope["path"], data=body, headers=headers
        ) as resp:
            content_type = resp.headers.get("Content-Type", "application/json").encode()
            if content_type.startswith(b"text/event-stream"):
                await _asgi_stream(send, resp.status, content_type, resp.content.iter_any())
                return
            data = await resp.read()
            await _asgi_whole(send, resp.status, content_type, data)

    def serve(self, host: str, port: int) -> None:
        import uvicorn

        uvicorn.run(self, host=host, port=port, log_level="warning", access_log=False)


class LeanPassThroughProxy:
    """A MINIMAL PASS-THROUGH PROXY on the gateway's own stack with its own client, for the
    benchmarks: uvicorn (uvloop, httptools) serving a plain ASGI callable that forwards through
    router/http1.py's Http1Pool, as the gateway does. Against AsgiPassThroughProxy it measures the
    client alone; against the gateway, what lorafleet's request path adds to its whole stack.
    """

    def __init__(self, upstream: str, max_connections: int = 512) -> None:
        self.upstream = upstream.rstrip("/")
        self.max_connections = max_connections
        self.pool: Any = None

    def _open(self) -> None:
        from router.http1 import Http1Pool

        self.pool = Http1Pool(self.max_connections)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from router.http1 import Timeouts

        if scope["type"] == "lifespan":
            await _asgi_lifespan(receive, send, self._open, lambda: self.pool.close())
            return
        body = await _asgi_body(receive)
        resp = await self.pool.post(
            self.upstream,
            scope["path"],
            body,
            {"Content-Type": "application/json"},
            Timeouts(pool_s=10.0, connect_s=10.0, read_s=120.0),
        )
        try:
            content_type = resp.headers.get("content-type", "application/json").encode()
            if content_type.startswith(b"text/event-stream"):
                await _asgi_stream(send, resp.status, content_type, resp.iter_any())
                return
            data = await resp.read()
        finally:
            resp.release()
        await _asgi_whole(send, resp.status, content_type, data)

    def serve(self, host: str, port: int) -> None:
        import uvicorn

        uvicorn.run(self, host=host, port=port, log_level="warning", access_log=False)


class ClientPassThroughProxy:
    """A MINIMAL PASS-THROUGH PROXY for the benchmarks on the gateway's stack (uvicorn, uvloop,
    httptools, a plain ASGI callable) forwarding through one of the maintained clients that
    bench/upstream_clients.py weighs against router/http1.py's Http1Pool:

        aiohttp     one ClientSession tuned for a proxy: no DNS lookups after the first, no
                    decompression, no default headers, 64 KiB reads, per-host pool = the limit
        httpcore    httpcore's AsyncConnectionPool used directly (httpx's transport, without httpx)
        pyreqwest   pyreqwest (Rust reqwest/hyper under Python), installed only for the benchmark
                    into bench/.clients (never a project dependency)

    Same shape as LeanPassThroughProxy: read the body, POST it, return the answer whole or relay
    its bytes as they come.
    """

    def __init__(self, upstream: str, client: str, max_connections: int = 512) -> None:
        self.upstream = upstream.rstrip("/")
        self.client = client
        self.max_connections = max_connections
        self.handle: Any = None

    def _open(self) -> None:
        self.handle, self._close = getattr(self, f"_open_{self.client}")()

    def _open_aiohttp(self) -> tuple[Any, Callable[[], Any]]:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=self.max_connections,
                ttl_dns_cache=None,
                enable_cleanup_closed=False,
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            read_bufsize=1 << 16,
            trust_env=False,
        )
        headers = {"Content-Type": "application/json"}

        async def handle(path: str, body: bytes, send: Any) -> None:
            async with session.post(self.upstream + path, data=body, headers=headers) as resp:
                content_type = resp.headers.get("Content-Type", "application/json").encode()
                if content_type.startswith(b"text/event-stream"):
                    await _asgi_stream(send, resp.status, content_type, resp.content.iter_any())
                    return
                data = await resp.read()
            await _asgi_whole(send, resp.status, content_type, data)

        return handle, session.close

    def _open_httpcore(self) -> tuple[Any, Callable[[], Any]]:
        import httpcore

        pool = httpcore.AsyncConnectionPool(
            max_connections=self.max_connections, max_keepalive_connections=self.max_connections
        )
        headers = [
            (b"Host", self.upstream.split("://", 1)[1].encode()),
            (b"Content-Type", b"application/json"),
        ]
        timeouts = {"connect": 10.0, "read": 120.0, "write": 10.0, "pool": 10.0}

        async def handle(path: str, body: bytes, send: Any) -> None:
            async with pool.stream(
                "POST",
                self.upstream + path,
                headers=[*headers, (b"Content-Length", str(len(body)).encode())],
                content=body,
                extensions={"timeout": timeouts},
            ) as resp:
                content_type = dict(resp.headers).get(b"content-type", b"application/json")
                if content_type.startswith(b"text/event-stream"):
                    await _asgi_stream(send, resp.status, content_type, resp.aiter_stream())
                    return
                data = await resp.aread()
            await _asgi_whole(send, resp.status, content_type, data)

        return handle, pool.aclose

    def _open_pyreqwest(self) -> tuple[Any, Callable[[], Any]]:
        from datetime import timedelta

        from pyreqwest.client import ClientBuilder

        client = (
            ClientBuilder()
            .max_connections(self.max_connections)
            .pool_max_idle_per_host(self.max_connections)
            .http1_only()
            .read_timeout(timedelta(seconds=120))
            .connect_timeout(timedelta(seconds=10))
            .build()
        )

        async def chunks(reader: Any) -> AsyncIterator[bytes]:
            while (chunk := await reader.read_chunk()) is not None:
                yield bytes(chunk)

        async def handle(path: str, body: bytes, send: Any) -> None:
            request = (
                client.post(self.upstream + path)
                .header("Content-Type", "application/json")
                .body_bytes(body)
                .build_streamed()
            )
            async with request as resp:
                content_type = (resp.get_header("content-type") or "application/json").encode()
                if content_type.startswith(b"text/event-stream"):
                    await _asgi_stream(send, resp.status, content_type, chunks(resp.body_reader))
                    return
                data = bytes(await resp.bytes())
            await _asgi_whole(send, resp.status, content_type, data)

        return handle, client.close

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _asgi_lifespan(receive, send, self._open, lambda: self._close())
            return
        await self.handle(scope["path"], await _asgi_body(receive), send)

    def serve(self, host: str, port: int) -> None:
        import uvicorn

        uvicorn.run(self, host=host, port=port, log_level="warning", access_log=False)


class FastAPIPassThroughProxy:
    """A MINIMAL PASS-THROUGH PROXY on uvicorn (uvloop, httptools) + FastAPI + one httpx.AsyncClient
    over the httpx-aiohttp transport, and nothing else, for the benchmarks: the stack the gateway's
    design first named, measured beside the one it uses.
    """

    def __init__(self, upstream: str, max_connections: int = 512) -> None:
        self.upstream = upstream.rstrip("/")
        self.max_connections = max_connections

    def app(self) -> Any:
        import httpx
        from fastapi import FastAPI, Request
        from httpx_aiohttp import AiohttpTransport
        from starlette.background import BackgroundTask
        from starlette.responses import Response, StreamingResponse

        limits = httpx.Limits(
            max_connections=self.max_connections, max_keepalive_connections=self.max_connections
        )
        client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits), limits=limits, timeout=120)
        app = FastAPI()

        async def forward(request: Request) -> Response:
            body = await request.body()
            req = client.build_request(
                request.method,
                self.upstream + request.url.path,
                content=body,
                headers={"content-type": request.headers.get("content-type", "application/json")},
            )
            resp = await client.send(req, stream=True)
            content_type = resp.headers.get("content-type", "application/json")
            if content_type.startswith("text/event-stream"):
                return StreamingResponse(
                    resp.aiter_raw(),
                    status_code=resp.status_code,
                    media_type=content_type,
                    background=BackgroundTask(resp.aclose),
                )
            data = await resp.aread()
            await resp.aclose()
            return Response(data, status_code=resp.status_code, media_type=content_type)

        # Annotations are strings here (__future__); FastAPI resolves them in the module, so give
        # it the classes that are imported locally.
        forward.__annotations__ = {"request": Request, "return": Response}
        app.api_route("/{path:path}", methods=["GET", "POST"])(forward)
        return app

    def serve(self, host: str, port: int) -> None:
        import uvicorn

        uvicorn.run(self.app(), host=host, port=port, log_level="warning", access_log=False)


# --- the load generator -----------------------------------------------------------------------

_CONTENT = re.compile(rb'"content":"[^"]')


@dataclass
class LoadSpec:
    """One measurement: `concurrency` connections sending `body` until `duration_s` or `requests`."""

    url: str
    body: str
    stream: bool = False
    concurrency: int = 1
    duration_s: float | None = None
    requests: int | None = None
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    counter_start: int | None = None  # "@N@" in the body: a request number, from here or the last one's next


class LoadGenerator:
    """An HTTP/1.1 keep-alive client on raw asyncio streams; measures latency and time to first token.

    TTFT is the time to the first received bytes holding a non-empty `"content":"` delta. Request
    numbers go on across runs unless a spec sets `counter_start`, so every user id is new.
    """

    def __init__(self) -> None:
        self.next_number = 0

    async def run(self, spec: LoadSpec) -> dict[str, Any]:
        host, _, port = spec.url.removeprefix("http://").rstrip("/").partition(":")
        head = f"POST {spec.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in spec.headers.items())
        parts = spec.body.encode().split(b"@N@")
        counter = [self.next_number if spec.counter_start is None else spec.counter_start]
        lat: list[float] = []
        ttft: list[float] = []
        errors: list[str] = []
        conns = []
        for _ in range(spec.concurrency):
            conns.append(await asyncio.open_connection(host, int(port)))
        start = time.perf_counter()
        deadline = start + spec.duration_s if spec.duration_s else float("inf")
        budget = spec.requests if spec.requests is not None else 1 << 62

        def request() -> bytes:
            n = counter[0]
            counter[0] += 1
            body = str(n).encode().join(parts)
            return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body

        async def worker(i: int) -> None:
            nonlocal budget
            reader, writer = conns[i]
            while time.perf_counter() < deadline and budget > 0:
                budget -= 1
                t0 = time.perf_counter()
                writer.write(request())
                try:
                    first, ok, close = await self._read(reader, spec.stream, t0)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                t1 = time.perf_counter()
                if not ok:
                    errors.append(ok_text(first))
                else:
                    lat.append((t1 - t0) * 1e3)
                    if spec.stream and isinstance(first, float):
                        ttft.append((first - t0) * 1e3)
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
            writer.close()

        def ok_text(x: Any) -> str:
            return str(x)[:300]

        await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
        elapsed = time.perf_counter() - start
        self.next_number = counter[0]
        return {
            "lat": [round(x, 4) for x in lat],
            "ttft": [round(x, 4) for x in ttft],
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "elapsed_s": elapsed,
            "counter": counter[0],
        }

    @staticmethod
    async def _read(reader: asyncio.StreamReader, stream: bool, t0: float) -> tuple[Any, bool, bool]:
        """(first content time or error text, ok, server closes) for one response."""
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        chunked = False
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        first: float | None = None
        done = False
        body = b""
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = (await reader.readexactly(size + 2))[:-2]
                if first is None and _CONTENT.search(data):
                    first = time.perf_counter()
                if b"[DONE]" in data:
                    done = True
                if status != 200:
                    body += data
        elif length is not None:
            body = await reader.readexactly(length)
            if stream:
                first = time.perf_counter() if _CONTENT.search(body) else None
                done = b"[DONE]" in body
        if status != 200:
            return f"HTTP {status}: {body[:200]!r}", False, close
        if stream and not done:
            return "stream ended without [DONE]", False, close
        return first, True, close


def loadgen_main() -> None:
    """Serve LoadSpec JSON lines from stdin, one result JSON line each, until stdin closes."""

    async def main() -> None:
        gen = LoadGenerator()
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            spec = LoadSpec(**json.loads(line))
            try:
                result = await gen.run(spec)
            except Exception as exc:
                result = {"lat": [], "ttft": [], "errors": 1, "first_error": repr(exc), "elapsed_s": 0}
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

    _run_loop(main())


# --- processes --------------------------------------------------------------------------------


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@dataclass
class Layout:
    """Which core runs what: the system under test alone on its core when there are 2 or more."""

    sut: int
    upstream: int
    loadgen: int

    @classmethod
    def choose(cls) -> Layout:
        cs = cores()
        if len(cs) == 1:
            return cls(cs[0], cs[0], cs[0])
        if len(cs) == 2:
            return cls(cs[1], cs[0], cs[0])
        return cls(cs[-1], cs[0], cs[1])

    def describe(self) -> str:
        shared = " (shared with the fake upstream)" if self.loadgen == self.upstream else ""
        return (
            f"core {self.sut}: system under test (proxy or gateway) alone; "
            f"core {self.upstream}: fake upstream; core {self.loadgen}: load generator{shared}"
        )


class Server:
    """A child process pinned to one core, stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        core: int | None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        out = log.open("ab") if log else subprocess.DEVNULL
        argv = list(argv)
        if core is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(core), *argv]  # pinned before exec: every thread inherits it
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if core is not None:
            os.sched_setaffinity(self.proc.pid, {core})
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def pin_all(self, core: int) -> None:
        """Pin every thread (already started ones too) to `core`."""
        for t in self.ps.threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(t.id, {core})

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def user_s(self) -> float:
        """CPU time in user space only (the rest of cpu_s is the kernel's, system calls mostly)."""
        return float(self.ps.cpu_times().user)

    def rss_bytes(self) -> int:
        return int(self.ps.memory_info().rss)

    def wait_http(self, url: str, timeout_s: float = 60, ok: Callable[[bytes], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    body = r.read()
                    if r.status == 200 and (ok is None or ok(body)):
                        return
                    last = body[:200].decode(errors="replace")
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.2)
        self.stop()  # the caller never gets this server back: do not leave it running
        raise RuntimeError(f"{self.name} not ready at {url} within {timeout_s:.0f} s: {last}; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_upstream(core: int | None, log: Path, config: UpstreamConfig | None = None) -> tuple[Server, str]:
    c = config or UpstreamConfig()
    port = free_port()
    argv = [
        sys.executable,
        str(Path(__file__)),
        "upstream",
        "--port",
        str(port),
        "--chunks",
        str(c.chunks),
        "--service-ms",
        str(c.service_s * 1e3),
        "--ttft-ms",
        str(c.ttft_s * 1e3),
        "--itl-ms",
        str(c.itl_s * 1e3),
    ]
    server = Server("fake upstream", argv, core, log=log)
    url = f"http://127.0.0.1:{port}"
    server.wait_http(url + "/health")
    return server, url


PROXIES = {
    "proxy": "pass-through proxy",
    "asgi-proxy": "ASGI pass-through proxy",
    "lean-proxy": "ASGI pass-through proxy on lorafleet's HTTP client",
    "fastapi-proxy": "FastAPI pass-through proxy",
    "aiohttp-proxy": "ASGI pass-through proxy on a tuned aiohttp session",
    "httpcore-proxy": "ASGI pass-through proxy on httpcore's pool",
    "pyreqwest-proxy": "ASGI pass-through proxy on pyreqwest",
}


def start_proxy(
    core: int | None,
    upstream: str,
    log: Path,
    kind: str = "proxy",
    env: dict[str, str] | None = None,
    wrap: Sequence[str] = (),
    timeout_s: float = 60,
) -> tuple[Server, str]:
    """One of the PROXIES (this file's sub-commands), pinned to `core`, in front of `upstream`.

    `wrap`: a command that runs the proxy (valgrind's, say)."""
    port = free_port()
    argv = [*wrap, sys.executable, str(Path(__file__)), kind, "--port", str(port), "--upstream", upstream]
    server = Server(PROXIES[kind], argv, core, env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    server.wait_http(url + "/health", timeout_s)
    return server, url


def register_versions(
    root: Path, task: str = "bench", count: int = 2, adapter_dir: Path | None = None
) -> list[str]:
    """Register `count` versions of `task`: a dummy adapter folder (or a copy of `adapter_dir`),
    version.json, a card and reference statistics of the demo task, so drift windows are live."""
    import tempfile

    from lorafleet.registry import NewVersion, Registry
    from lorafleet.textstats import reference_stats

    with DEMO_CSV.open(newline="") as fh:
        rows = [(row["text"], row["label"]) for row in csv.DictReader(fh)]
    labels = demo_labels()
    registry = Registry(root)
    reference = reference_stats([t for t, _ in rows], [lab for _, lab in rows], labels)
    with tempfile.TemporaryDirectory() as scratch:
        if adapter_dir is None:  # a dummy adapter: the fake engine never reads its weights
            adapter_dir = Path(scratch)
            config = {
                "peft_type": "LORA",
                "r": 8,
                "lora_alpha": 16,
                "task_type": "CAUSAL_LM",
                "target_modules": ["q_proj", "v_proj"],
                "base_model_name_or_path": BASE_NAME,
            }
            (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
            (adapter_dir / "adapter_model.safetensors").write_bytes(b"")
        new = NewVersion(adapter_dir=adapter_dir, base_model=BASE_NAME, labels=labels, reference=reference)
        return [registry.register(task, new).name for _ in range(count)]


def routes_yaml(
    stable: str,
    weighted: str | None = None,
    shadow: str | None = None,
    pinned: str | None = None,
    route: str = "bench",
) -> str:
    """A routes file. Gateways that share an engine must want the same live versions: each one's
    reconcile loop unloads what its own routes do not name (hence `pinned`, live without traffic)."""
    lines = ["revision: 1", "routes:", f"  {route}:", f"    stable: {stable}"]
    if weighted:
        lines.append(f"    weights: {{{weighted}: 10}}")
    if shadow:
        lines.append(f"    shadow: {{version: {shadow}, percent: 100}}")
    if pinned:
        lines.append(f"    pinned: [{pinned}]")
    return "\n".join(lines) + "\n"


def start_gateway(
    core: int | None,
    workdir: Path,
    registry: Path,
    engine: str,
    routes: str,
    log: Path,
    env: dict[str, str] | None = None,
    log_level: str = "warning",
    source: Path | None = None,
    wrap: Sequence[str] = (),
    timeout_s: float = 60,
) -> tuple[Server, str]:
    """`lorafleet gateway` as a user runs it (uvicorn, one worker), with LORAFLEET_ROUTER_* overrides.

    `source`: run the lorafleet of that source tree instead (an earlier commit checked out with
    `git worktree`: the same run measures the code before and after a change). `wrap`: a command
    that runs the gateway (valgrind's, say)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "routes.yaml").write_text(routes)
    port = free_port()
    env = {"LORAFLEET_HOME": str(workdir), **(env or {})}
    if source is None:
        command = [str(Path(sys.executable).parent / "lorafleet")]
    else:
        # -P: no current directory first on sys.path, which would import this tree's code again
        command = [sys.executable, "-P", "-c", "from lorafleet.cli import main; main()"]
        env["PYTHONPATH"] = str(source)  # before the editable install's path
        _check_imports_from(source, env)
    argv = [
        *wrap,
        *command,
        "gateway",
        "--routes",
        str(workdir / "routes.yaml"),
        "--engine",
        engine,
        "--registry",
        str(registry),
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    server = Server("lorafleet gateway", argv, core, env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    server.wait_http(url + "/health", timeout_s, ok=lambda b: json.loads(b).get("engines_healthy", 0) > 0)
    if core is not None:
        server.pin_all(core)
    return server, url


def _check_imports_from(source: Path, env: dict[str, str]) -> None:
    """Fail unless a child with `env` imports every package of the project from `source`."""
    packages = ("lorafleet", "monitor", "router", "serve", "training")
    probe = f"import {', '.join(packages)}; print({', '.join(p + '.__file__' for p in packages)})"
    got = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wrong = [f for f in got if not Path(f).resolve().is_relative_to(source.resolve())]
    if wrong:
        raise RuntimeError(f"the baseline at {source} would import {wrong[0]}: not the baseline's code")


def worktree(ref: str, into: Path) -> Path:
    """The project at git `ref`, checked out (detached) into `into`; remove it with remove_worktree."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), ref],
        check=True,
        capture_output=True,
    )
    return into


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


def bench_tool(name: str, requirement: str, exe_name: str | None = None) -> Path | None:
    """A tool the benchmarks compare against or measure with, in its own venv under bench/
    (`.venv-<name>`, git-ignored; never a project dependency), installed on first use: its
    command, or None (with a message) when it cannot be installed here."""
    venv = BENCH / f".venv-{name}"
    exe = venv / "bin" / (exe_name or name)
    if exe.exists():
        return exe
    print(f"installing {requirement} into {venv} (once)...", file=sys.stderr)
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", requirement],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as exc:
        print(
            f"{requirement} could not be installed: {exc.stderr.decode(errors='replace')[-300:]}",
            file=sys.stderr,
        )
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"{requirement} could not be installed ({exc})", file=sys.stderr)
        return None
    return exe if exe.exists() else None


def ensure_litellm() -> Path | None:
    """LiteLLM's proxy (`litellm[proxy]`): its `litellm` command."""
    return bench_tool("litellm", "litellm[proxy]")


def start_litellm(exe: Path, core: int | None, upstream: str, log: Path, model: str) -> tuple[Server, str]:
    """LiteLLM's proxy, one worker, routing `model` to the fake upstream as an OpenAI-compatible API."""
    port = free_port()
    config = log.with_suffix(".yaml")
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": model,
                        "litellm_params": {
                            "model": f"openai/{model}",
                            "api_base": f"{upstream}/v1",
                            "api_key": "x",
                        },
                    }
                ],
                "litellm_settings": {"drop_params": True, "telemetry": False},
            }
        )
    )
    env = {
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        # No key, as the gateway runs in this benchmark: no authentication on either.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    argv = [
        str(exe),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    server = Server("litellm proxy", argv, core, env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    server.wait_http(url + "/health/liveliness", timeout_s=180)
    if core is not None:
        server.pin_all(core)
    return server, url


def ensure_vllm_router(version: str = "0.1.17") -> Path | None:
    """vllm-router's launcher."""
    return bench_tool("vllm-router", f"vllm-router=={version}")


def ensure_pyspy(version: str = "0.4.3") -> Path | None:
    """py-spy, the sampling profiler (bench/gateway_profile.py)."""
    return bench_tool("pyspy", f"py-spy=={version}", "py-spy")


def start_vllm_router(exe: Path, core: int | None, upstream: str, log: Path) -> tuple[Server, str]:
    """vllm-router in front of one worker, round_robin (the cheapest of its policies for one worker)."""
    port = free_port()
    argv = [
        str(exe),
        "--worker-urls",
        upstream,
        "--port",
        str(port),
        "--policy",
        "round_robin",
        "--log-level",
        "warning",
    ]
    server = Server("vllm-router", argv, core, log=log)
    url = f"http://127.0.0.1:{port}"
    server.wait_http(url + "/health", timeout_s=90)
    return server, url


def make_lora_adapter(base: Path, out: Path, rank: int = 8) -> Path:
    """A real LoRA adapter folder for `base` (peft, untrained: B = 0), which a real vLLM engine loads."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    config = LoraConfig(r=rank, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


@contextlib.asynccontextmanager
async def real_engine(log: Path) -> AsyncIterator[str]:
    """One real vLLM engine on the embedded base model (serve.engine.Engine), warmed up with logprobs."""
    from lorafleet import basemodel
    from serve.engine import Engine
    from serve.settings import EngineSettings

    settings = EngineSettings(
        port=free_port(), log_file=str(log), max_loras=4, max_lora_rank=16, kv_cache_gib=1.0
    )
    engine = Engine(settings, basemodel.resolve(None))
    print(f"starting a real vLLM engine on {settings.url} (30-60 s; log {log})...", file=sys.stderr)
    await engine.start()
    try:
        await asyncio.to_thread(warm_up, settings.url, BASE_NAME)
        yield settings.url
    finally:
        await engine.stop()


def warm_up(url: str, model: str) -> None:
    """One request with logprobs: the first after an engine starts takes 10-20 s, once."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "logprobs": True,
        "top_logprobs": 5,
    }
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()


class LoadGenClient:
    """The load generator in its own process (pinned), driven with LoadSpec lines."""

    def __init__(self, core: int | None) -> None:
        argv = [sys.executable, str(Path(__file__)), "loadgen"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if core is not None:
            os.sched_setaffinity(self.proc.pid, {core})

    def run(self, spec: LoadSpec, server: Server | None = None) -> dict[str, Any]:
        """The spec's result; with a `server`, also the CPU seconds it used meanwhile (`cpu_s`, `user_s`)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cpu0, user0 = (server.cpu_s(), server.user_s()) if server else (0.0, 0.0)
        self.proc.stdin.write(json.dumps(spec.__dict__) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator died")
        result: dict[str, Any] = json.loads(line)
        result["cpu_s"] = server.cpu_s() - cpu0 if server else float("nan")
        result["user_s"] = server.user_s() - user0 if server else float("nan")
        return result

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def chat_body(
    model: str, stream: bool, user: str | None = "user-@N@", max_tokens: int = 16, **extra: Any
) -> str:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "user", "content": "I still have not received my new card, how long does it take?"}
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if user:
        body["user"] = user
    if stream:
        body["stream"] = True
    body.update(extra)
    return json.dumps(body)


# --- reporting --------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_header(title: str) -> str:
    load = os.getloadavg()
    return "\n".join(
        [
            f"# {title}",
            f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}",
            f"machine: nproc={os.cpu_count()} usable={len(cores())} cpu='{cpu_model()}' "
            f"python={platform.python_version()} kernel={platform.release()}",
            f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine: numbers are noisy)",
        ]
    )


def summary(result: dict[str, Any]) -> dict[str, float]:
    lat, ttft = result["lat"], result["ttft"]
    return {
        "n": len(lat),
        "rps": len(lat) / result["elapsed_s"] if result["elapsed_s"] else float("nan"),
        "p50": pct(lat, 50),
        "p99": pct(lat, 99),
        "ttft50": pct(ttft, 50) if ttft else float("nan"),
        "ttft99": pct(ttft, 99) if ttft else float("nan"),
        "errors": result["errors"],
    }


class Tee:
    """Print and keep the lines, to write them to bench/results/ at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self, name: str) -> Path:
        out = (
            BENCH / "results" / f"{name}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M}.txt"
        )  # never over an earlier run
        out.parent.mkdir(exist_ok=True)
        out.write_text("\n".join(self.lines) + "\n")
        return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="part", required=True)
    up = sub.add_parser("upstream", help="the fake OpenAI upstream")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8100)
    up.add_argument("--chunks", type=int, default=8)
    up.add_argument("--service-ms", type=float, default=0.0)
    up.add_argument("--ttft-ms", type=float, default=0.0)
    up.add_argument("--itl-ms", type=float, default=1.0)
    px = sub.add_parser("proxy", help="the minimal pass-through proxy")
    px.add_argument("--host", default="127.0.0.1")
    px.add_argument("--port", type=int, default=8200)
    px.add_argument("--upstream", default="http://127.0.0.1:8100")
    ax = sub.add_parser("asgi-proxy", help="the minimal pass-through proxy on uvicorn + plain ASGI + aiohttp")
    ax.add_argument("--host", default="127.0.0.1")
    ax.add_argument("--port", type=int, default=8250)
    ax.add_argument("--upstream", default="http://127.0.0.1:8100")
    lx = sub.add_parser(
        "lean-proxy", help="the minimal pass-through proxy on uvicorn + plain ASGI + Http1Pool"
    )
    lx.add_argument("--host", default="127.0.0.1")
    lx.add_argument("--port", type=int, default=8260)
    lx.add_argument("--upstream", default="http://127.0.0.1:8100")
    fx = sub.add_parser("fastapi-proxy", help="the minimal pass-through proxy on uvicorn + FastAPI + httpx")
    fx.add_argument("--host", default="127.0.0.1")
    fx.add_argument("--port", type=int, default=8300)
    fx.add_argument("--upstream", default="http://127.0.0.1:8100")
    for client in ("aiohttp", "httpcore", "pyreqwest"):
        cx = sub.add_parser(
            f"{client}-proxy", help=f"the minimal pass-through proxy on plain ASGI + {client}"
        )
        cx.add_argument("--host", default="127.0.0.1")
        cx.add_argument("--port", type=int, default=8400)
        cx.add_argument("--upstream", default="http://127.0.0.1:8100")
    sub.add_parser("loadgen", help="the load generator (LoadSpec JSON lines on stdin)")
    args = parser.parse_args()
    if args.part == "upstream":
        config = UpstreamConfig(args.chunks, args.service_ms / 1e3, args.ttft_ms / 1e3, args.itl_ms / 1e3)
        _run_loop(serve_upstream(args.host, args.port, config))
    elif args.part == "proxy":
        _run_loop(PassThroughProxy(args.upstream).serve(args.host, args.port))
    elif args.part == "asgi-proxy":
        AsgiPassThroughProxy(args.upstream).serve(args.host, args.port)
    elif args.part == "lean-proxy":
        LeanPassThroughProxy(args.upstream).serve(args.host, args.port)
    elif args.part == "fastapi-proxy":
        FastAPIPassThroughProxy(args.upstream).serve(args.host, args.port)
    elif args.part.endswith("-proxy"):
        ClientPassThroughProxy(args.upstream, args.part.removesuffix("-proxy")).serve(args.host, args.port)
    else:
        loadgen_main()


if __name__ == "__main__":
    main()
