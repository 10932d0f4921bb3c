"""The HTTP client of the commands that talk to a running gateway's (or controller's) admin API."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from lorafleet import paths
from lorafleet.errors import LorafleetError

GatewayOpt = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        help="The gateway or controller URL (default: $LORAFLEET_GATEWAY_URL, else http://127.0.0.1:8080).",
        show_default=False,
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File with the admin token (default: $LORAFLEET_ADMIN_TOKEN, $LORAFLEET_ADMIN_TOKEN_FILE, "
        "else $LORAFLEET_HOME/admin.token, which a local gateway makes).",
        show_default=False,
    ),
]


class AdminAPIError(LorafleetError):
    pass


def _token(token_file: Path | None) -> str:
    if token_file is None and os.environ.get("LORAFLEET_ADMIN_TOKEN"):
        return os.environ["LORAFLEET_ADMIN_TOKEN"]
    path = token_file or Path(os.environ.get("LORAFLEET_ADMIN_TOKEN_FILE") or paths.home() / "admin.token")
    try:
        token = path.expanduser().read_text().strip()
    except OSError as exc:
        raise AdminAPIError(
            f"cannot read the admin token from {path}: {exc.strerror}",
            hint="pass --token-file, or set LORAFLEET_ADMIN_TOKEN",
        ) from None
    if not token:
        raise AdminAPIError(f"the admin token file {path} is empty")
    return token


class AdminClient:
    def __init__(self, gateway: str | None, token_file: Path | None) -> None:
        self.base = (gateway or os.environ.get("LORAFLEET_GATEWAY_URL") or "http://127.0.0.1:8080").rstrip(
            "/"
        )
        self.token_file = token_file

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> Any:
        import httpx

        headers = {
            "authorization": f"Bearer {_token(self.token_file)}",
            "x-lorafleet-actor": f"{getpass.getuser()}@{socket.gethostname()}",
        }
        # httpx would send a None as an empty value (`?route=`), which filters on the route "".
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = httpx.request(
                method, f"{self.base}{path}", json=body, params=query, headers=headers, timeout=60
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise AdminAPIError(
                f"cannot reach {self.base}: {exc}", hint="is the gateway running? pass --gateway URL"
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            hints = {
                401: "check the admin token (--token-file)",
                409: "read the current state with `lorafleet route status` and retry",
            }
            text = " ".join(response.text.split())[:300]  # one line, whatever the body
            raise AdminAPIError(
                f"{response.status_code}: {message or text or response.reason_phrase}",
                hint=hints.get(response.status_code),
            )
        if not isinstance(data, dict):
            raise AdminAPIError(
                f"{self.base}{path} did not answer with a JSON object",
                hint="is --gateway the URL of a lorafleet gateway or controller?",
            )
        return data
