"""The OpenAI-compatible endpoints: chat and text completions, the model list, feedback.

Handlers parse, call one function, return. Errors leave as exceptions and are answered in OpenAI's
error shape by the handlers registered in router/app.py. These are plain Starlette routes, not
FastAPI ones: on the request path FastAPI's dependency machinery costs more CPU than it gives here.

`CompletionsFastPath` answers `POST /v1/chat/completions` and `POST /v1/completions` in front of
FastAPI, the app's middleware stack and Starlette's router, which together cost about 100 us of
CPU per request and more on streams (bench/gateway_overhead.py); router/app.py's GatewayApp calls
it first. For these two endpoints it does what the
middlewares would: the request id, the API-key check (a request without a valid key goes on to
the stack, whose auth middleware answers the 401), a 500 in OpenAI's shape for an unexpected error.
Any other method or spelling of those paths reaches the Starlette routes below.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from lorafleet.errors import LorafleetError
from monitor.errors import (
    FeedbackConflictError,
    InvalidFeedbackError,
    StoreUnavailableError,
    UnknownCompletionError,
)
from router.auth import has_key, route_path
from router.errors import (
    BadRequestError,
    CompletionNotFoundError,
    ConflictError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RouterError,
    UpstreamError,
)
from router.gateway import Gateway
from router.ids import new_request_id
from router.peers import FORWARDED_HEADER, ask_peers
from router.requests import CHAT, COMPLETIONS
from router.responses import REQUEST_ID_HEADER, ClientLeaving, error_response, internal_error


async def read_json(request: Request, limit: int, empty: Any = None) -> Any:
    """The request's JSON body, refusing more than `limit` bytes and anything that is not JSON.

    A request without a body gets `empty`, or a 400 when `empty` is None.
    """
    body = await _read_body(request.stream(), request.headers.get("content-length"), limit)
    if not body.strip() and empty is not None:
        return empty
    if not body:
        raise BadRequestError("the request has no body; send a JSON object")
    try:
        return orjson.loads(body)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the request body is {declared} bytes; this gateway accepts at most {limit}"
        )
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"the request body is over {limit} bytes, the most this gateway accepts"
            )
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _complete(request: Request, endpoint: str) -> Response:
    gateway = _gateway(request)
    raw = await _read_body(
        request.stream(), request.headers.get("content-length"), gateway.settings.max_body_bytes
    )
    return await gateway.complete(endpoint, raw, request.headers)


async def chat_completions(request: Request) -> Response:
    return await _complete(request, CHAT)


async def completions(request: Request) -> Response:
    return await _complete(request, COMPLETIONS)


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": _gateway(request).model_list()})


async def get_model(request: Request) -> JSONResponse:
    model = request.path_params["model"]
    for entry in _gateway(request).model_list():
        if entry["id"] == model:
            return JSONResponse(entry)
    raise ModelNotFoundError(model)


async def feedback(request: Request) -> Response:
    """Feedback on an answer: `{"completion_id": "chatcmpl-...", "label": "..."}` or `"correct": true|false`."""
    gateway = _gateway(request)
    body = await read_json(request, gateway.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise BadRequestError("the feedback body must be a JSON object")
    completion_id = body.get("completion_id") or body.get("id")
    if not isinstance(completion_id, str) or not completion_id:
        raise BadRequestError(
            "'completion_id' is required: the id of the completion being judged", param="completion_id"
        )
    label, correct, source = body.get("label"), body.get("correct"), body.get("source")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise BadRequestError("'label' must be a non-empty string: the right answer", param="label")
    if correct is not None and not isinstance(correct, bool):
        raise BadRequestError("'correct' must be true or false", param="correct")
    if (label is None) == (correct is None):
        raise BadRequestError(
            "give exactly one of 'label' (the right answer) or 'correct' (true/false)", param="label"
        )
    if source is not None and not isinstance(source, str):
        raise BadRequestError("'source' must be a string", param="source")
    try:
        record, created = await gateway.observer.add_feedback(completion_id, label, correct, source)
    except UnknownCompletionError as exc:
        # With a shared store (PostgreSQL) every replica sees every answer: nobody else to ask.
        shared = gateway.settings.feedback.url is not None
        if shared or not gateway.settings.peers or FORWARDED_HEADER in request.headers:
            raise _feedback_error(exc) from None
        return await _feedback_from_peers(gateway, body, request, exc)
    except StoreUnavailableError as exc:
        raise UpstreamError(exc.message) from None
    except LorafleetError as exc:
        raise _feedback_error(exc) from None
    payload = {
        "object": "feedback",
        "completion_id": record.completion_id,
        "route": record.route,
        "version": record.version,
        "label": record.label,
        "answer_label": record.answer_label,
        "correct": record.correct,
        "received_at": record.received_at.isoformat(),
    }
    return JSONResponse(payload, status_code=201 if created else 200)


async def _feedback_from_peers(
    gateway: Gateway, body: dict[str, Any], request: Request, unknown: UnknownCompletionError
) -> Response:
    """The answer of the peer replica that served the completion (router/peers.py)."""
    found = await ask_peers(
        request.app.state.http, gateway.settings.peers, orjson.dumps(body), request.headers
    )
    if found.status is not None:
        return Response(found.body, status_code=found.status, media_type="application/json")
    if found.unreachable:
        raise UpstreamError(
            f"{unknown.message} of this gateway, nor in those of the"
            f" {found.asked - found.unreachable} gateway peer(s) that answered;"
            f" {found.unreachable} peer(s) did not answer: try again"
        )
    raise CompletionNotFoundError(
        f"{unknown.message} of this gateway, nor in those of its {found.asked} gateway peer(s)"
    )


def _feedback_error(exc: LorafleetError) -> RouterError:
    if isinstance(exc, UnknownCompletionError):
        return CompletionNotFoundError(exc.message)
    if isinstance(exc, FeedbackConflictError):
        return ConflictError(exc.message)
    if isinstance(exc, InvalidFeedbackError):
        return BadRequestError(exc.message)
    return RouterError(exc.message)


class CompletionsFastPath:
    """`POST /v1/chat/completions` and `POST /v1/completions` as plain ASGI (see the module's text)."""

    ENDPOINTS = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS}

    def __init__(self, api_keys: Sequence[str] = ()) -> None:
        self.api_keys = [k.encode() for k in api_keys]
        self.gateway: Gateway | None = None  # set while the app serves (its lifespan)
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, gateway: Gateway) -> None:
        """Serve through `gateway`, on the running event loop."""
        self.gateway = gateway
        # Named, not looked up per request: asyncio.current_task() without it makes a getpid
        # system call each time on Python 3.11 (get_running_loop checks the process id).
        self.loop = asyncio.get_running_loop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request and return True, or return False (untouched) for the app's stack."""
        gateway = self.gateway
        endpoint = (
            self.ENDPOINTS.get(route_path(scope))
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if endpoint is None or gateway is None:
            return False
        if self.api_keys and not has_key(scope["headers"], self.api_keys):
            return False
        # One pass over the raw headers (Starlette's Headers scans them again on every lookup);
        # reversed, so that the first of repeated headers wins, as with Headers.get.
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in reversed(scope["headers"])}
        request_id = headers.get(REQUEST_ID_HEADER) or new_request_id()
        headers[REQUEST_ID_HEADER] = request_id
        # Under the gateway's server, a client that leaves before its answer cancels the work on
        # it: the engine's connection is closed, so the engine stops generating for nobody.
        task = asyncio.current_task(self.loop)
        assert task is not None
        leaving = ClientLeaving(scope, receive, task, watch=False)
        response: Response
        try:
            raw = await _read_body(
                _body_chunks(receive), headers.get("content-length"), gateway.settings.max_body_bytes
            )
            response = await gateway.complete(endpoint, raw, headers)
        except RouterError as exc:
            exc.headers = {**(exc.headers or {}), REQUEST_ID_HEADER: request_id}
            response = error_response(exc)
        except Exception as exc:
            response = internal_error(exc, request_id)
        except asyncio.CancelledError:
            if not leaving.swallow():
                raise
            return True  # nobody to answer
        finally:
            leaving.close()
        await response(scope, receive, send)
        return True


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/feedback", feedback, methods=["POST"]),
]
