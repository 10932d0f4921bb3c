"""Several engines, what each holds, and the reconcile loop that keeps it equal to what routes need.

Engines are named by URL (`http://10.0.0.5:8000`), or by a DNS name that resolves to every engine pod
(`dns+http://lorafleet-engine-headless:8000`, a Kubernetes headless Service), re-resolved on each
refresh. `refresh()` health-checks every engine and reads what it is: its base model (the name it
serves it under, and its identity: lorafleet's `lorafleet-base@NAME@FINGERPRINT` alias in its model
list, else the fingerprint of its model folder when this process can read it), its adapter slots
and queue (vLLM's own /metrics: `vllm:lora_requests_info`, `vllm:num_requests_running/waiting`) and
the adapters it holds. `reconcile(wanted)` places every live version on engines of its base
(serve/placement.py), loads what is missing and unloads what is no longer placed there. An adapter
that fails to load is recorded with the reason (and retried later, with backoff); every other
adapter keeps serving. `pick(version)` chooses a healthy engine that holds a version, least busy
first; never one where it is not resident.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from lorafleet.baseid import BaseIdentity, identify_model_folder, parse_alias
from lorafleet.discovery import resolve_urls
from serve.adapters import AdapterClient
from serve.errors import AdapterLoadError, EngineUnavailableError
from serve.placement import EngineSlots, Placement, Wanted, compatible, place

log = logging.getLogger("lorafleet.serve")

_RETRY_FAILED_LOAD_S = 60.0
DEFAULT_SLOTS = 8  # adapter slots of an engine that does not report its --max-loras
_LORA_INFO = "vllm:lora_requests_info"  # its `max_lora` label: the engine's --max-loras
_QUEUE = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}


# An engine's model folder, when it is readable here (the same machine): read once per folder.
_identity_of_folder = functools.cache(identify_model_folder)


def _samples(text: str, names: set[str]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of these metrics in an engine's /metrics (Prometheus' text format): name ->
    [(labels, value)]; empty for an unreadable page."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in names}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in out:
                    out[sample.name].append((sample.labels, sample.value))
    except ValueError:
        pass
    return out


@dataclass
class LoadFailure:
    reason: str
    at: float
    attempts: int = 1


@dataclass
class EngineState:
    url: str
    healthy: bool = False
    base_model: str | None = None  # the name it serves its base model under
    base: BaseIdentity | None = None  # which base that is; None: not verified
    max_model_len: int | None = None  # the engine's context, as its model list says (vLLM does)
    slots: int | None = None  # adapter slots (vLLM --max-loras, from its /metrics)
    running: int | None = None  # requests the engine runs and queues (its /metrics)
    waiting: int | None = None
    loaded: dict[str, str] = field(default_factory=dict)
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    in_flight: int = 0
    last_error: str | None = None
    checked_at: float = 0.0

    def holds(self, version: str) -> bool:
        return version in self.loaded

    @property
    def fingerprint(self) -> str | None:
        return self.base.fingerprint if self.base else None

    def serves_base(self, fingerprint: str | None) -> bool:
        """Whether adapters of a base with `fingerprint` may go here (unknown on either side: yes)."""
        return compatible(fingerprint, self.fingerprint)


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
        self.placement = Placement()

    def healthy(self) -> list[EngineState]:
        return [e for e in self.engines.values() if e.healthy]

    def base_model(self) -> str | None:
        """The name the engines serve the base model under (the first healthy engine's)."""
        return next((e.base_model for e in self.healthy() if e.base_model), None)

    def bases(self) -> dict[str, BaseIdentity]:
        """The verified bases the healthy engines serve, by fingerprint."""
        return {e.base.fingerprint: e.base for e in self.healthy() if e.base is not None}

    def holders(self, version: str) -> list[EngineState]:
        return [e for e in self.healthy() if e.holds(version)]

    def pick(
        self, version: str | None, exclude: Sequence[str] = (), base: str | None = None
    ) -> EngineState | None:
        """A healthy engine holding `version` (None: the base model with fingerprint `base`, or any
        base), the least busy; ties in turn."""
        candidates = [
            e
            for e in self.healthy()
            if e.url not in exclude and (e.holds(version) if version is not None else e.serves_base(base))
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
            bases = [(m, parse_alias(str(m["id"]))) for m in models if not m.get("parent")]
            aliases = [found for _, found in bases if found is not None]
            base = next((m for m, found in bases if found is None), None)
            engine.base_model = str(base["id"]) if base else None
            engine.base = (
                aliases[0] if aliases else (_identity_of_folder(str(base.get("root"))) if base else None)
            )
            context = base.get("max_model_len") if base else None
            engine.max_model_len = context if isinstance(context, int) and context > 0 else None
            engine.loaded = {str(m["id"]): str(m.get("root")) for m in models if m.get("parent")}
            await self._read_metrics(engine)
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

    async def _read_metrics(self, engine: EngineState) -> None:
        """Adapter slots and queue from the engine's /metrics (vLLM's own); left as they were if absent."""
        try:
            response = await self.http.get(f"{engine.url}/metrics", timeout=5.0)
        except httpx.HTTPError:
            return
        if response.status_code != 200:
            return
        found = _samples(response.text, {_LORA_INFO, *_QUEUE})
        for labels, _ in found[_LORA_INFO]:
            with contextlib.suppress(KeyError, ValueError):
                engine.slots = int(labels["max_lora"])
        for name, attr in _QUEUE.items():
            if found[name]:
                setattr(engine, attr, round(sum(v for _, v in found[name])))

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

    def plan(self, wanted: Mapping[str, Wanted]) -> Placement:
        """Where each wanted version should be, on the healthy engines as last refreshed."""
        engines = [
            EngineSlots(e.url, e.fingerprint, e.slots or DEFAULT_SLOTS, frozenset(e.loaded))
            for e in self.healthy()
        ]
        return place(wanted, engines)

    async def reconcile(
        self, desired: Mapping[str, Path], unload: bool = True, wanted: Mapping[str, Wanted] | None = None
    ) -> ReconcileReport:
        """Make the healthy engines hold the `desired` versions (name -> adapter folder), each on the
        engines `wanted` places it on (its base, its spread; default: every engine, base unknown).

        With `unload`, also unload every adapter not placed on an engine. Only the one rollout
        controller unloads: a gateway replica that reads a routes file older than the controller's
        would otherwise unload a version the controller has just loaded.
        """
        report = ReconcileReport()
        async with self._lock:
            await self.refresh()
            wants = {name: (wanted or {}).get(name) or Wanted(None) for name in desired}
            self.placement = self.plan(wants)
            for version, reason in self.placement.unplaced.items():
                log.error("version %s is on no engine: %s", version, reason)
            for engine in self.healthy():
                client = AdapterClient(engine.url, self.http)
                mine = self.placement.on.get(engine.url, set())
                for name, path in desired.items():
                    if name not in mine:
                        continue
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
                for name in sorted(set(engine.loaded) - mine) if unload else ():
                    try:
                        await client.unload(name)
                    except (AdapterLoadError, EngineUnavailableError) as exc:
                        log.warning("%s", exc)
                        continue
                    engine.loaded.pop(name, None)
                    report.unloaded.append((engine.url, name))
                    log.info("unloaded adapter %s from %s", name, engine.url)
                for name in set(engine.failures) - mine:
                    del engine.failures[name]
        return report

    async def run(
        self,
        desired: Callable[[], Mapping[str, Path]],
        interval_s: float,
        unload: bool = True,
        wanted: Callable[[], Mapping[str, Wanted]] | None = None,
    ) -> None:
        """Reconcile every `interval_s` seconds until cancelled."""
        while True:
            try:
                await self.reconcile(desired(), unload=unload, wanted=wanted() if wanted else None)
            except Exception:
                log.exception("reconcile failed; trying again in %.0f s", interval_s)
            await asyncio.sleep(interval_s)

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "url": e.url,
                "healthy": e.healthy,
                "base_model": e.base_model,
                "base": e.base.model_dump() if e.base else None,
                "slots": e.slots,
                "running": e.running,
                "waiting": e.waiting,
                "adapters": sorted(e.loaded),
                "placed": sorted(self.placement.on.get(e.url, ())),
                "failures": {k: v.reason for k, v in e.failures.items()},
                "in_flight": e.in_flight,
                "last_error": e.last_error,
            }
            for e in self.engines.values()
        ]
