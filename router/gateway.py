"""The gateway's request path: resolve the model to a version, forward it, answer, observe.

    resolve(request, headers)   -> Target    a route name: the selector picks the version; a version
                                             name or the pin header: that version; else 404
    complete(endpoint, raw, headers)         one chat or completions request: decoded and checked
                                             (router/requests.py), forwarded within its deadline with
                                             retries and fallback (router/forward.py), its answer
                                             passed on whole or relayed (router/relay.py), observed,
                                             and mirrored to the route's shadow (router/shadow.py)

The routes come from the store and are re-read when it changes (`reload`), between requests and
always on the event loop: a request in flight keeps the Route object it resolved, so a reload
never drops it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from starlette.responses import Response

from lorafleet.baseid import BaseIdentity
from lorafleet.errors import LorafleetError
from lorafleet.registry import Registry
from monitor.entropy import EntropyAccumulator, EntropySampler
from monitor.metrics import Arm, ErrorReason, VersionState
from router.answer import (
    Answer,
    Usage,
    answer_text,
    read_answer,
    response_tokens,
    rewrite_logprobs,
    with_logprobs,
)
from router.errors import ModelNotFoundError, RoutesFileError, UpstreamError
from router.forward import Attempt, Forwarder, Target, request_deadline
from router.ids import new_request_id
from router.observe import Observer, Outcome
from router.policy import BASE_FALLBACK, Route, RoutesFile
from router.relay import Relay, StreamWatch
from router.requests import CHAT, CompletionRequest, decode_request
from router.responses import REQUEST_ID_HEADER, AnswerResponse, EventStream
from router.selector import choose, mirror
from router.settings import GatewaySettings
from router.shadow import Shadows
from router.store import RouteStore
from router.upstream import UPSTREAM_ERRORS, EngineFailure, Transport
from serve.fleet import Fleet
from serve.placement import Wanted

log = logging.getLogger("lorafleet.router")

# Request fields by which a client asks for its own structured output: enforce_labels leaves them be.
_STRUCTURED = frozenset(
    {"structured_outputs", "response_format", "guided_choice", "guided_json", "guided_regex"}
)
ROUTE_HEADER = "x-lorafleet-route"
VERSION_HEADER = "x-lorafleet-version"
ARM_HEADER = "x-lorafleet-arm"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Gateway:
    """Routing state and the answering of one request."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: RouteStore,
        registry: Registry,
        fleet: Fleet,
        transport: Transport,
        observer: Observer,
        rng: random.Random | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.fleet = fleet
        self.transport = transport
        self.observer = observer
        self.rng = rng or random.Random()
        self.entropy_sampler = EntropySampler(
            settings.entropy_sample_percent, settings.entropy_max_per_s, self.rng
        )
        self.forwarder = Forwarder(settings, fleet, transport, observer)
        self.shadows = Shadows(settings, self.forwarder, observer)
        self.clock = clock or _now
        self._created: dict[str, int] = {}
        self.routes = RoutesFile()
        self.live: dict[str, tuple[str, VersionState]] = {}
        self._bases: dict[str, BaseIdentity | None] = {}
        self._fingerprint: str | None = None
        self.reload_error: str | None = None
        self.missing_versions: dict[str, str] = {}  # live versions the registry cannot give -> why
        self._pin_header = settings.pin_header.lower()
        self._session_header = settings.session_header.lower()

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

    async def reload(self, force: bool = False) -> bool:
        """Re-read the routes if they changed (the store read in a thread: a ConfigMap store may be
        slow to answer); keep the old routes if the new file is invalid. Applied on the loop."""
        return self._take(*await asyncio.to_thread(self._read_if_changed, force))

    def reload_now(self) -> bool:
        """`reload(force=True)` at start-up, before the loop serves anything."""
        return self._take(*self._read_if_changed(True))

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
            except (LorafleetError, OSError) as exc:
                missing[version] = str(exc)
                if self.missing_versions.get(version) != missing[version]:  # once, not on every reconcile
                    log.error("routes name version %s, which the registry cannot give: %s", version, exc)
                continue
            desired[version] = self.settings.engine_path(path)
        self.missing_versions = missing
        return desired

    def wanted_adapters(self) -> dict[str, Wanted]:
        """Every live version -> its base fingerprint, traffic share and its route's placement."""
        out = {}
        for version, (route_name, _) in self.live.items():
            route = self.routes.routes[route_name]
            share = route.shares().get(version, 0.0)
            out[version] = Wanted(self.base_of(version), share, route.placement)
        return out

    def _base(self, version: str) -> BaseIdentity | None:
        """A version's base model as training recorded it in the registry (None: not recorded, or
        the registry cannot give it now: asked again next time)."""
        if version not in self._bases:
            try:
                self._bases[version] = self.registry.get(version).info().base
            except (LorafleetError, OSError, ValueError):
                return None
        return self._bases[version]

    def base_of(self, version: str) -> str | None:
        """The fingerprint of a version's base model (None: not recorded)."""
        base = self._base(version)
        return base.fingerprint if base else None

    def parent_of(self, version: str) -> str:
        """A version's base model as /v1/models names it: the one training recorded, else the name
        the engines serve their base under."""
        base = self._base(version)
        return base.name if base else self.fleet.base_model() or BASE_FALLBACK

    def _version_meta(self, version: str) -> tuple[int, str | None]:
        """(created, adapter path) of a version, from the registry; (0, None) if it is missing
        (`missing_versions` and /admin/status say why)."""
        try:
            v = self.registry.get(version)
            if version not in self._created:
                self._created[version] = int(v.info().created_at.timestamp())
            return self._created[version], str(v.adapter_path)
        except (LorafleetError, OSError, ValueError) as exc:
            self.missing_versions.setdefault(version, str(exc))
            return 0, None

    def model_list(self) -> list[dict[str, Any]]:
        """Every route and every live version, in OpenAI's shape (`parent`: the base, `root`: the adapter)."""
        self.refresh_live()
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
                    "parent": self.parent_of(route.stable),
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
            if state is VersionState.RETIRING and until is not None:
                info["retiring_until"] = until.isoformat()
            data.append(
                {
                    "id": version,
                    "object": "model",
                    "created": created,
                    "owned_by": "lorafleet",
                    "root": path,
                    "parent": self.parent_of(version),
                    "lorafleet": info,
                }
            )
        return data

    # --- resolution ---------------------------------------------------------------------

    def resolve(self, request: CompletionRequest, headers: Mapping[str, str]) -> Target:
        """`headers`: names in lower case (a plain dict from the ASGI scope, or Starlette's Headers)."""
        model = request.model
        pin = headers.get(self._pin_header)
        key = headers.get(self._session_header) or request.user_key()
        route = self.routes.routes.get(model)
        if route is not None:
            shadow = mirror(model, route, key, self.rng)
            if pin:
                if self.live.get(pin, ("", ""))[0] != model:
                    raise ModelNotFoundError(pin)
                return self._target(model, route, pin, Arm.PINNED, shadow)
            choice = choose(model, route, key, self.rng)
            return self._target(model, route, choice.version, choice.arm, shadow)
        if model in self.live:
            route_name = self.live[model][0]
            return self._target(route_name, self.routes.routes[route_name], model, Arm.PINNED, None)
        raise ModelNotFoundError(model)

    def _target(self, route_name: str, route: Route, version: str, arm: Arm, shadow: str | None) -> Target:
        return Target(
            route_name,
            version,
            arm,
            route.fallback,
            shadow,
            route.enforce_labels,
            self.base_of(route.stable),
        )

    # --- answering ----------------------------------------------------------------------

    def _headers(self, route: str, model: str, arm: Arm, request_id: str) -> dict[str, str]:
        """`model`: the version that answered, or the base model's name after a `base` fallback."""
        return {
            ROUTE_HEADER: route,
            VERSION_HEADER: model,
            ARM_HEADER: arm.value,
            REQUEST_ID_HEADER: request_id,
        }

    async def complete(self, endpoint: str, raw: bytes, headers: Mapping[str, str]) -> Response:
        """Answer one chat or completions request (`raw`: its body)."""
        request = decode_request(endpoint, raw, self.settings)
        request_id = headers.get(REQUEST_ID_HEADER) or new_request_id()
        deadline = request_deadline(headers, self.settings.timeouts.request_s)
        target = self.resolve(request, headers)
        chat = request.chat
        keep_top: int | None = None
        upstream = request.body
        strip = False  # logprobs asked on the client's behalf, cut back to `keep_top` on the way out
        if self.settings.entropy_top_k and self.entropy_sampler.sample(target.version):
            upstream, keep_top = with_logprobs(upstream, chat=chat, top_k=self.settings.entropy_top_k)
            strip = True
        if target.enforce_labels and not _STRUCTURED.intersection(upstream):
            labels = self.observer.label_set(target.version)
            if labels:
                upstream = {**upstream, "structured_outputs": {"choice": labels}}
        if request.stream:
            options = upstream.get("stream_options") or {}
            upstream = {**upstream, "stream_options": {**options, "include_usage": True}}
        start = time.perf_counter()
        try:
            # The first attempt straight from here: each await level is walked again on every resume.
            try:
                attempt = await self.forwarder.send(
                    endpoint, upstream, target.version, target.arm, request_id, deadline
                )
            except EngineFailure as failure:
                attempt = await self.forwarder.after_failure(
                    endpoint, upstream, target, request_id, deadline, start, failure
                )
        except UpstreamError as exc:
            self.observer.record(
                Outcome(target.route, target.version, target.arm, exc.status, time.perf_counter() - start)
            )
            exc.headers = self._headers(target.route, target.version, target.arm, request_id)
            raise
        except asyncio.CancelledError:  # the client left (CompletionsFastPath): the engine was let go
            self._cancelled(target, target.version, target.arm, start)
            raise
        out_headers = self._headers(target.route, attempt.model, attempt.arm, request_id)
        if attempt.response.status != 200:
            return await self.forwarder.pass_error(attempt, target, out_headers, start)
        if request.stream:
            watch = StreamWatch(
                chat, start, strip, keep_top, request.asked_usage, top_k=self.settings.entropy_top_k
            )
            shadow_body = {k: v for k, v in upstream.items() if k not in ("stream", "stream_options")}
            stream = Relay(
                attempt,
                target,
                watch,
                self.observer,
                request.input_text(),
                request.system_text(),
                request_id,
                functools.partial(self.shadows.mirror, endpoint, shadow_body, target),
            )
            return EventStream(stream, out_headers, push=stream.push)
        return await self._whole(
            endpoint, upstream, target, attempt, request, request_id, out_headers, strip, keep_top, start
        )

    async def _whole(
        self,
        endpoint: str,
        upstream: dict[str, Any],
        target: Target,
        attempt: Attempt,
        request: CompletionRequest,
        request_id: str,
        out_headers: dict[str, str],
        strip: bool,
        keep_top: int | None,
        start: float,
    ) -> Response:
        try:
            try:
                raw = await attempt.response.read()
            except asyncio.CancelledError:
                self._cancelled(target, attempt.version, attempt.arm, start)
                raise
            seen: Answer | dict[str, Any] | None = read_answer(raw)
            if seen is None:  # JSON, but not of the usual shape: read it generically
                seen = orjson.loads(raw)
                if not isinstance(seen, dict):
                    raise ValueError(f"the answer is JSON but not an object: {type(seen).__name__}")
        except (*UPSTREAM_ERRORS, ValueError) as exc:
            failure = self.forwarder.classify_read(exc, attempt)
            self.forwarder.count_failure(target, failure)
            log.warning(
                "request %s: the answer of %s from %s broke: %s",
                request_id,
                attempt.version,
                attempt.engine.url,
                exc,
            )
            raise self.forwarder.upstream_error(target, failure, request_id) from None
        finally:
            attempt.finish()
        duration = time.perf_counter() - start
        sent = rewrite_logprobs(raw, seen, keep_top) if strip else raw
        # Observed once the answer is sent (same task, same event-loop turn): off the client's latency.
        after = functools.partial(
            self._observe_answer, endpoint, upstream, target, attempt, request, seen, duration
        )
        return AnswerResponse(sent, out_headers, after)

    def _cancelled(self, target: Target, version: str, arm: Arm, start: float) -> None:
        self.observer.record(
            Outcome(
                target.route,
                version,
                arm,
                499,
                time.perf_counter() - start,
                error=ErrorReason.CLIENT_CANCELLED,
            )
        )

    async def _observe_answer(
        self,
        endpoint: str,
        upstream: dict[str, Any],
        target: Target,
        attempt: Attempt,
        request: CompletionRequest,
        seen: Answer | dict[str, Any],
        duration: float,
    ) -> None:
        """Entropy, metrics, drift and the answer log of a JSON answer; then its shadow, if any."""
        try:
            entropy = EntropyAccumulator(self.settings.entropy_top_k)
            if isinstance(seen, Answer):
                choice = seen.first()
                answer = choice.content if choice is not None else None
                completion_id = seen.id
                usage = seen.usage or Usage()
                prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
                entropy.add(choice.tokens() if choice is not None else ())
            else:
                answer = answer_text(seen, endpoint == CHAT)
                raw_id, raw_usage = seen.get("id"), seen.get("usage")
                completion_id = raw_id if isinstance(raw_id, str) else None
                usage_dict: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
                prompt_tokens = usage_dict.get("prompt_tokens")
                completion_tokens = usage_dict.get("completion_tokens")
                entropy.add(response_tokens(seen))
            self.observer.record(
                Outcome(
                    route=target.route,
                    version=attempt.version,
                    arm=attempt.arm,
                    status=200,
                    duration_s=duration,
                    input_text=request.input_text(),
                    system=request.system_text(),
                    answer=answer,
                    completion_id=completion_id,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    entropy=entropy.value(),
                )
            )
            self.shadows.mirror(endpoint, upstream, target, answer or "", completion_id)
        except Exception:  # the client has its answer; a bug here must not hide it, only be logged
            log.exception("observing answer of request to %s failed", attempt.version)
