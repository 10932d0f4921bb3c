"""ConfigMapStore: serialisation, resourceVersion and revision conflicts, the bounded history, errors.

No API server runs here. `FakeCoreV1Api` is a fake of the remote API (fault isolation, not a mock of
our code): it keeps ConfigMaps in memory and behaves like the API server where the store depends on
it: a JSON merge patch applied to `data` (null deletes a key), the `metadata.resourceVersion`
precondition (409 Conflict), a new resourceVersion on every write, 404 for a missing object, 422
over 1 MiB, and 400 for a body the server would not take as a merge patch. Hooks inject concurrent
writers and failures. tests/k8s/ drives the real kubernetes client over HTTP against a fake server.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import urllib3.exceptions
import yaml
from kubernetes.client import V1ConfigMap, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from lorafleet.registry import Registry
from router.errors import RoutesFileError, StaleRevisionError
from router.k8s_store import HISTORY_KEY, MERGE_PATCH, ROUTES_KEY, STATE_KEY, ConfigMapStore
from router.policy import Route, RoutesFile
from router.rollout import Rollouts
from router.store import FileStore, HistoryEvent, Progress, RolloutState, dump_routes

ROOT = Path(__file__).resolve().parents[2]
NAME, NS = "lorafleet-routes", "lorafleet"
V1, V2, V3 = "banking-v1-20261124", "banking-v2-20261125", "banking-v3-20261126"
T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


class FakeCoreV1Api:
    """A fake of the Kubernetes API server's ConfigMap endpoints (get and patch), in memory."""

    LIMIT = 1024 * 1024

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], V1ConfigMap] = {}
        self._rv = 100
        self.verbs: list[str] = []
        self.before_patch: Callable[[], None] | None = None  # runs between a read and the patch
        self.fail: ApiException | Exception | None = None  # raised by the next call

    def create(self, name: str, namespace: str, data: dict[str, str] | None = None) -> None:
        self._rv += 1
        self.objects[(namespace, name)] = V1ConfigMap(
            metadata=V1ObjectMeta(name=name, namespace=namespace, resource_version=str(self._rv)),
            data=dict(data or {}),
        )

    def write(self, name: str, namespace: str, **changes: str) -> None:
        """Another client (kubectl apply, a second controller) changes keys: a new resourceVersion."""
        cm = self.objects[(namespace, name)]
        self._rv += 1
        cm.data = {**(cm.data or {}), **changes}
        cm.metadata.resource_version = str(self._rv)

    def _injected(self) -> None:
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail

    def _get(self, name: str, namespace: str) -> V1ConfigMap:
        try:
            return self.objects[(namespace, name)]
        except KeyError:
            raise ApiException(status=404, reason="Not Found") from None

    def read_namespaced_config_map(self, name: str, namespace: str, **kwargs: Any) -> V1ConfigMap:
        self.verbs.append("get")
        self._injected()
        return copy.deepcopy(self._get(name, namespace))

    def patch_namespaced_config_map(self, name: str, namespace: str, body: Any, **kwargs: Any) -> V1ConfigMap:
        self.verbs.append("patch")
        if self.before_patch is not None:
            hook, self.before_patch = self.before_patch, None
            hook()
        self._injected()
        if kwargs.get("_content_type") != MERGE_PATCH or not isinstance(body, dict):
            raise ApiException(status=400, reason="Bad Request")  # a dict sent as a JSON Patch
        cm = self._get(name, namespace)
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != cm.metadata.resource_version:
            raise ApiException(status=409, reason="Conflict")
        data = dict(cm.data or {})
        for key, value in body.get("data", {}).items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        if sum(len(k.encode()) + len(v.encode()) for k, v in data.items()) > self.LIMIT:
            raise ApiException(status=422, reason="Unprocessable Entity")
        self._rv += 1
        cm.data = data
        cm.metadata.resource_version = str(self._rv)
        return copy.deepcopy(cm)

    def data(self, name: str = NAME, namespace: str = NS) -> dict[str, str]:
        return dict(self._get(name, namespace).data or {})


@pytest.fixture
def api() -> FakeCoreV1Api:
    fake = FakeCoreV1Api()
    fake.create(NAME, NS, {ROUTES_KEY: "revision: 0\nroutes: {}\n"})
    return fake


def store(api: FakeCoreV1Api, **kwargs: Any) -> ConfigMapStore:
    return ConfigMapStore(NAME, NS, api=api, **kwargs)


def routes(stable: str = V1, **route: Any) -> RoutesFile:
    return RoutesFile(routes={"banking": Route(stable=stable, **route)})


def event(i: int, route: str = "banking") -> HistoryEvent:
    return HistoryEvent(
        at=T0 + dt.timedelta(minutes=i), route=route, action="set_weights", actor="ci", revision=i
    )


def test_routes_round_trip_in_the_text_filestore_writes(api: FakeCoreV1Api) -> None:
    s = store(api)
    assert s.load() == RoutesFile()
    saved = s.save(routes(weights={V2: 10}), expected_revision=0)
    assert saved.revision == 1
    assert s.load() == saved
    assert api.data()[ROUTES_KEY] == dump_routes(saved)
    assert s.save(routes(V2), expected_revision=1).revision == 2


def test_a_gateway_reading_the_mounted_configmap_sees_what_the_controller_wrote(
    api: FakeCoreV1Api, tmp_path: Path
) -> None:
    s = store(api)
    saved = s.save(routes(weights={V2: 25}), expected_revision=0)
    state = RolloutState(routes={"banking": Progress(version=V2, step=2, step_started_at=T0)})
    s.save_state(state)
    s.append_history(event(1))
    # kubelet projects each key of a ConfigMap volume as a file of that name in the mount folder.
    for key, text in api.data().items():
        (tmp_path / key).write_text(text)
    mounted = FileStore(tmp_path / ROUTES_KEY)
    assert mounted.load() == saved
    assert mounted.load_state() == state
    assert mounted.history() == [event(1)]


def test_a_stale_revision_is_refused_and_nothing_is_written(api: FakeCoreV1Api) -> None:
    s = store(api)
    s.save(routes(), expected_revision=0)
    before = api.data()
    with pytest.raises(StaleRevisionError) as err:
        s.save(routes(V2), expected_revision=0)
    assert (err.value.expected, err.value.current, err.value.status) == (0, 1, 409)
    assert api.data() == before


def test_a_409_after_another_writer_changed_the_routes_is_a_stale_revision(api: FakeCoreV1Api) -> None:
    s = store(api)
    s.save(routes(), expected_revision=0)
    other = dump_routes(routes(V3).model_copy(update={"revision": 2}))
    api.before_patch = lambda: api.write(NAME, NS, **{ROUTES_KEY: other})
    with pytest.raises(StaleRevisionError) as err:
        s.save(routes(V2), expected_revision=1)
    assert (err.value.expected, err.value.current) == (1, 2)
    assert api.data()[ROUTES_KEY] == other  # the other writer's change stands


def test_a_routes_edit_that_kept_the_revision_is_still_caught(api: FakeCoreV1Api) -> None:
    s = store(api)
    s.save(routes(), expected_revision=0)
    # kubectl apply of a hand-edited routes.yaml that forgot to bump `revision`
    edited = dump_routes(routes(V3).model_copy(update={"revision": 1}))
    api.before_patch = lambda: api.write(NAME, NS, **{ROUTES_KEY: edited})
    with pytest.raises(StaleRevisionError):
        s.save(routes(V2), expected_revision=1)
    assert api.data()[ROUTES_KEY] == edited


def test_a_409_from_a_state_write_alone_is_retried_and_keeps_both_writes(api: FakeCoreV1Api) -> None:
    s = store(api)
    s.save(routes(), expected_revision=0)
    state = RolloutState(routes={"banking": Progress(version=V2, step_started_at=T0)})
    api.before_patch = lambda: api.write(NAME, NS, **{STATE_KEY: state.model_dump_json()})
    saved = s.save(routes(V2), expected_revision=1)
    assert saved.revision == 2
    assert s.load() == saved
    assert s.load_state() == state
    assert api.verbs.count("patch") == 3  # the first save, the refused patch, the retry


def test_conflicts_that_never_stop_end_in_an_error(api: FakeCoreV1Api) -> None:
    s = store(api, retries=3)

    def keep_writing() -> None:
        api.write(NAME, NS, **{"other": str(len(api.verbs))})
        api.before_patch = keep_writing

    api.before_patch = keep_writing
    with pytest.raises(StaleRevisionError):
        s.save(routes(), expected_revision=0)
    api.before_patch = keep_writing
    with pytest.raises(RoutesFileError, match=r"kept changing under 3 attempts to write routes\.state\.json"):
        s.save_state(RolloutState())
    api.before_patch = None


def test_state_round_trip_and_invalid_state(api: FakeCoreV1Api) -> None:
    s = store(api)
    assert s.load_state() == RolloutState()
    state = RolloutState(
        routes={"banking": Progress(version=V2, step=3, step_started_at=T0, paused=True, pause_reason="gate")}
    )
    s.save_state(state)
    assert s.load_state() == state
    assert json.loads(api.data()[STATE_KEY])["routes"]["banking"]["step"] == 3
    api.write(NAME, NS, **{STATE_KEY: "{not json"})
    with pytest.raises(RoutesFileError, match=r"routes\.state\.json: invalid rollout state"):
        s.load_state()


def test_history_keeps_the_newest_events_within_both_bounds(api: FakeCoreV1Api) -> None:
    s = store(api, max_history_events=10)
    for i in range(25):
        s.append_history(event(i, route="banking" if i % 2 else "support"))
    kept = s.history(limit=0)
    assert [e.revision for e in kept] == list(range(15, 25))
    assert len(api.data()[HISTORY_KEY].splitlines()) == 10
    assert [e.revision for e in s.history("banking", limit=3)] == [19, 21, 23]
    one = len(event(0).model_dump_json()) + 1
    by_size = store(api, max_history_bytes=3 * one + 5)
    by_size.append_history(event(99))
    assert [e.revision for e in by_size.history(limit=0)] == [23, 24, 99]
    assert len(api.data()[HISTORY_KEY].encode()) <= 3 * one + 5


def test_history_skips_lines_it_cannot_read(api: FakeCoreV1Api) -> None:
    s = store(api)
    s.append_history(event(1))
    api.write(NAME, NS, **{HISTORY_KEY: api.data()[HISTORY_KEY] + '{"route": "torn\n\n'})
    s.append_history(event(2))
    assert [e.revision for e in s.history()] == [1, 2]


def test_fingerprint_moves_on_every_write_only(api: FakeCoreV1Api) -> None:
    s = store(api)
    first = s.fingerprint()
    assert first is not None and s.fingerprint() == first
    s.save_state(RolloutState())
    assert s.fingerprint() not in (None, first)


def test_a_missing_configmap_says_how_to_create_it(api: FakeCoreV1Api) -> None:
    s = ConfigMapStore("nope", NS, api=api)
    with pytest.raises(RoutesFileError) as err:
        s.load()
    assert err.value.message == "configmap lorafleet/nope does not exist"
    assert err.value.hint is not None and "kubectl create configmap nope -n lorafleet" in err.value.hint
    assert s.fingerprint() is None  # the gateway's reload then reports the error, once


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            ApiException(status=403, reason="Forbidden"),
            "not allowed to patch configmap lorafleet/lorafleet-routes",
        ),
        (ApiException(status=422, reason="Unprocessable Entity"), "refused to patch"),
        (ApiException(status=500, reason="Internal Server Error"), "Kubernetes API error on patch"),
        (urllib3.exceptions.ProtocolError("Connection aborted."), "cannot reach the Kubernetes API server"),
    ],
)
def test_api_failures_become_routes_file_errors(api: FakeCoreV1Api, fault: Exception, message: str) -> None:
    s = store(api)
    api.before_patch = lambda: setattr(api, "fail", fault)
    with pytest.raises(RoutesFileError, match=message):
        s.save(routes(), expected_revision=0)
    assert s.load() == RoutesFile()  # nothing written


def test_forbidden_read_points_at_the_role(api: FakeCoreV1Api) -> None:
    api.fail = ApiException(status=403, reason="Forbidden")
    with pytest.raises(RoutesFileError) as err:
        store(api).load()
    assert err.value.hint is not None and "controller-rbac.yaml" in err.value.hint


def test_more_than_a_configmap_can_hold_is_refused_before_the_api_is_asked(api: FakeCoreV1Api) -> None:
    s = store(api)
    api.write(NAME, NS, padding="x" * (1024 * 1024 - 2000))
    big = RoutesFile(routes={f"r{i}": Route(stable=f"banking-v{i + 1}-20261124") for i in range(200)})
    patches = api.verbs.count("patch")
    with pytest.raises(RoutesFileError, match="over the 1 MiB a ConfigMap may hold"):
        s.save(big, expected_revision=0)
    assert api.verbs.count("patch") == patches


def _registry(tmp_path: Path) -> Registry:
    for name in (V1, V2):
        (tmp_path / name).mkdir()
        (tmp_path / name / "version.json").write_text("{}")
    return Registry(tmp_path)


def test_rollouts_run_on_the_configmap_store(api: FakeCoreV1Api, tmp_path: Path) -> None:
    s = store(api)
    rollouts = Rollouts(s, _registry(tmp_path), clock=lambda: T0)
    rollouts.create("banking", V1, None, "alice")
    rollouts.set_weights("banking", {V2: 20}, "bob", "try v2")
    with pytest.raises(StaleRevisionError):
        rollouts.set_weights("banking", {V2: 30}, "carol", expected_revision=1)
    loaded = s.load()
    assert loaded.revision == 2 and loaded.routes["banking"].weights == {V2: 20}
    assert [(e.action, e.actor, e.revision) for e in s.history()] == [
        ("create", "alice", 1),
        ("set_weight", "bob", 2),
    ]


def test_the_role_grants_exactly_what_the_store_uses(api: FakeCoreV1Api) -> None:
    s = store(api)
    s.save(routes(), 0)
    s.save_state(RolloutState())
    s.append_history(event(1))
    s.history()
    s.fingerprint()
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "base" / "controller-rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (rule,) = role["rules"]
    assert rule["resources"] == ["configmaps"] and rule["apiGroups"] == [""]
    assert rule["resourceNames"] == [NAME]
    assert set(api.verbs) <= set(rule["verbs"]) <= {"get", "patch", "update"}
