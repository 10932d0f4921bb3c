"""Several engines, what each holds, and the reconcile loop that keeps it equal to what routes need.

Engines are named by URL (`http://10.0.0.5:8000`), or by a DNS name that resolves to every engine pod
(`dns+http://lorafleet-engine-headless:8000`, a Kubernetes headless Service), re-resolved on each
refresh. `refresh()` health-checks every engine and reads the adapters it holds; `reconcile(desired)`
loads what is missing and unloads what is no longer needed, on each healthy engine. An adapter that
fails to load is recorded with the reason (and retried later, with backoff); every other adapter
keeps serving. `pick(version)` chooses a healthy engine that holds a version, least busy first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lorafleet.discovery import resolve_urls
from serve.adapters import AdapterClient
from serve.errors import AdapterLoadError, EngineUnavailableError

log = logging.getLogger("lorafleet.serve")

_RETRY_FAILED_LOAD_S = 60.0


@dataclass
class LoadFailure:
    reason: str
    at: float
    attempts: int = 1


@dataclass
class EngineState:
    url: str
    healthy: bool = False
    base_model: str | None = None
    max_model_len: int | None = None  # the engine's context, as its model list says (vLLM does)
    loaded: dict[str, str] = field(default_factory=dict)
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    in_flight: int = 0
    last_error: str | None = None
    checked_at: float = 0.0

    def holds(self, version: str) -> bool:
        return version in self.loaded


@dataclass(frozen=True)
class ReconcileReport:
    loaded: list[tuple[str, str]] = field(default_factory=list)  # (engine, version)
    unloaded: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (engine, version, reason)


class Fleet:
    """The engines behind the gateway."""

    def __init__(
        self,
        targets: Sequence[str],
        http: httpx.AsyncClient,
        on_load_failure: Callable[[str, str, str], None] | None = None,
        on_health: Callable[[str, bool], None] | None = None,
        on_removed: Callable[[str], None] | None = None,
    ) -> None:
        self.targets = list(targets)
        self.http = http
        self.engines: dict[str, EngineState] = {}
        self._rr = itertools.count()
        self._lock = asyncio.Lock()
        self._on_load_failure = on_load_failure
        self._on_health = on_health
        self._on_removed = on_removed

    def healthy(self) -> list[EngineState]:
        return [e for e in self.engines.values() if e.healthy]

    def base_model(self) -> str | None:
        """The name the engines serve the base model under (the first healthy engine's)."""
        return next((e.base_model for e in self.healthy() if e.base_model), None)

    def holders(self, version: str) -> list[EngineState]:
        return [e for e in self.healthy() if e.holds(version)]

    def pick(self, version: str | None, exclude: Sequence[str] = ()) -> EngineState | None:
        """A healthy engine holding `version` (None: the base model), the least busy; ties in turn."""
        candidates = [
            e for e in self.healthy() if e.url not in exclude and (version is None or e.holds(version))
        ]
        if not candidates:
            return None
        least = min(e.in_flight for e in candidates)
        ready = [e for e in candidates if e.in_flight == least]
        return ready[next(self._rr) % len(ready)]

    def mark_failed(self, url: str, reason: str) -> None:
        """Take an engine out of rotation after a connection error; the next refresh may bring it back."""
        engine = self.engines.get(url)
        if engine is not None and engine.healthy:
            engine.healthy = False
            engine.last_error = reason
            if self._on_health:
                self._on_health(url, False)

    async def _check(self, engine: EngineState) -> None:
        client = AdapterClient(engine.url, self.http)
        was = engine.healthy
        try:
            response = await self.http.get(f"{engine.url}/health", timeout=5.0)
            if response.status_code != 200:
                raise EngineUnavailableError(engine.url, f"/health answered {response.status_code}")
            models = await client.models()
            base = next((m for m in models if not m.get("parent")), None)
            engine.base_model = str(base["id"]) if base else None
            context = base.get("max_model_len") if base else None
            engine.max_model_len = context if isinstance(context, int) and context > 0 else None
            engine.loaded = {str(m["id"]): str(m.get("root")) for m in models if m.get("parent")}
            engine.healthy = True
            engine.last_error = None
        except (httpx.HTTPError, EngineUnavailableError) as exc:
            engine.healthy = False
            engine.last_error = str(exc)
        engine.checked_at = time.time()
        if self._on_health:
            self._on_health(engine.url, engine.healthy)
        if was != engine.healthy:
            log.info(
                "engine %s is %s", engine.url, "healthy" if engine.healthy else f"down: {engine.last_error}"
            )

    async def refresh(self) -> None:
        """Resolve the targets, health-check every engine and read what it holds."""
        urls: list[str] = []
        for target in self.targets:
            urls += await resolve_urls(target)
        for url in urls:
            if url not in self.engines:
                self.engines[url] = EngineState(url)
                if self._on_health:
                    self._on_health(url, False)
        for gone in set(self.engines) - set(urls):
            del self.engines[gone]
            log.info("engine %s is gone (no longer named or resolved)", gone)
            if self._on_removed:
                self._on_removed(gone)
        await asyncio.gather(*(self._check(e) for e in self.engines.values()))

    async def reconcile(self, desired: Mapping[str, Path], unload: bool = True) -> ReconcileReport:
        """Make every healthy engine hold the `desired` versions (name -> adapter folder).

        With `unload`, also unload every other adapter. Only the one rollout controller unloads:
        a gateway replica that reads a routes file older than the controller's would otherwise
        unload a version the controller has just loaded.
        """
        report = ReconcileReport()
        async with self._lock:
            await self.refresh()
            for engine in self.healthy():
                client = AdapterClient(engine.url, self.http)
                for name, path in desired.items():
                    if engine.holds(name):
                        engine.failures.pop(name, None)
                        continue
                    failure = engine.failures.get(name)
                    if failure and time.time() - failure.at < _RETRY_FAILED_LOAD_S * min(
                        failure.attempts, 10
                    ):
                        continue
                    try:
                        await client.load(name, path)
                    except AdapterLoadError as exc:
                        attempts = failure.attempts + 1 if failure else 1
                        engine.failures[name] = LoadFailure(exc.reason, time.time(), attempts)
                        report.failed.append((engine.url, name, exc.reason))
                        log.error("%s", exc)
                        if self._on_load_failure:
                            self._on_load_failure(engine.url, name, exc.reason)
                        continue
                    except EngineUnavailableError as exc:
                        self.mark_failed(engine.url, str(exc))
                        break
                    engine.loaded[name] = str(path)
                    engine.failures.pop(name, None)
                    report.loaded.append((engine.url, name))
                    log.info("loaded adapter %s on %s", name, engine.url)
                for name in sorted(set(engine.loaded) - set(desired)) if unload else ():
                    try:
                        await client.unload(name)
                    except (AdapterLoadError, EngineUnavailableError) as exc:
                        log.warning("%s", exc)
                        continue
                    engine.loaded.pop(name, None)
                    report.unloaded.append((engine.url, name))
                    log.info("unloaded adapter %s from %s", name, engine.url)
                for name in set(engine.failures) - set(desired):
                    del engine.failures[name]
        return report

    async def run(
        self, desired: Callable[[], Mapping[str, Path]], interval_s: float, unload: bool = True
    ) -> None:
        """Reconcile every `interval_s` seconds until cancelled."""
        while True:
            try:
                await self.reconcile(desired(), unload=unload)
            except Exception:
                log.exception("reconcile failed; trying again in %.0f s", interval_s)
            await asyncio.sleep(interval_s)

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "url": e.url,
                "healthy": e.healthy,
                "base_model": e.base_model,
                "adapters": sorted(e.loaded),
                "failures": {k: v.reason for k, v in e.failures.items()},
                "in_flight": e.in_flight,
                "last_error": e.last_error,
            }
            for e in self.engines.values()
        ]
