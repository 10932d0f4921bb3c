"""The gateway's request path: resolve the model to a version, forward to an engine, observe.

    resolve(model, headers, body)  -> Target     route name: the selector picks; version name or the
                                                 pin header: that version; else ModelNotFoundError
    complete(endpoint, body, ...)  -> Response   one non-streaming or streaming call, with one retry
                                                 on the route's fallback when the engine fails

The routes come from the store and are re-read when the file changes (`reload`), between requests:
a request in flight keeps the Route object it resolved, so a reload never drops it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import itertools
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response

from lorafleet.registry import Registry
from lorafleet.textstats import match_label, normalise_answer
from monitor.entropy import (
    EntropyAccumulator,
    EntropySampler,
    response_entropy,
    strip_logprobs,
    with_logprobs,
)
from monitor.metrics import Arm, ErrorReason
from router.answer import Answer, Usage, read_answer, without_logprobs
from router.errors import (
    BadRequestError,
    ModelNotFoundError,
    RoutesFileError,
    UpstreamError,
    UpstreamTimeoutError,
)
from router.http1 import Http1Pool, Http1Response, PoolClosedError
from router.observe import Observer, Outcome
from router.policy import BASE_FALLBACK, RoutesFile
from router.responses import REQUEST_ID_HEADER, AnswerResponse, EventStream, FastJSONResponse
from router.selector import choose, mirror
from router.settings import GatewaySettings
from router.store import RouteStore
from router.upstream import (
    UPSTREAM_ERRORS,
    EngineFailure,
    SSEBuffer,
    classify,
    error_message,
    forward_timeout,
    sse,
)
from serve.fleet import EngineState, Fleet

log = logging.getLogger("lorafleet.router")

CHAT = "chat/completions"
COMPLETIONS = "completions"
ROUTE_HEADER = "x-lorafleet-route"
VERSION_HEADER = "x-lorafleet-version"
ARM_HEADER = "x-lorafleet-arm"
NO_ENGINE = "-"  # EngineFailure.engine when no engine could be tried
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs

_id_prefix = os.urandom(6).hex()
_id_counter = itertools.count(1)


def _new_id_prefix() -> None:
    global _id_prefix
    _id_prefix = os.urandom(6).hex()


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id(kind: str = "req") -> str:
    """A request id unique across processes: a random prefix per process and a counter.

    uuid4 costs a getrandom call per request (~2% of the gateway's CPU).
    """
    return f"{kind}-{_id_prefix}{next(_id_counter):010x}"


@dataclass(frozen=True)
class Target:
    route: str
    version: str
    arm: Arm
    fallback: str | None
    shadow: str | None = None


@dataclass
class _Attempt:
    """What one forwarded request produced."""

    version: str
    arm: Arm
    engine: EngineState
    response: Http1Response
    started: float = field(default_factory=time.perf_counter)
    finished: bool = False

    def finish(self) -> bool:
        """Give the engine's connection back and count the request off the engine, once;
        True the first time."""
        if self.finished:
            return False
        self.finished = True
        self.engine.in_flight -= 1
        self.response.release()
        return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def input_text(endpoint: str, body: Mapping[str, Any]) -> str:
    """The user's text of a request: the last user turn, or the prompt."""
    if endpoint == CHAT:
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                return str(content or "")
        return ""
    prompt = body.get("prompt")
    return (
        prompt if isinstance(prompt, str) else " ".join(map(str, prompt)) if isinstance(prompt, list) else ""
    )


def _check_int(body: Mapping[str, Any], key: str, low: int, high: int | None = None) -> None:
    """`body[key]` is absent, null, or a whole number from `low` to `high` (400 naming it otherwise)."""
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise BadRequestError(f"'{key}' must be an integer of at least {low}, got {value!r}", param=key)
    if high is not None and value > high:
        raise BadRequestError(f"'{key}' is {value}; this gateway allows at most {high}", param=key)


def validate_body(endpoint: str, body: Any, settings: GatewaySettings) -> dict[str, Any]:
    """The body checked and completed, so that a bad body is a 400 naming the field, never a 500.

    `stream: null` means false, as in OpenAI's API. A body without `max_tokens` (or
    `max_completion_tokens`) stays without: `_send` caps it for the engine it goes to.
    """
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' is required and must be a string", param="model")
    chat = endpoint == CHAT
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError("'messages' must be a non-empty list", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequestError(
                    f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]"
                )
            if not isinstance(m.get("content"), str | list | None):
                raise BadRequestError(
                    f"messages[{i}].content must be a string or a list of content parts",
                    param=f"messages[{i}].content",
                )
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list) or not prompt:
            raise BadRequestError("'prompt' must be a non-empty string or list", param="prompt")
    limit = settings.max_tokens_limit
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequestError(f"'{key}' must be a positive integer", param=key)
        if value > limit:
            raise BadRequestError(
                f"'{key}' is {value}; this gateway allows at most {limit}", param=key, code="max_tokens"
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequestError("'stream' must be true or false", param="stream")
    if not isinstance(body.get("stream_options"), dict | None):
        raise BadRequestError("'stream_options' must be an object", param="stream_options")
    logprobs = body.get("logprobs")
    if chat and logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequestError("'logprobs' must be true or false", param="logprobs")
    if not chat:
        _check_int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    _check_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if chat and body.get("top_logprobs") is not None and logprobs is not True:
        # As OpenAI answers; the engine would too, were the gateway not asking for logprobs itself.
        raise BadRequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    _check_int(body, "n", 1, settings.max_n)
    _check_int(body, "best_of", 1, settings.max_n)
    checked: dict[str, Any] = {
        k: v for k, v in body.items() if not (k in ("stream", "stream_options") and v is None)
    }
    return checked


def _uncapped(body: dict[str, Any], engine: EngineState, limit: int) -> bool:
    """A body without max_tokens would let `engine` generate more than `limit` tokens: all its
    context has room for. An engine whose context is within the limit caps the answer itself (at
    what the prompt leaves), which no fixed max_tokens could do without knowing the prompt's length."""
    if body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None:
        return False
    return engine.max_model_len is None or engine.max_model_len > limit


class Gateway:
    """Routing state and the forwarding of one request."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: RouteStore,
        registry: Registry,
        fleet: Fleet,
        pool: Http1Pool,
        session: aiohttp.ClientSession,
        observer: Observer,
        rng: random.Random | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.fleet = fleet
        self.pool = pool
        self.session = session  # for the calls beside forwarding (peers)
        self.observer = observer
        self.rng = rng or random.Random()
        self.entropy_sampler = EntropySampler(
            settings.entropy_sample_percent, settings.entropy_max_per_s, self.rng
        )
        self.clock = clock or _now
        self._created: dict[str, int] = {}
        self.routes = RoutesFile()
        self.live: dict[str, tuple[str, str]] = {}
        self._fingerprint: str | None = None
        self.reload_error: str | None = None
        self.missing_versions: dict[str, str] = {}  # live versions the registry cannot give -> why
        self.shadow_slots = asyncio.Semaphore(settings.shadow_max_concurrency)
        self._timeout = forward_timeout(settings)
        self._background: set[asyncio.Task[None]] = set()

    # --- routes -------------------------------------------------------------------------

    def _read_if_changed(self, force: bool) -> tuple[str | None, RoutesFile | RoutesFileError | None]:
        fingerprint = self.store.fingerprint()
        if fingerprint == self._fingerprint and not force:
            return fingerprint, None
        try:
            return fingerprint, self.store.load()
        except RoutesFileError as exc:
            return fingerprint, exc

    def _take(self, fingerprint: str | None, read: RoutesFile | RoutesFileError | None) -> bool:
        if read is None:
            return False
        self._fingerprint = fingerprint
        if isinstance(read, RoutesFile) and self.routes.routes and "routes" not in read.model_fields_set:
            # Gone or emptied while serving (an editor's truncate-then-write, a ConfigMap swapped):
            # taking it would drop every route and unload every adapter.
            read = RoutesFileError(
                f"the routes of {self.store!r} are missing or empty; write `routes: {{}}` to remove every route"
            )
        if isinstance(read, RoutesFileError):
            if self.reload_error != read.message:
                log.error(
                    "routes file not applied, keeping revision %s: %s", self.routes.revision, read.message
                )
            self.reload_error = read.message
            return False
        self.apply(read)
        return True

    def reload(self, force: bool = False) -> bool:
        """Re-read the routes if they changed; keep the old routes if the new file is invalid."""
        return self._take(*self._read_if_changed(force))

    async def reload_async(self) -> bool:
        """`reload`, with the store read in a thread (a ConfigMap store may be slow to answer)."""
        return self._take(*await asyncio.to_thread(self._read_if_changed, False))

    def apply(self, routes: RoutesFile) -> None:
        old = self.routes.revision
        self.routes = routes
        self.reload_error = None
        self.refresh_live()
        log.info(
            "routes loaded: revision %s (was %s), %d route(s), %d live version(s)",
            routes.revision,
            old,
            len(routes.routes),
            len(self.live),
        )

    def refresh_live(self) -> None:
        self.live = self.routes.live_versions(self.clock())
        self.observer.set_known({(route, version): state for version, (route, state) in self.live.items()})

    def desired_adapters(self) -> dict[str, Path]:
        """Every live version that exists in the registry -> its adapter folder as the engines see it."""
        self.refresh_live()
        desired: dict[str, Path] = {}
        missing: dict[str, str] = {}
        for version in self.live:
            try:
                path = self.registry.get(version).adapter_path
            except Exception as exc:
                missing[version] = str(exc)
                if self.missing_versions.get(version) != missing[version]:  # once, not on every reconcile
                    log.error("routes name version %s, which the registry cannot give: %s", version, exc)
                continue
            desired[version] = self.settings.engine_path(path)
        self.missing_versions = missing
        return desired

    def _version_meta(self, version: str) -> tuple[int, str | None]:
        """(created, adapter path) of a version, from the registry; (0, None) if it is missing."""
        try:
            v = self.registry.get(version)
            if version not in self._created:
                self._created[version] = int(v.info().created_at.timestamp())
            return self._created[version], str(v.adapter_path)
        except Exception:
            return 0, None

    def model_list(self) -> list[dict[str, Any]]:
        """Every route and every live version, in OpenAI's shape (`parent`: the base, `root`: the adapter)."""
        self.refresh_live()
        base = self.fleet.base_model() or BASE_FALLBACK
        data: list[dict[str, Any]] = []
        for name, route in self.routes.routes.items():
            created, _ = self._version_meta(route.stable)
            info: dict[str, Any] = {"kind": "route", "stable": route.stable, "versions": route.serving()}
            if route.canary:
                info["canary"] = {"version": route.canary.version, "weight": route.canary.weight}
            if route.shadow:
                info["shadow"] = {"version": route.shadow.version, "percent": route.shadow.percent}
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "lorafleet",
                    "root": route.stable,
                    "parent": base,
                    "lorafleet": info,
                }
            )
        for version, (route_name, state) in sorted(self.live.items()):
            created, path = self._version_meta(version)
            info = {
                "kind": "version",
                "route": route_name,
                "state": state,
                "loaded_on": [e.url for e in self.fleet.holders(version)],
            }
            until = self.routes.routes[route_name].retiring.get(version)
            if state == "retiring" and until is not None:
                info["retiring_until"] = until.isoformat()
            data.append(
                {
                    "id": version,
                    "object": "model",
                    "created": created,
                    "owned_by": "lorafleet",
                    "root": path,
                    "parent": base,
                    "lorafleet": info,
                }
            )
        return data

    # --- resolution ---------------------------------------------------------------------

    @staticmethod
    def user_key(headers: Mapping[str, str], body: Mapping[str, Any], session_header: str) -> str | None:
        for value in (headers.get(session_header), body.get("user"), body.get("session_id")):
            if isinstance(value, str) and value:
                return value
        return None

    def resolve(self, model: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> Target:
        """`headers`: names in lower case (a plain dict from the ASGI scope, or Starlette's Headers)."""
        pin = headers.get(self.settings.pin_header.lower())
        key = self.user_key(headers, body, self.settings.session_header.lower())
        route = self.routes.routes.get(model)
        if route is not None:
            shadow = mirror(model, route, key, self.rng)
            if pin:
                if self.live.get(pin, ("", ""))[0] != model:
                    raise ModelNotFoundError(pin)
                return Target(model, pin, Arm.PINNED, route.fallback, shadow)
            choice = choose(model, route, key, self.rng)
            return Target(model, choice.version, choice.arm, route.fallback, shadow)
        if model in self.live:
            route_name = self.live[model][0]
            return Target(route_name, model, Arm.PINNED, self.routes.routes[route_name].fallback)
        raise ModelNotFoundError(model)

    # --- forwarding ---------------------------------------------------------------------

    def _upstream_model(self, version: str) -> str | None:
        if version == BASE_FALLBACK:
            return self.fleet.base_model()
        return version

    async def _send(
        self,
        endpoint: str,
        body: dict[str, Any],
        version: str,
        arm: Arm,
        request_id: str,
        deadline: float,
        exclude: Sequence[str] = (),
    ) -> _Attempt:
        """Send to one engine holding `version`; raise EngineFailure for anything a fallback may fix."""
        upstream_model = self._upstream_model(version)
        engine = self.fleet.pick(None if version == BASE_FALLBACK else version, exclude)
        if engine is None or upstream_model is None:
            other = "other " if exclude else ""
            raise EngineFailure(NO_ENGINE, "not_loaded", f"no {other}healthy engine holds {version}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EngineFailure(engine.url, "timeout", "the request's deadline passed")
        t = self.settings.timeouts
        timeout = self._timeout
        if remaining < max(t.pool_s, t.connect_s, t.read_s):
            timeout = forward_timeout(self.settings, remaining)
        fields = {**body, "model": upstream_model}
        if _uncapped(body, engine, self.settings.max_tokens_limit):
            fields["max_tokens"] = self.settings.max_tokens_limit
        payload = orjson.dumps(fields)
        engine.in_flight += 1
        started = time.perf_counter()
        try:
            response = await self.pool.post(
                engine.url,
                f"/v1/{endpoint}",
                payload,
                {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id},
                timeout,
            )
        except BaseException as exc:  # an engine failure, or cancelled: the client left
            engine.in_flight -= 1
            if not isinstance(exc, UPSTREAM_ERRORS):
                raise
            failure = classify(exc, engine.url)
            if failure.reason == "connect" and not isinstance(exc, PoolClosedError):
                self.fleet.mark_failed(engine.url, failure.detail)
            raise failure from exc
        if response.status >= 500 or response.status == 404:
            try:
                detail = error_message(await response.read())
            except UPSTREAM_ERRORS as exc:
                detail = f"{type(exc).__name__}: {exc}"
            finally:
                response.release()
                engine.in_flight -= 1
            reason = "not_loaded" if response.status == 404 else "status_5xx"
            raise EngineFailure(engine.url, reason, detail, response.status)
        return _Attempt(version, arm, engine, response, started)

    async def _send_to_others(
        self,
        endpoint: str,
        body: dict[str, Any],
        version: str,
        arm: Arm,
        request_id: str,
        deadline: float,
        failure: EngineFailure,
    ) -> _Attempt:
        """After `failure` of a first `_send`: each other healthy engine holding `version` in turn,
        while the deadline allows."""
        failed: list[EngineFailure] = []
        while True:
            if failure.engine == NO_ENGINE and failed:
                raise failed[-1] from None  # no other engine holds it: report the last real failure
            if failure.engine == NO_ENGINE or time.monotonic() >= deadline:
                raise failure
            failed.append(failure)
            log.warning("request %s to %s failed: %s; trying another engine", request_id, version, failure)
            try:
                return await self._send(
                    endpoint, body, version, arm, request_id, deadline, [f.engine for f in failed]
                )
            except EngineFailure as exc:
                failure = exc

    async def _send_with_fallback(
        self,
        endpoint: str,
        body: dict[str, Any],
        target: Target,
        request_id: str,
        deadline: float,
        failure: EngineFailure,
        start: float,
    ) -> _Attempt:
        """After `failure` of a first `_send`: the other engines holding the target's version, then
        the route's fallback.

        A request the fallback takes counts for the target's version too, as one of its requests
        that failed: all of a version's traffic falling back (an adapter that failed to load) must
        show in its error ratio, its alerts and its canary gate, not as a version with no traffic.
        """
        try:
            return await self._send_to_others(
                endpoint, body, target.version, target.arm, request_id, deadline, failure
            )
        except EngineFailure as first:
            log.warning("request %s to %s failed: %s", request_id, target.version, first)
            fallback = target.fallback
            if fallback is None or fallback == target.version or time.monotonic() >= deadline:
                self._count_failure(target, first)
                raise self._upstream_error(target, first) from None
            self.observer.metrics.fallbacks.labels(
                *self.observer.label_values(target.route, target.version), first.reason
            ).inc()
            try:
                attempt = await self._send(endpoint, body, fallback, Arm.FALLBACK, request_id, deadline)
            except EngineFailure as second:
                # One failed request (complete() counts it), one error: the fallback's.
                self.observer.metrics.errors.labels(
                    *self.observer.label_values(target.route, target.version), ErrorReason.FALLBACK.value
                ).inc()
                log.warning("request %s to fallback %s failed too: %s", request_id, fallback, second)
                raise self._upstream_error(target, second, fallback) from None
            self.observer.record(
                Outcome(
                    target.route,
                    target.version,
                    target.arm,
                    self._upstream_error(target, first).status,
                    time.perf_counter() - start,
                    error=ErrorReason.FALLBACK,
                )
            )
            return attempt

    def _count_failure(self, target: Target, failure: EngineFailure) -> None:
        reason = {
            "timeout": ErrorReason.TIMEOUT,
            "not_loaded": ErrorReason.UNAVAILABLE,
            "connect": ErrorReason.UNAVAILABLE,
        }.get(failure.reason, ErrorReason.UPSTREAM_ERROR)
        self.observer.metrics.errors.labels(
            *self.observer.label_values(target.route, target.version), reason.value
        ).inc()

    @staticmethod
    def _upstream_error(target: Target, failure: EngineFailure, fallback: str | None = None) -> UpstreamError:
        tried = target.version + (f" and its fallback {fallback}" if fallback else "")
        message = f"no engine could answer for {tried}: {failure.reason} ({failure.detail})"
        if failure.reason == "timeout":
            return UpstreamTimeoutError(message)
        return UpstreamError(message)

    def _headers(self, route: str, version: str, arm: Arm, request_id: str) -> dict[str, str]:
        return {
            ROUTE_HEADER: route,
            VERSION_HEADER: version if version != BASE_FALLBACK else str(self._upstream_model(BASE_FALLBACK)),
            ARM_HEADER: arm.value,
            REQUEST_ID_HEADER: request_id,
        }

    async def complete(self, endpoint: str, raw: Any, headers: Mapping[str, str]) -> Response:
        """Answer one chat or completions request."""
        body = validate_body(endpoint, raw, self.settings)
        request_id = headers.get(REQUEST_ID_HEADER) or new_request_id()
        target = self.resolve(body["model"], headers, body)
        chat = endpoint == CHAT
        keep_top: int | None = None
        upstream = dict(body)
        strip = False  # logprobs asked on the client's behalf, cut back to `keep_top` on the way out
        if self.settings.entropy_top_k and self.entropy_sampler.sample(target.version):
            upstream, keep_top = with_logprobs(body, chat=chat, top_k=self.settings.entropy_top_k)
            strip = True
        stream = bool(body.get("stream"))
        asked_usage = True
        if stream:
            raw_options = body.get("stream_options")
            options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
            asked_usage = bool(options.get("include_usage"))
            upstream["stream_options"] = {**options, "include_usage": True}
        deadline = time.monotonic() + self.settings.timeouts.request_s
        start = time.perf_counter()
        try:
            # The first attempt straight from here: each await level is walked again on every resume.
            try:
                attempt = await self._send(
                    endpoint, upstream, target.version, target.arm, request_id, deadline
                )
            except EngineFailure as failure:
                attempt = await self._send_with_fallback(
                    endpoint, upstream, target, request_id, deadline, failure, start
                )
        except UpstreamError as exc:
            self.observer.record(
                Outcome(target.route, target.version, target.arm, exc.status, time.perf_counter() - start)
            )
            exc.headers = self._headers(target.route, target.version, target.arm, request_id)
            raise
        out_headers = self._headers(target.route, attempt.version, attempt.arm, request_id)
        text = input_text(endpoint, body)
        if attempt.response.status != 200:
            return await self._pass_error(attempt, target, out_headers, start)
        if stream:
            return EventStream(
                self._relay(attempt, target, text, upstream, endpoint, start, strip, keep_top, asked_usage),
                out_headers,
                on_close=functools.partial(self._stream_abandoned, attempt, target, start),
            )
        try:
            raw = await attempt.response.read()
            seen: Answer | dict[str, Any] | None = read_answer(raw)
            if seen is None:  # JSON, but not of the usual shape: read it generically
                seen = orjson.loads(raw)
                if not isinstance(seen, dict):
                    raise ValueError(f"the answer is JSON but not an object: {type(seen).__name__}")
        except (*UPSTREAM_ERRORS, ValueError) as exc:
            self._count_failure(target, EngineFailure(attempt.engine.url, "status_5xx", str(exc)))
            raise UpstreamError(f"engine {attempt.engine.url} sent an unreadable answer: {exc}") from None
        finally:
            attempt.finish()
        duration = time.perf_counter() - start
        sent = _strip(raw, seen, keep_top) if strip else raw
        # Observed once the answer is sent (same task, same event-loop turn): off the client's latency.
        after = functools.partial(
            self._observe_answer, endpoint, upstream, target, attempt, text, seen, duration
        )
        return AnswerResponse(sent, out_headers, after)

    async def _observe_answer(
        self,
        endpoint: str,
        upstream: dict[str, Any],
        target: Target,
        attempt: _Attempt,
        text: str,
        seen: Answer | dict[str, Any],
        duration: float,
    ) -> None:
        """Entropy, metrics, drift and the answer log of a JSON answer; then its shadow, if any."""
        try:
            if isinstance(seen, Answer):
                choice = seen.first()
                answer = choice.content if choice is not None else None
                completion_id = seen.id
                usage = seen.usage or Usage()
                prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
                entropy = EntropyAccumulator(self.settings.entropy_top_k)
                entropy.add(choice.token_logprobs() if choice is not None else None)
                mean_entropy = entropy.value()
            else:
                answer = _answer_text(seen, endpoint == CHAT)
                raw_id, raw_usage = seen.get("id"), seen.get("usage")
                completion_id = raw_id if isinstance(raw_id, str) else None
                usage_dict: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
                prompt_tokens = usage_dict.get("prompt_tokens")
                completion_tokens = usage_dict.get("completion_tokens")
                mean_entropy = response_entropy(seen, self.settings.entropy_top_k)
            self.observer.record(
                Outcome(
                    route=target.route,
                    version=attempt.version,
                    arm=attempt.arm,
                    status=200,
                    duration_s=duration,
                    input_text=text,
                    answer=answer,
                    completion_id=completion_id,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    entropy=mean_entropy,
                )
            )
            self._shadow(endpoint, upstream, target, answer or "")
        except Exception:
            log.exception("observing answer of request to %s failed", attempt.version)

    async def _pass_error(
        self, attempt: _Attempt, target: Target, headers: dict[str, str], start: float
    ) -> Response:
        """A 4xx from the engine is the client's: pass it on in OpenAI's shape."""
        try:
            raw = await attempt.response.read()
        except UPSTREAM_ERRORS as exc:
            raw = f"the engine's error answer broke: {type(exc).__name__}: {exc}".encode()
        finally:
            attempt.finish()
        status = attempt.response.status
        self.observer.record(
            Outcome(
                target.route,
                attempt.version,
                attempt.arm,
                status,
                time.perf_counter() - start,
                error=ErrorReason.BAD_REQUEST,
            )
        )
        try:
            payload = orjson.loads(raw)
            if not isinstance(payload, dict) or "error" not in payload:
                raise ValueError
        except ValueError:
            payload = {
                "error": {"message": raw.decode(errors="replace")[:1000], "type": "invalid_request_error"}
            }
        err = (
            payload["error"]
            if isinstance(payload.get("error"), dict)
            else {"message": str(payload.get("error"))}
        )
        err["type"] = "invalid_request_error"  # as OpenAI types a 4xx (vLLM says "BadRequestError")
        err.setdefault("param", None)
        err["code"] = err.get("code") if isinstance(err.get("code"), str) else None
        return FastJSONResponse({"error": err}, status_code=status, headers=headers)

    def _stream_abandoned(self, attempt: _Attempt, target: Target, start: float) -> None:
        """After a stream's response: if its relay never ran (the client left before the first
        byte), give the engine's stream back and count the request as cancelled by the client."""
        if attempt.finish():
            self.observer.record(
                Outcome(
                    target.route,
                    attempt.version,
                    attempt.arm,
                    499,
                    time.perf_counter() - start,
                    error=ErrorReason.CLIENT_CANCELLED,
                )
            )

    async def _relay(
        self,
        attempt: _Attempt,
        target: Target,
        text: str,
        upstream: dict[str, Any],
        endpoint: str,
        start: float,
        strip: bool,
        keep_top: int | None,
        asked_usage: bool,
    ) -> AsyncIterator[bytes]:
        """Pass an engine's SSE stream on as it comes, observing it; end it cleanly on failure.

        The events of one chunk from the engine leave in one write: as many sends as the engine's.
        """
        watch = _StreamWatch(
            endpoint == CHAT, start, strip, keep_top, asked_usage, top_k=self.settings.entropy_top_k
        )
        events = SSEBuffer()
        error: ErrorReason | None = None
        status = 200
        try:
            async for raw in attempt.response.iter_any():
                out = watch.relay(events.feed(raw))
                if out:
                    yield out
            out = watch.relay(events.close())
            if out:
                yield out
        except UPSTREAM_ERRORS as exc:
            error, status = ErrorReason.STREAM_ABORTED, 502
            log.warning("stream from %s broke: %s", attempt.engine.url, exc)
            yield sse(
                {
                    "error": {
                        "message": f"the engine's stream broke: {exc}",
                        "type": "server_error",
                        "param": None,
                        "code": "stream_aborted",
                    }
                }
            )
            yield b"data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            # A client that hangs up once it has `[DONE]` (the SDK's streams do) got the whole
            # answer: cancelled only before that.
            if not watch.done:
                error, status = ErrorReason.CLIENT_CANCELLED, 499
            raise
        finally:
            attempt.finish()
            answer = "".join(watch.parts)
            self.observer.record(
                Outcome(
                    route=target.route,
                    version=attempt.version,
                    arm=attempt.arm,
                    status=status,
                    duration_s=time.perf_counter() - start,
                    input_text=text,
                    answer=answer if error is None else None,
                    completion_id=watch.completion_id,
                    ttft_s=watch.ttft,
                    prompt_tokens=watch.usage.prompt_tokens,
                    completion_tokens=watch.usage.completion_tokens,
                    entropy=watch.entropy.value(),
                    error=error,
                )
            )
            if error is None:
                shadow_body = {k: v for k, v in upstream.items() if k not in ("stream", "stream_options")}
                self._shadow(endpoint, shadow_body, target, answer)

    # --- shadow traffic -----------------------------------------------------------------

    def _shadow(self, endpoint: str, body: dict[str, Any], target: Target, primary_answer: str) -> None:
        """Mirror the request to the route's shadow version in the background (never awaited)."""
        if target.shadow is None or target.shadow == target.version:
            return
        if self.shadow_slots.locked():
            self.observer.record_shadow(target.route, target.shadow, "dropped", None)
            return
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(endpoint, body, target, primary_answer)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_shadow(
        self, endpoint: str, body: dict[str, Any], target: Target, primary_answer: str
    ) -> None:
        assert target.shadow is not None
        shadow = target.shadow
        async with self.shadow_slots:
            deadline = time.monotonic() + self.settings.timeouts.request_s
            try:
                attempt = await self._send(
                    endpoint, body, shadow, Arm.SHADOW, new_request_id("shadow"), deadline
                )
            except EngineFailure as exc:
                log.info("shadow request to %s failed: %s", shadow, exc)
                self.observer.record_shadow(target.route, shadow, "error", None)
                return
            try:
                raw = await attempt.response.read()
            except UPSTREAM_ERRORS:
                self.observer.record_shadow(target.route, shadow, "error", None)
                return
            finally:
                attempt.finish()
        if attempt.response.status != 200:
            self.observer.record_shadow(target.route, shadow, "error", None)
            return
        try:
            data = orjson.loads(raw)
        except ValueError:
            self.observer.record_shadow(target.route, shadow, "error", None)
            return
        answer = _answer_text(data, endpoint == CHAT) or ""
        labels = self.observer.label_set(shadow)
        if labels:
            agreed = match_label(answer, labels) == match_label(primary_answer, labels)
        else:
            agreed = normalise_answer(answer) == normalise_answer(primary_answer)
        self.observer.record_shadow(target.route, shadow, "ok", agreed)
        if self.observer.feedback_store is not None and data.get("id"):
            self.observer.feedback_store.record_answer(
                data["id"], target.route, shadow, answer, match_label(answer, labels) if labels else None
            )

    async def drain(self) -> None:
        """Wait for background shadow requests (on shutdown)."""
        if self._background:
            await asyncio.wait(self._background, timeout=5)


class _StreamWatch:
    """What a relayed stream has shown so far (text, first-token time, usage, entropy), and each
    engine event as the client gets it: logprobs it did not ask for removed, usage only if asked."""

    def __init__(
        self,
        chat: bool,
        start: float,
        rewrite: bool,
        keep_top: int | None,
        asked_usage: bool,
        top_k: int | None = None,
    ) -> None:
        self.chat = chat
        self.start = start
        self.rewrite = rewrite
        self.keep_top = keep_top
        self.asked_usage = asked_usage
        self.entropy = EntropyAccumulator(top_k)
        self.done = False  # the engine's `[DONE]` went out: the answer is complete
        self.parts: list[str] = []
        self.ttft: float | None = None
        self.usage = Usage()
        self.completion_id: str | None = None

    def relay(self, payloads: list[bytes]) -> bytes:
        """The SSE bytes to send for these `data:` payloads of the engine's events."""
        out: list[bytes] = []
        for payload in payloads:
            if payload == b"[DONE]":
                out.append(b"data: [DONE]\n\n")
                self.done = True
                continue
            try:
                chunk = read_answer(payload)
            except ValueError:
                out.append(b"data: " + payload + b"\n\n")
                continue
            if chunk is None:
                out.append(b"data: " + self._other(payload) + b"\n\n")
                continue
            self.completion_id = self.completion_id or chunk.id
            if chunk.usage is not None:
                self.usage = chunk.usage
                if not chunk.choices and not self.asked_usage:
                    continue
            choice = chunk.first()
            if choice is not None:
                self.entropy.add(choice.token_logprobs())
                self._seen(choice.content)
            if self.rewrite and chunk.choices:
                payload = _strip(payload, chunk, self.keep_top)
            out.append(b"data: " + payload + b"\n\n")
        return b"".join(out)

    def _seen(self, piece: str | None) -> None:
        if piece:
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.start
            self.parts.append(piece)

    def _other(self, payload: bytes) -> bytes:
        """An event of an unusual shape (JSON, read_answer could not type it): read generically."""
        chunk = orjson.loads(payload)
        if not isinstance(chunk, dict):
            return payload
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            self._seen(_chunk_text(choices[0], self.chat))
            if self.rewrite:
                return orjson.dumps(strip_logprobs(chunk, self.keep_top))
        return payload


def _strip(raw: bytes, seen: Answer | dict[str, Any], keep_top: int | None) -> bytes:
    """The answer (or stream event) without the logprobs the gateway asked on the client's behalf."""
    if isinstance(seen, Answer) and keep_top is None:
        cut = without_logprobs(raw, seen)
        if cut is not None:
            return cut
    return orjson.dumps(strip_logprobs(seen if isinstance(seen, dict) else orjson.loads(raw), keep_top))


def _answer_text(data: Mapping[str, Any], chat: bool) -> str | None:
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    if chat:
        message = choices[0].get("message") or {}
        content = message.get("content")
        return content if isinstance(content, str) else None
    text = choices[0].get("text")
    return text if isinstance(text, str) else None


def _chunk_text(choice: Mapping[str, Any], chat: bool) -> str | None:
    if chat:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        return content if isinstance(content, str) else None
    text = choice.get("text")
    return text if isinstance(text, str) else None
