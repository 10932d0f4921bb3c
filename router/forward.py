"""Forwarding one request within its deadline: an engine holding its version, the others, the fallback.

    request_deadline(headers, request_s)  the nearer of the gateway's `timeouts.request_s` and the
                               client's own timeout, when it sends one (X-Request-Timeout, or the
                               openai SDKs' X-Stainless-Timeout / X-Stainless-Read-Timeout)
    Target                     where a request was resolved to: route, version, arm, fallback, shadow
    Attempt                    one forwarded request: the engine, its answer (status and headers in)
    Forwarder.send             one engine holding the version; EngineFailure for what a retry may fix
    Forwarder.after_failure    after a first `send` failed: each other engine holding the version,
                               then the route's fallback; each only while the deadline allows.
                               UpstreamError (a 503/504 naming the version and the request id)
                               when none answered.
    Forwarder.pass_error       an engine's 4xx, the client's own error, in OpenAI's shape

What a client is told never names an engine's address or an exception; the log has the detail.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from starlette.responses import Response

from monitor.metrics import Arm, ErrorReason
from router.errors import BadRequestError, UpstreamError, UpstreamTimeoutError
from router.observe import Observer, Outcome
from router.policy import BASE_FALLBACK
from router.responses import REQUEST_ID_HEADER, FastJSONResponse
from router.settings import GatewaySettings
from router.upstream import (
    UPSTREAM_ERRORS,
    EngineFailure,
    FailureReason,
    Transport,
    UpstreamResponse,
    classify,
    engine_is_down,
    error_message,
    forward_timeout,
)
from serve.fleet import EngineState, Fleet

log = logging.getLogger("lorafleet.router")

NO_ENGINE = "-"  # EngineFailure.engine when no engine could be tried
# The client's own timeout, in seconds: ours first, then the openai SDKs' (Node's total timeout,
# Python's read timeout, which for a JSON answer is the wait for the whole answer).
CLIENT_TIMEOUT_HEADERS = ("x-request-timeout", "x-stainless-timeout", "x-stainless-read-timeout")
_ANSWER_MARGIN_S = 0.5  # the gateway answers this much before the client gives up (at most 10%)

_MIN_LEFT_S = 0.001  # less than this before the deadline: it has passed (timers fire a little early)

_ERROR_REASONS = {
    FailureReason.TIMEOUT: ErrorReason.TIMEOUT,
    FailureReason.DEADLINE: ErrorReason.TIMEOUT,
    FailureReason.NOT_LOADED: ErrorReason.UNAVAILABLE,
    FailureReason.CONNECT: ErrorReason.UNAVAILABLE,
}


def request_deadline(headers: Mapping[str, str], request_s: float) -> float:
    """The request's deadline on time.monotonic()'s clock (header names in lower case)."""
    budget = request_s
    for name in CLIENT_TIMEOUT_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not seconds > 0 or math.isinf(seconds):
            raise BadRequestError(f"header {name} must be a positive number of seconds, got {raw!r}")
        budget = min(budget, seconds - min(_ANSWER_MARGIN_S, seconds / 10))
    return time.monotonic() + budget


class Target(NamedTuple):  # made per request: a NamedTuple is made ~4x faster than a frozen dataclass
    route: str
    version: str
    arm: Arm
    fallback: str | None
    shadow: str | None = None
    enforce_labels: bool = False
    base: str | None = None  # the fingerprint of the route's base model: where its `base` fallback goes


@dataclass
class Attempt:
    """What one forwarded request produced."""

    version: str
    arm: Arm
    engine: EngineState
    response: UpstreamResponse
    started: float = field(default_factory=time.perf_counter)
    model: str = ""  # the `model` the engine was asked for: the version, or its base model's name
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


def _uncapped(body: dict[str, Any], engine: EngineState, limit: int) -> bool:
    """A body without max_tokens would let `engine` generate more than `limit` tokens: all its
    context has room for. An engine whose context is within the limit caps the answer itself (at
    what the prompt leaves), which no fixed max_tokens could do without knowing the prompt's length."""
    if body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None:
        return False
    return engine.max_model_len is None or engine.max_model_len > limit


def _past(failure: EngineFailure, deadline: float) -> bool:
    """No other attempt fits before the deadline."""
    return failure.reason is FailureReason.DEADLINE or deadline - time.monotonic() < _MIN_LEFT_S


class Forwarder:
    """Sends requests to the engines of the fleet through the transport."""

    def __init__(
        self, settings: GatewaySettings, fleet: Fleet, transport: Transport, observer: Observer
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.transport = transport
        self.observer = observer
        self._timeout = forward_timeout(settings)
        t = settings.timeouts
        self._longest = max(t.pool_s, t.connect_s, t.read_s)

    async def send(
        self,
        endpoint: str,
        body: dict[str, Any],
        version: str,
        arm: Arm,
        request_id: str,
        deadline: float,
        exclude: Sequence[str] = (),
        base: str | None = None,
    ) -> Attempt:
        """Send to one engine holding `version` (`base`: an engine of the base with that fingerprint);
        raise EngineFailure for anything a fallback may fix."""
        if version == BASE_FALLBACK:
            engine = self.fleet.pick(None, exclude, base)
            upstream_model = engine.base_model if engine else None
        else:
            engine = self.fleet.pick(version, exclude)
            upstream_model = version
        if engine is None or upstream_model is None:
            other = "other " if exclude else ""
            raise EngineFailure(
                NO_ENGINE, FailureReason.NOT_LOADED, f"no {other}healthy engine holds {version}"
            )
        remaining = deadline - time.monotonic()
        if remaining < _MIN_LEFT_S:
            raise EngineFailure(engine.url, FailureReason.DEADLINE, "the request's deadline passed")
        timeout = self._timeout
        if remaining < self._longest:
            timeout = forward_timeout(self.settings, remaining)
        fields = {**body, "model": upstream_model}
        if _uncapped(body, engine, self.settings.max_tokens_limit):
            fields["max_tokens"] = self.settings.max_tokens_limit
        payload = orjson.dumps(fields)
        engine.in_flight += 1
        started = time.perf_counter()
        try:
            response = await self.transport.post(
                engine.url,
                f"/v1/{endpoint}",
                payload,
                {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id},
                timeout,
                deadline,
            )
        except BaseException as exc:  # an engine failure, or cancelled: the client left
            engine.in_flight -= 1
            if not isinstance(exc, UPSTREAM_ERRORS):
                raise
            failure = classify(exc, engine.url)
            if engine_is_down(failure, exc):
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
            reason = FailureReason.NOT_LOADED if response.status == 404 else FailureReason.STATUS_5XX
            raise EngineFailure(engine.url, reason, detail, response.status)
        return Attempt(version, arm, engine, response, started, upstream_model)

    async def _send_to_others(
        self,
        endpoint: str,
        body: dict[str, Any],
        version: str,
        arm: Arm,
        request_id: str,
        deadline: float,
        failure: EngineFailure,
    ) -> Attempt:
        """After `failure` of a first `send`: each other healthy engine holding `version` in turn,
        while the deadline allows."""
        failed: list[EngineFailure] = []
        while True:
            if failure.engine == NO_ENGINE and failed:
                raise failed[-1] from None  # no other engine holds it: report the last real failure
            if failure.engine == NO_ENGINE or _past(failure, deadline):
                raise failure
            failed.append(failure)
            log.warning("request %s to %s failed: %s; trying another engine", request_id, version, failure)
            try:
                return await self.send(
                    endpoint, body, version, arm, request_id, deadline, [f.engine for f in failed]
                )
            except EngineFailure as exc:
                failure = exc

    async def after_failure(
        self,
        endpoint: str,
        body: dict[str, Any],
        target: Target,
        request_id: str,
        deadline: float,
        start: float,
        failure: EngineFailure,
    ) -> Attempt:
        """After `failure` of the first `send`: an answer's head from another engine of the target's
        version, or its fallback.

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
            if fallback is None or fallback == target.version or _past(first, deadline):
                self.count_failure(target, first)
                raise self.upstream_error(target, first, request_id) from None
            self.observer.metrics.fallbacks.labels(
                *self.observer.label_values(target.route, target.version), first.reason.value
            ).inc()
            try:
                attempt = await self.send(
                    endpoint, body, fallback, Arm.FALLBACK, request_id, deadline, base=target.base
                )
            except EngineFailure as second:
                # One failed request (complete() counts it), one error: the fallback's.
                self.observer.metrics.errors.labels(
                    *self.observer.label_values(target.route, target.version), ErrorReason.FALLBACK.value
                ).inc()
                log.warning("request %s to fallback %s failed too: %s", request_id, fallback, second)
                raise self.upstream_error(target, second, request_id, fallback) from None
            self.observer.record(
                Outcome(
                    target.route,
                    target.version,
                    target.arm,
                    self.upstream_error(target, first, request_id).status,
                    time.perf_counter() - start,
                    error=ErrorReason.FALLBACK,
                )
            )
            return attempt

    @staticmethod
    def classify_read(exc: BaseException, attempt: Attempt) -> EngineFailure:
        """A whole answer that could not be read (or decoded: ValueError) as an EngineFailure."""
        if isinstance(exc, ValueError):
            return EngineFailure(attempt.engine.url, FailureReason.BAD_ANSWER, str(exc))
        return classify(exc, attempt.engine.url)

    def count_failure(self, target: Target, failure: EngineFailure) -> None:
        reason = _ERROR_REASONS.get(failure.reason, ErrorReason.UPSTREAM_ERROR)
        self.observer.metrics.errors.labels(
            *self.observer.label_values(target.route, target.version), reason.value
        ).inc()

    @staticmethod
    def upstream_error(
        target: Target, failure: EngineFailure, request_id: str, fallback: str | None = None
    ) -> UpstreamError:
        tried = target.version + (f" and its fallback {fallback}" if fallback else "")
        message = f"no engine could answer for {tried}: {failure.public} (request {request_id})"
        if failure.timed_out:
            return UpstreamTimeoutError(message)
        return UpstreamError(message)

    async def pass_error(
        self, attempt: Attempt, target: Target, headers: dict[str, str], start: float
    ) -> Response:
        """A 4xx from the engine is the client's: pass it on in OpenAI's shape."""
        try:
            raw = await attempt.response.read()
        except UPSTREAM_ERRORS as exc:
            log.warning("the error answer of %s from %s broke: %s", attempt.version, attempt.engine.url, exc)
            raw = b"the engine's error answer could not be read"
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
