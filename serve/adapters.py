"""Loading and unloading adapter versions on a running engine, over vLLM's HTTP API.

Both operations are idempotent: loading a loaded name and unloading an unknown one succeed. The
engine's adapter name is the registry's version name. vLLM answers these calls in plain text on
success and with OpenAI-shaped JSON errors otherwise (400 already loaded, 404 not found, 500 when
the worker refuses, e.g. a rank above --max-lora-rank); the engine keeps serving in every case.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from serve.errors import AdapterLoadError, EngineUnavailableError


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error", {}).get("message") or body.get("message") or body)
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"


class AdapterClient:
    """The adapter API of one engine."""

    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    async def _post(self, path: str, body: dict[str, str]) -> httpx.Response:
        try:
            return await self.http.post(f"{self.base_url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(self.base_url, f"{type(exc).__name__}: {exc}") from exc

    async def models(self) -> list[dict[str, object]]:
        try:
            response = await self.http.get(f"{self.base_url}/v1/models")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(self.base_url, f"{type(exc).__name__}: {exc}") from exc
        data = response.json().get("data", [])
        return [m for m in data if isinstance(m, dict)]

    async def loaded(self) -> dict[str, str]:
        """Adapters loaded on the engine: name -> path (vLLM lists each with `parent` set to the base)."""
        return {str(m["id"]): str(m.get("root")) for m in await self.models() if m.get("parent")}

    async def load(self, name: str, path: Path | str) -> None:
        response = await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        if response.status_code == 200:
            return
        message = _error_message(response)
        if response.status_code == 400 and "already been loaded" in message:
            return
        raise AdapterLoadError(name, self.base_url, message.replace("<path>", str(path)))

    async def unload(self, name: str) -> None:
        response = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code in (200, 404):
            return
        raise AdapterLoadError(name, self.base_url, f"unload failed: {_error_message(response)}")
