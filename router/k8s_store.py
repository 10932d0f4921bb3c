"""The routes, the rollout progress and the change history in one Kubernetes ConfigMap.

`ConfigMapStore` is the cluster's RouteStore (router/store.py): the rollout controller (`lorafleet
controller`, one replica) writes it through the Kubernetes API; every gateway replica mounts the same
ConfigMap as a folder and reads it with FileStore, because the keys are named like FileStore's files:

    data:
      routes.yaml             RoutesFile, the very text FileStore writes
      routes.state.json       RolloutState: canary progress, so a restarted controller resumes
      routes.history.jsonl    the last `max_history_events` events (and at most `max_history_bytes`)

Optimistic concurrency at two levels. Every write is a JSON merge patch that carries the
`metadata.resourceVersion` it was computed from, so the API server refuses it (409 Conflict) when the
ConfigMap changed since. `save(routes, expected_revision)` also checks the routes' own `revision`, as
FileStore does. A 409 on `save` re-reads: if routes.yaml changed, StaleRevisionError; if only the
state or the history moved (the controller's own loop, in another thread), it retries on the fresh
object. State and history writes retry on 409 too, a few times.

Why the history is bounded: a ConfigMap holds at most 1 MiB (etcd's object limit), so it keeps the
newest events only, trimmed oldest first; FileStore's history file on one machine keeps everything.

No API server runs in lorafleet's CI. The store stays thin (read, merge patch, map errors); its
tests use a fake CoreV1Api that keeps one ConfigMap in memory and enforces resourceVersion, and the
real `kubernetes` client against a fake HTTP API server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from router.errors import RoutesFileError, StaleRevisionError
from router.policy import RoutesFile
from router.store import HistoryEvent, RolloutState, dump_routes, parse_routes

ROUTES_KEY = "routes.yaml"
STATE_KEY = "routes.state.json"
HISTORY_KEY = "routes.history.jsonl"
MAX_CONFIGMAP_BYTES = 1024 * 1024  # the API server's limit on a ConfigMap's data
MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "lorafleet-controller"
_TIMEOUT_S = (5.0, 15.0)  # connect, read: a hung API server must not hang the controller
_RBAC_HINT = (
    "the controller's ServiceAccount needs get and patch on this ConfigMap (k8s/base/controller-rbac.yaml)"
)


class CoreV1ConfigMapApi(Protocol):
    """The two calls of kubernetes.client.CoreV1Api this store makes."""

    def read_namespaced_config_map(self, name: str, namespace: str, **kwargs: Any) -> Any: ...
    def patch_namespaced_config_map(self, name: str, namespace: str, body: Any, **kwargs: Any) -> Any: ...


class _Conflict(Exception):
    """The ConfigMap changed since it was read (409); callers re-read and decide."""


def default_api() -> CoreV1ConfigMapApi:
    """A CoreV1Api from the pod's service account, else from the local kubeconfig ($KUBECONFIG)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise RoutesFileError(
                f"no Kubernetes credentials: not in a pod, and no usable kubeconfig ({exc})",
                hint="run the controller in the cluster, or set KUBECONFIG; or use --routes FILE",
            ) from None
    api: CoreV1ConfigMapApi = client.CoreV1Api()
    return api


class ConfigMapStore:
    """Routes, rollout state and a bounded history in the ConfigMap `namespace/name`."""

    def __init__(
        self,
        name: str,
        namespace: str,
        api: CoreV1ConfigMapApi | None = None,
        *,
        max_history_events: int = 500,
        max_history_bytes: int = 256 * 1024,
        retries: int = 5,
    ) -> None:
        if max_history_events < 1 or max_history_bytes < 1 or retries < 1:
            raise ValueError("max_history_events, max_history_bytes and retries must be positive")
        self.name = name
        self.namespace = namespace
        self.api = api if api is not None else default_api()
        self.max_history_events = max_history_events
        self.max_history_bytes = max_history_bytes
        self.retries = retries

    def __repr__(self) -> str:
        return f"ConfigMapStore({self.name!r}, namespace={self.namespace!r})"

    @property
    def _where(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    # --- the API, and its errors mapped once --------------------------------------------------

    def _api_error(self, verb: str, exc: ApiException) -> RoutesFileError:
        status = exc.status
        if status == 404:
            return RoutesFileError(
                f"{self._where} does not exist",
                hint="apply the manifests (kubectl apply -k k8s/overlays/<name>) or create it with "
                f"`kubectl create configmap {self.name} -n {self.namespace}`",
            )
        if status in (401, 403):
            return RoutesFileError(f"not allowed to {verb} {self._where}: {exc.reason}", hint=_RBAC_HINT)
        if status in (413, 422):
            return RoutesFileError(
                f"the API server refused to {verb} {self._where} ({status} {exc.reason}): {exc.body or ''}".strip(),
                hint="a ConfigMap holds at most 1 MiB; lower --max-history-events",
            )
        return RoutesFileError(f"Kubernetes API error on {verb} {self._where}: {status} {exc.reason}")

    def _read(self) -> tuple[dict[str, str], str]:
        """The ConfigMap's data and resourceVersion."""
        try:
            cm = self.api.read_namespaced_config_map(self.name, self.namespace, _request_timeout=_TIMEOUT_S)
        except ApiException as exc:
            raise self._api_error("get", exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RoutesFileError(
                f"cannot reach the Kubernetes API server to read {self._where}: {exc}"
            ) from None
        return dict(cm.data or {}), str(cm.metadata.resource_version)

    def _patch(self, current: dict[str, str], changes: dict[str, str], resource_version: str) -> None:
        """Merge `changes` into the data if the ConfigMap is still at `resource_version`, else _Conflict."""
        merged = {**current, **changes}
        size = sum(len(k.encode()) + len(v.encode()) for k, v in merged.items())
        if size > MAX_CONFIGMAP_BYTES:
            raise RoutesFileError(
                f"{self._where} would hold {size:,} bytes, over the 1 MiB a ConfigMap may hold",
                hint="fewer routes per ConfigMap, or a lower --max-history-events",
            )
        body = {"metadata": {"resourceVersion": resource_version}, "data": changes}
        try:
            # Without _content_type the client would send a dict as a JSON *Patch* (its first choice).
            self.api.patch_namespaced_config_map(
                self.name,
                self.namespace,
                body,
                _content_type=MERGE_PATCH,
                field_manager=FIELD_MANAGER,
                _request_timeout=_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise _Conflict from None
            raise self._api_error("patch", exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RoutesFileError(
                f"cannot reach the Kubernetes API server to patch {self._where}: {exc}"
            ) from None

    def _routes_in(self, data: dict[str, str]) -> RoutesFile:
        return parse_routes(data.get(ROUTES_KEY, ""), f"{self._where} key {ROUTES_KEY}")

    # --- RouteStore ----------------------------------------------------------------------------

    def load(self) -> RoutesFile:
        data, _ = self._read()
        return self._routes_in(data)

    def fingerprint(self) -> str | None:
        """The resourceVersion: changes on every write. None while the API cannot be read (the
        reload that follows then reports why, once)."""
        try:
            return self._read()[1]
        except RoutesFileError:
            return None

    def save(self, routes: RoutesFile, expected_revision: int) -> RoutesFile:
        """Write `routes` as revision expected+1, if the ConfigMap's routes are still at `expected_revision`."""
        basis: str | None = None
        current = expected_revision
        for _ in range(self.retries):
            data, version = self._read()
            text = data.get(ROUTES_KEY, "")
            current = self._routes_in(data).revision
            if current != expected_revision or (basis is not None and text != basis):
                # Someone else wrote the routes (perhaps without bumping the revision: kubectl apply).
                raise StaleRevisionError(expected_revision, current)
            basis = text
            new = routes.model_copy(update={"revision": expected_revision + 1})
            try:
                self._patch(data, {ROUTES_KEY: dump_routes(new)}, version)
            except _Conflict:
                continue  # re-read: only a stale routes.yaml is a stale revision
            return new
        raise StaleRevisionError(expected_revision, current)

    def _update(self, key: str, change: Callable[[dict[str, str]], str]) -> None:
        """Read, compute the key's new text with `change(data)`, patch; again on a conflict."""
        for _ in range(self.retries):
            data, version = self._read()
            try:
                self._patch(data, {key: change(data)}, version)
            except _Conflict:
                continue
            return
        raise RoutesFileError(
            f"{self._where} kept changing under {self.retries} attempts to write {key}; try again"
        )

    def load_state(self) -> RolloutState:
        data, _ = self._read()
        text = data.get(STATE_KEY)
        if not text:
            return RolloutState()
        try:
            return RolloutState.model_validate_json(text)
        except (ValidationError, ValueError) as exc:
            raise RoutesFileError(f"{self._where} key {STATE_KEY}: invalid rollout state: {exc}") from None

    def save_state(self, state: RolloutState) -> None:
        text = state.model_dump_json(indent=2) + "\n"
        self._update(STATE_KEY, lambda _: text)

    def append_history(self, event: HistoryEvent) -> None:
        line = event.model_dump_json() + "\n"
        self._update(HISTORY_KEY, lambda data: self._bounded(data.get(HISTORY_KEY, "") + line))

    def _bounded(self, text: str) -> str:
        """The newest events that fit both bounds (the newest one always stays)."""
        lines = [line + "\n" for line in text.splitlines() if line.strip()]
        lines = lines[-self.max_history_events :]
        size = sum(len(line.encode()) for line in lines)
        while len(lines) > 1 and size > self.max_history_bytes:
            size -= len(lines.pop(0).encode())
        return "".join(lines)

    def history(self, route: str | None = None, limit: int = 50) -> list[HistoryEvent]:
        data, _ = self._read()
        events = []
        for line in data.get(HISTORY_KEY, "").splitlines():
            if not line.strip():
                continue
            try:
                event = HistoryEvent.model_validate(json.loads(line))
            except (ValueError, ValidationError):
                continue  # a hand-edited or truncated line: skip it, as FileStore does
            if route is None or event.route == route:
                events.append(event)
        return events[-limit:] if limit else events
