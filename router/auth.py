"""Bearer-token checks, before any routing: admin paths always, inference paths when keys are set.

A pure ASGI middleware, so streaming responses pass untouched. The admin check looks at the path
as any spelling could reach it (percent-decoded, case-folded, dot segments and repeated slashes
resolved): `/ADMIN/status`, `//admin/./status` and `/admin%2fstatus` all need the token. It checks
the path Starlette routes on too, without the ASGI `root_path` (`uvicorn --root-path /api` makes
`/api/admin/status` reach the admin router). Tokens are compared in constant time. The admin router
checks the token again itself (`require_admin`), in case a path ever slips past this middleware.
"""

from __future__ import annotations

import hmac
import json
import posixpath
from collections.abc import Sequence
from urllib.parse import unquote

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from router.errors import AuthenticationError

ADMIN_PREFIX = "/admin"
OPEN_PATHS = ("/health", "/metrics")


def canonical_path(path: str) -> str:
    for _ in range(3):  # undo double encoding too
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    # POSIX keeps a leading "//" as it is; strip every leading slash first.
    return posixpath.normpath("/" + path.replace("\\", "/").lower().lstrip("/"))


def _without_root(path: str, root_path: str) -> str:
    """The path Starlette routes on: `path` without the ASGI root_path (as starlette's get_route_path)."""
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("", "/"):
        return path[len(root_path) :] or "/"
    return path


def route_path(scope: Scope) -> str:
    """The path the app routes a request on: its path without the ASGI root_path."""
    return _without_root(scope["path"], scope.get("root_path", ""))


def _candidate_paths(scope: Scope) -> set[str]:
    """Every canonical spelling under which the request's path might be routed."""
    root = scope.get("root_path", "")
    raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    paths = {scope["path"], raw, _without_root(scope["path"], root), _without_root(raw, root)}
    return {canonical_path(p) for p in paths}


def _may_be_admin(scope: Scope) -> bool:
    """False only when no spelling of the path can reach /admin: it has no escape or backslash to
    decode and no "admin" in it. Spares the canonicalisation on the request path."""
    raw = scope.get("raw_path") or b""
    if b"%" in raw or b"\\" in raw or "%" in scope["path"] or "\\" in scope["path"]:
        return True
    return b"admin" in raw.lower() or "admin" in scope["path"].lower()


def _bearer(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
    return None


def _matches(token: bytes | None, secrets: Sequence[bytes]) -> bool:
    if token is None:
        return False
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(token, secret)
    return ok


class AuthMiddleware:
    def __init__(self, app: ASGIApp, admin_token: str | None, api_keys: Sequence[str] = ()) -> None:
        self.app = app
        self.admin = [admin_token.encode()] if admin_token else []
        self.api_keys = [k.encode() for k in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _bearer(scope["headers"])
        if _may_be_admin(scope) and any(p.startswith(ADMIN_PREFIX) for p in _candidate_paths(scope)):
            if not self.admin:
                await _deny(send, "the admin API is disabled: start the gateway with an admin token")
                return
            if not _matches(token, self.admin):
                await _deny(send, "the admin API needs 'Authorization: Bearer <admin token>'")
                return
        elif self.api_keys and route_path(scope) not in OPEN_PATHS and not _matches(token, self.api_keys):
            await _deny(send, "Incorrect or missing API key: send 'Authorization: Bearer <key>'")
            return
        await self.app(scope, receive, send)


def has_key(headers: Sequence[tuple[bytes, bytes]], keys: Sequence[bytes]) -> bool:
    """Whether the request's bearer token is one of `keys` (compared in constant time)."""
    return _matches(_bearer(headers), keys)


def require_admin(request: Request) -> None:
    """The admin router's own token check (a FastAPI dependency), behind the middleware's."""
    secret: str | None = getattr(request.app.state, "admin_token", None)
    if not secret:
        raise AuthenticationError("the admin API is disabled: start the gateway with an admin token")
    if not _matches(_bearer(request.scope["headers"]), [secret.encode()]):
        raise AuthenticationError("the admin API needs 'Authorization: Bearer <admin token>'")


async def _deny(send: Send, message: str) -> None:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "authentication_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
