"""Where the routes, the rollout progress and the change history live, behind one small interface.

The routes file is the one source of truth for routing: every gateway replica reads it. Changes are
written whole and atomically (temporary file, fsync, rename, fsync of the folder), under optimistic
concurrency: a write names the revision it was based on and is refused with StaleRevisionError when
the file has moved on. A crash at any point leaves either the old file or the new one, never a mix.

    routes.yaml             RoutesFile (router/policy.py)
    routes.state.json       RolloutState: canary progress, so a restarted controller resumes
    routes.history.jsonl    append-only: who, when, which route, from, to, why
    routes.lock             flock held while a write checks the revision and renames

`FileStore` is the store on one machine (or on a shared volume). The cluster store keeps the same
three documents in a Kubernetes ConfigMap (router/k8s_store.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, Field, ValidationError

from lorafleet.errors import describe_validation_error
from router.errors import RoutesFileError, StaleRevisionError
from router.policy import RoutesFile

log = logging.getLogger("lorafleet.router")


class Progress(BaseModel):
    """Where one route's canary stands."""

    version: str
    step: int = 0
    step_started_at: dt.datetime
    paused: bool = False
    pause_reason: str | None = None
    failures: int = 0
    inconclusive: int = 0
    evaluated_at: dt.datetime | None = None
    last_decision: dict[str, Any] | None = None


class RolloutState(BaseModel):
    routes: dict[str, Progress] = Field(default_factory=dict)


class HistoryEvent(BaseModel):
    at: dt.datetime
    route: str
    action: str
    actor: str
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""
    revision: int = 0


class RouteStore(Protocol):
    def load(self) -> RoutesFile: ...
    def fingerprint(self) -> str | None: ...
    def save(self, routes: RoutesFile, expected_revision: int) -> RoutesFile: ...
    def load_state(self) -> RolloutState: ...
    def save_state(self, state: RolloutState) -> None: ...
    def append_history(self, event: HistoryEvent) -> None: ...
    def history(self, route: str | None = None, limit: int = 50) -> list[HistoryEvent]: ...


def parse_routes(text: str, source: str) -> RoutesFile:
    """A RoutesFile from YAML text; errors name the file and the field."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise RoutesFileError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RoutesFileError(f"{source}: expected a mapping with 'routes', got {type(data).__name__}")
    try:
        return RoutesFile.model_validate(data)
    except ValidationError as exc:
        raise RoutesFileError(
            describe_validation_error(exc, source), hint="see docs/configuration.md#routes-file"
        ) from None


def check_routes(store: RouteStore) -> RoutesFile:
    """The routes at start-up: an invalid file raises RoutesFileError (naming the field); a missing
    or empty one is logged, since every request would get 404 until routes are created."""
    routes = store.load()
    if store.fingerprint() is None:
        log.warning(
            "%r holds no routes file: every request gets 404 until one is written or a route is created "
            "(`lorafleet route create`)",
            store,
        )
    elif not routes.routes:
        log.warning("%s names no routes: every request gets 404 until a route is added", store)
    return routes


def dump_routes(routes: RoutesFile) -> str:
    data = routes.model_dump(mode="json", exclude_none=True)
    header = "# lorafleet routes. Edit by hand or with `lorafleet route ...`; revision bumps on every admin write.\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def atomic_write(path: Path, data: str) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees the old content or the new, whole.

    The file keeps its mode (a new one is 0644), not mkstemp's 0600: other readers may need it.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileStore:
    """The routes file and its companions in one folder."""

    def __init__(self, routes_file: Path) -> None:
        self.path = Path(routes_file)
        stem = self.path.with_suffix("")
        self.state_path = stem.with_name(stem.name + ".state.json")
        self.history_path = stem.with_name(stem.name + ".history.jsonl")
        self.lock_path = stem.with_name(stem.name + ".lock")

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    def load(self) -> RoutesFile:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return RoutesFile()
        except (OSError, UnicodeDecodeError) as exc:
            raise RoutesFileError(f"{self.path}: cannot read: {exc}") from None
        return parse_routes(text, str(self.path))

    def fingerprint(self) -> str | None:
        """Changes whenever the file is replaced or rewritten (also through a ConfigMap's symlinks)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def save(self, routes: RoutesFile, expected_revision: int) -> RoutesFile:
        """Write `routes` as revision expected+1, if the file is still at `expected_revision`."""
        with self._locked():
            current = self.load().revision
            if current != expected_revision:
                raise StaleRevisionError(expected_revision, current)
            new = routes.model_copy(update={"revision": expected_revision + 1})
            atomic_write(self.path, dump_routes(new))
            return new

    def load_state(self) -> RolloutState:
        try:
            return RolloutState.model_validate_json(self.state_path.read_text())
        except FileNotFoundError:
            return RolloutState()
        except (ValidationError, ValueError) as exc:
            raise RoutesFileError(f"{self.state_path}: invalid rollout state: {exc}") from None

    def save_state(self, state: RolloutState) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path, state.model_dump_json(indent=2) + "\n")

    def append_history(self, event: HistoryEvent) -> None:
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        line = event.model_dump_json() + "\n"
        fd = os.open(self.history_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def history(self, route: str | None = None, limit: int = 50) -> list[HistoryEvent]:
        try:
            lines = self.history_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                event = HistoryEvent.model_validate(json.loads(line))
            except (ValueError, ValidationError):
                continue  # a torn last line from a crash mid-append
            if route is None or event.route == route:
                events.append(event)
        return events[-limit:] if limit else events
