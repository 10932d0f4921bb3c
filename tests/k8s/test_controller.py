"""`lorafleet controller` and its ConfigMap store, through the real kubernetes client over HTTP.

No cluster and no API server run here. `FakeApiServer` is a fake of the remote API, for fault
isolation: a small HTTP server that speaks the two ConfigMap endpoints the controller uses (GET and
PATCH /api/v1/namespaces/NS/configmaps/NAME) the way kube-apiserver does where the store depends on
it: JSON merge patch only (other patch types get 415), the metadata.resourceVersion precondition
(409 Conflict with a Status body), a new resourceVersion on every write, 404 Status for a missing
object, 422 over 1 MiB, and bearer-token authentication (401).

What the in-memory fake of tests/router/test_k8s_store.py cannot show, and these tests do: that the
real client sends a JSON merge patch (its default content type for a dict body is a JSON Patch,
which a server refuses), carries the resourceVersion, and raises ApiExceptions with the statuses the
store maps; and that `lorafleet controller`, as a process, serves the admin API over either store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import config
from kubernetes.client import CoreV1Api

from lorafleet.registry import VersionInfo
from router.errors import RoutesFileError, StaleRevisionError
from router.k8s_store import HISTORY_KEY, ROUTES_KEY, STATE_KEY, ConfigMapStore
from router.policy import Route, RoutesFile
from router.store import FileStore, HistoryEvent, Progress, RolloutState, dump_routes
from tests.support import free_port

TOKEN = "fake-apiserver-token"
LIMIT = 1024 * 1024
LORAFLEET = Path(sys.executable).parent / "lorafleet"


class FakeApiServer:
    """ConfigMaps in memory behind kube-apiserver's HTTP semantics for GET and merge PATCH."""

    def __init__(self) -> None:
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self._rv = 1000
        self._lock = threading.RLock()
        self.before_patch: Callable[[], None] | None = None  # runs once, before the next patch applies
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def put(self, namespace: str, name: str, data: dict[str, str]) -> None:
        with self._lock:
            self._rv += 1
            self.configmaps[(namespace, name)] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self._rv)},
                "data": dict(data),
            }

    def data(self, namespace: str, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self.configmaps[(namespace, name)]["data"])

    def kubeconfig(self, path: Path, namespace: str = "lorafleet", token: str = TOKEN) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "ci", "user": {"token": token}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "ci", "namespace": namespace}}
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": code,
                    },
                )

            def _target(self) -> tuple[str, str] | None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "configmaps":
                    return parts[3], parts[5]
                return None

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._status(401, "Unauthorized", "Unauthorized")
                    return False
                return True

            def do_GET(self) -> None:
                server.requests.append(("GET", self.path, ""))
                target = self._target()
                if not self._authorized():
                    return
                with server._lock:
                    cm = server.configmaps.get(target) if target else None
                    body = json.loads(json.dumps(cm)) if cm else None
                if body is None:
                    self._status(404, "NotFound", f'configmaps "{target and target[1]}" not found')
                    return
                self._send(200, body)

            def do_PATCH(self) -> None:
                content_type = self.headers.get("Content-Type", "")
                server.requests.append(("PATCH", self.path, content_type))
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not self._authorized():
                    return
                target = self._target()
                if content_type != "application/merge-patch+json":
                    self._status(
                        415, "UnsupportedMediaType", f"the fake takes merge patches, not {content_type}"
                    )
                    return
                patch = json.loads(raw)
                if server.before_patch is not None:
                    hook, server.before_patch = server.before_patch, None
                    hook()
                with server._lock:
                    cm = server.configmaps.get(target) if target else None
                    if cm is None:
                        self._status(404, "NotFound", "configmap not found")
                        return
                    wanted = patch.get("metadata", {}).get("resourceVersion")
                    if wanted is not None and wanted != cm["metadata"]["resourceVersion"]:
                        self._status(
                            409,
                            "Conflict",
                            "Operation cannot be fulfilled on configmaps: the object has been modified; "
                            "please apply your changes to the latest version and try again",
                        )
                        return
                    data = dict(cm.get("data") or {})
                    for key, value in (patch.get("data") or {}).items():
                        if value is None:
                            data.pop(key, None)
                        else:
                            data[key] = value
                    if sum(len(k.encode()) + len(v.encode()) for k, v in data.items()) > LIMIT:
                        self._status(
                            422,
                            "Invalid",
                            "ConfigMap is invalid: []: Too long: must have at most 1048576 bytes",
                        )
                        return
                    server._rv += 1
                    cm["data"] = data
                    cm["metadata"]["resourceVersion"] = str(server._rv)
                    body = json.loads(json.dumps(cm))
                self._send(200, body)

        return Handler


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    try:
        yield server
    finally:
        server.stop()


NS, NAME = "lorafleet", "lorafleet-routes"
V1, V2 = "banking-v1-20261124", "banking-v2-20261125"


def store(server: FakeApiServer, tmp_path: Path, name: str = NAME, token: str = TOKEN) -> ConfigMapStore:
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", token=token)
    client = config.new_client_from_config(config_file=str(kubeconfig))
    return ConfigMapStore(name, NS, api=CoreV1Api(client))


def routes(stable: str) -> RoutesFile:
    return RoutesFile(routes={"banking": Route(stable=stable)})


def test_writes_are_merge_patches_with_the_resource_version(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.put(NS, NAME, {ROUTES_KEY: "revision: 0\nroutes: {}\n", "keep": "me"})
    s = store(apiserver, tmp_path)
    saved = s.save(routes(V1), expected_revision=0)
    s.save_state(RolloutState())
    s.append_history(HistoryEvent(at=_now(), route="banking", action="create", actor="ci"))
    data = apiserver.data(NS, NAME)
    assert data[ROUTES_KEY] == dump_routes(saved)
    assert data["keep"] == "me"  # a merge patch leaves other keys alone
    assert set(data) == {ROUTES_KEY, STATE_KEY, HISTORY_KEY, "keep"}
    patches = [r for r in apiserver.requests if r[0] == "PATCH"]
    assert len(patches) == 3
    assert all(ct == "application/merge-patch+json" for _, _, ct in patches)
    assert all("fieldManager=lorafleet-controller" in path for _, path, _ in patches)
    assert s.load() == saved and s.history()[0].action == "create"


def _now() -> dt.datetime:
    return dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def test_a_409_from_the_server_is_a_stale_revision(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.put(NS, NAME, {ROUTES_KEY: "revision: 0\nroutes: {}\n"})
    s = store(apiserver, tmp_path)
    s.save(routes(V1), expected_revision=0)
    other = dump_routes(routes(V2).model_copy(update={"revision": 2}))
    apiserver.before_patch = lambda: apiserver.put(NS, NAME, {ROUTES_KEY: other})
    with pytest.raises(StaleRevisionError) as err:
        s.save(routes(V2), expected_revision=1)
    assert (err.value.expected, err.value.current) == (1, 2)
    assert apiserver.data(NS, NAME)[ROUTES_KEY] == other


def test_a_409_caused_by_a_state_write_is_retried(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.put(NS, NAME, {ROUTES_KEY: "revision: 0\nroutes: {}\n"})
    s = store(apiserver, tmp_path)
    state = RolloutState(routes={"banking": Progress(version=V2, step_started_at=_now())})

    def controller_loop_writes_state() -> None:
        apiserver.put(NS, NAME, {**apiserver.data(NS, NAME), STATE_KEY: state.model_dump_json()})

    apiserver.before_patch = controller_loop_writes_state
    assert s.save(routes(V1), expected_revision=0).revision == 1
    assert s.load_state() == state


def test_missing_configmap_and_bad_credentials(apiserver: FakeApiServer, tmp_path: Path) -> None:
    with pytest.raises(RoutesFileError, match="configmap lorafleet/nope does not exist"):
        store(apiserver, tmp_path, "nope").load()
    apiserver.put(NS, NAME, {})
    with pytest.raises(RoutesFileError) as err:
        store(apiserver, tmp_path, token="wrong").load()
    assert err.value.message == "not allowed to get configmap lorafleet/lorafleet-routes: Unauthorized"
    assert err.value.hint is not None and "controller-rbac.yaml" in err.value.hint


def test_an_unreachable_api_server(apiserver: FakeApiServer, tmp_path: Path) -> None:
    s = store(apiserver, tmp_path)
    apiserver.stop()
    with pytest.raises(RoutesFileError, match="cannot reach the Kubernetes API server"):
        s.load()
    assert s.fingerprint() is None


# --- `lorafleet controller`, as a process --------------------------------------------------------

ADMIN_TOKEN = "controller-admin-token"


def make_registry(root: Path) -> Path:
    """A registry holding two versions (their adapter files are not weights: no engine loads them here)."""
    for number, name in enumerate((V1, V2), start=1):
        folder = root / name
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
        info = VersionInfo(
            name=name,
            task="banking",
            number=number,
            created_at=_now(),
            base_model="base",
            adapter_sha256="0" * 64,
            lora_rank=8,
        )
        (folder / "version.json").write_text(info.model_dump_json())
    return root


@contextlib.contextmanager
def controller(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`lorafleet controller ARGS` on a free port, until it answers /health; its URL."""
    port = free_port()
    token = tmp_path / "admin.token"
    token.write_text(ADMIN_TOKEN + "\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LORAFLEET_", "KUBERNETES_"))}
    proc = subprocess.Popen(
        [
            LORAFLEET,
            "controller",
            *args,
            f"--registry={make_registry(tmp_path / 'registry')}",
            f"--engine=http://127.0.0.1:{free_port()}",  # no engine there: the reconcile loop copes
            f"--port={port}",
            "--host=127.0.0.1",
            f"--admin-token-file={token}",
            f"--state-dir={tmp_path / 'state'}",
            "--interval-s=0.2",
        ],
        env={**clean, "LORAFLEET_HOME": str(tmp_path / "home"), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"lorafleet controller exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("lorafleet controller did not answer /health within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Lorafleet-Actor": "ci"}
    return httpx.request(method, f"{url}/admin{path}", json=body, headers=headers, timeout=30)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


def test_the_controller_serves_the_admin_api_over_a_routes_file(tmp_path: Path) -> None:
    routes_file = tmp_path / "routes" / "routes.yaml"
    with controller(tmp_path, f"--routes={routes_file}") as url:
        assert httpx.get(f"{url}/admin/status", timeout=10).status_code == 401
        created = admin(url, "POST", "/routes/banking", {"stable": V1})
        assert created.status_code == 200, created.text
        assert created.json()["revision"] == 1
        weights = admin(url, "POST", "/routes/banking/weights", {"weights": {V2: 10}, "revision": 1})
        assert weights.status_code == 200, weights.text
        stale = admin(url, "POST", "/routes/banking/weights", {"weights": {V2: 20}, "revision": 1})
        assert stale.status_code == 409
        status = admin(url, "GET", "/status").json()
        assert status["revision"] == 2
        assert status["routes"]["banking"]["stable"] == V1
        metrics = httpx.get(f"{url}/metrics", timeout=10)
        assert 'lorafleet_rollout_events_total{action="create",route="banking"} 1.0' in metrics.text
    saved = FileStore(routes_file)
    assert saved.load().revision == 2
    assert [e.action for e in saved.history()] == ["create", "set_weight"]


def test_the_controller_keeps_routes_in_a_configmap_through_the_api(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.put(NS, NAME, {ROUTES_KEY: "revision: 0\nroutes: {}\n"})
    kubeconfig = apiserver.kubeconfig(tmp_path / "kubeconfig")
    args = (f"--routes-configmap={NAME}", f"--namespace={NS}")
    with controller(tmp_path, *args, env={"KUBECONFIG": str(kubeconfig)}) as url:
        created = admin(url, "POST", "/routes/banking", {"stable": V1, "reason": "first"})
        assert created.status_code == 200, created.text
        data = apiserver.data(NS, NAME)
        routes = yaml.safe_load(data[ROUTES_KEY])
        assert routes["revision"] == 1 and routes["routes"]["banking"]["stable"] == V1
        (event,) = [json.loads(line) for line in data[HISTORY_KEY].splitlines()]
        assert (event["action"], event["actor"], event["revision"]) == ("create", "ci", 1)
        # An operator applies a new routes.yaml (GitOps): the controller picks it up by itself.
        edited = dump_routes(RoutesFile(revision=7, routes={"banking": Route(stable=V2)}))
        apiserver.put(NS, NAME, {**apiserver.data(NS, NAME), ROUTES_KEY: edited})
        wait_for(lambda: admin(url, "GET", "/routes").json()["revision"] == 7, "the controller to reload")
        assert admin(url, "GET", "/history").json()["events"][0]["action"] == "create"
    patches = [ct for method, _, ct in apiserver.requests if method == "PATCH"]
    assert patches and set(patches) == {"application/merge-patch+json"}


def test_a_missing_configmap_stops_the_controller_with_one_line(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    kubeconfig = apiserver.kubeconfig(tmp_path / "kubeconfig")
    proc = subprocess.run(
        [
            LORAFLEET,
            "controller",
            "--routes-configmap=nope",
            "--namespace=lorafleet",
            f"--state-dir={tmp_path}",
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "LORAFLEET_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "error: configmap lorafleet/nope does not exist" in proc.stderr
    assert "hint: apply the manifests" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_routes_file_and_configmap_are_exclusive(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            LORAFLEET,
            "controller",
            "--routes-configmap=x",
            f"--routes={tmp_path / 'r.yaml'}",
            f"--state-dir={tmp_path}",
        ],
        env={**os.environ, "LORAFLEET_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "error: give --routes FILE or --routes-configmap NAME, not both" in proc.stderr
