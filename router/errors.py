"""Errors of the gateway and the rollout controller; each maps to one OpenAI-shaped HTTP error.

RouterError(LorafleetError)             status, type, code, param
 +-- BadRequestError          400       invalid body, limits exceeded
 +-- PayloadTooLargeError     413       the body is over the size limit
 +-- AuthenticationError      401       missing or wrong bearer token
 +-- ModelNotFoundError       404       the model names no route and no live version
 +-- RouteNotFoundError       404       admin: no such route
 +-- CompletionNotFoundError  404       feedback for a completion id the gateway never returned
 +-- ConflictError            409       admin: a rollout change that does not apply now
 |    +-- StaleRevisionError  409       the routes file changed since the caller read it
 +-- RoutesFileError                    the routes file is unreadable or invalid (names the field)
 +-- UpstreamError            502/503   no engine answered (after the fallback, if any)
      +-- UpstreamTimeoutError 504
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from lorafleet.errors import LorafleetError


class RouterError(LorafleetError):
    status = 500
    type = "server_error"
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = MappingProxyType({})  # response headers, e.g. the version tried


class BadRequestError(RouterError):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class PayloadTooLargeError(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class AuthenticationError(RouterError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFoundError(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    param = "model"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The model '{name}' does not exist: it names no route and no live version. See GET /v1/models."
        )
        self.name = name


class RouteNotFoundError(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "route_not_found"
    param = "route"

    def __init__(self, name: str) -> None:
        super().__init__(f"no route named '{name}'")
        self.name = name


class CompletionNotFoundError(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "completion_not_found"
    param = "completion_id"


class ConflictError(RouterError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class StaleRevisionError(ConflictError):
    code = "stale_revision"

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"the routes changed since revision {expected} (now {current}); read them again and retry",
        )
        self.expected = expected
        self.current = current


class RoutesFileError(RouterError):
    status = 500
    type = "server_error"


class UpstreamError(RouterError):
    status = 503
    type = "service_unavailable"
    code = "upstream_unavailable"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"
