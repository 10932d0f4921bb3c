"""The built overlays, parsed: what the deployment promises, checked on every resource kubectl prints.

Both overlays are built with `kubectl kustomize` (offline). The assertions are about behaviour a
cluster would show: probes, non-root read-only gateways, limits everywhere, the PDB really selecting
the gateway pods, stateless gateways sharing one feedback database, one controller, engines reachable through a
headless Service, read-only registry mounts, GPUs only in the gpu overlay, the admin Secret wired
in, routes mounted as a folder, and the generated monitoring resources equal to their source.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.alerts import rule_groups
from monitor.dashboards.build import render as render_dashboard
from router.k8s_store import HISTORY_KEY, ROUTES_KEY, STATE_KEY
from router.store import FileStore, parse_routes

Doc = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("gpu", "cpu-demo")
EXPECTED_KINDS = {
    "gpu": {
        "Namespace": 1,
        "ServiceAccount": 1,
        "Role": 1,
        "RoleBinding": 1,
        "ConfigMap": 2,  # routes, Grafana dashboard
        "Service": 3,  # engine (headless), gateway, controller
        "PersistentVolumeClaim": 2,  # registry, models
        "Deployment": 3,  # engine, gateway, controller
        "PodDisruptionBudget": 1,
        "HorizontalPodAutoscaler": 1,
        "Ingress": 1,
        "NetworkPolicy": 3,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
    },
    "cpu-demo": {
        "Namespace": 1,
        "ServiceAccount": 1,
        "Role": 1,
        "RoleBinding": 1,
        "ConfigMap": 2,
        "Service": 4,  # ... and PostgreSQL
        "PersistentVolumeClaim": 1,  # registry; the model is prepared in the pod
        "Deployment": 3,
        "StatefulSet": 1,  # PostgreSQL
        "PodDisruptionBudget": 1,
        "HorizontalPodAutoscaler": 1,
        "Ingress": 1,
        "NetworkPolicy": 4,
    },
}


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def workload(docs: list[Doc], name: str) -> Doc:
    found = [d for d in workloads(docs) if d["metadata"]["name"] == name]
    assert len(found) == 1, (name, len(found))
    return found[0]


def pod(docs: list[Doc], deployment: str) -> Doc:
    spec: Doc = workload(docs, deployment)["spec"]["template"]["spec"]
    return spec


def container(docs: list[Doc], deployment: str) -> Doc:
    first: Doc = pod(docs, deployment)["containers"][0]
    return first


def env(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def mounts(c: Doc) -> dict[str, Doc]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def volumes(p: Doc) -> dict[str, Doc]:
    return {v["name"]: v for v in p.get("volumes", [])}


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, built: dict[str, list[Doc]]) -> tuple[str, list[Doc]]:
    name: str = request.param
    return name, built[name]


def test_each_overlay_builds_the_expected_resources(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    assert Counter(d["kind"] for d in docs) == EXPECTED_KINDS[name]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "lorafleet", (d["kind"], d["metadata"]["name"])
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lorafleet"
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"AnalysisTemplate", "MetricTemplate"}  # integrations are opt-in


@pytest.mark.parametrize("deployment", ["lorafleet-engine", "lorafleet-gateway", "lorafleet-controller"])
def test_probes_on_health(overlay: tuple[str, list[Doc]], deployment: str) -> None:
    _, docs = overlay
    c = container(docs, deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, (deployment, probe)
    assert "http" in ports
    if deployment == "lorafleet-engine":
        # model load takes minutes: the startup probe must allow several before liveness may kill it
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


@pytest.mark.parametrize("deployment", ["lorafleet-gateway", "lorafleet-controller"])
def test_gateway_and_controller_run_unprivileged_on_a_read_only_root(
    overlay: tuple[str, list[Doc]], deployment: str
) -> None:
    _, docs = overlay
    p, c = pod(docs, deployment), container(docs, deployment)
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["runAsUser"] != 0
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc.get("privileged", False) is False
    # the writable places are emptyDirs: nothing in them outlives the pod
    vols = volumes(p)
    writable = {m["mountPath"] for m in mounts(c).values() if not m.get("readOnly")}
    for m in mounts(c).values():
        if not m.get("readOnly"):
            assert "emptyDir" in vols[m["name"]], (deployment, m)
    assert writable >= {"/var/lib/lorafleet", "/tmp"}


def test_every_container_has_requests_and_limits(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for w in workloads(docs):
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (
                    w["metadata"]["name"],
                    c["name"],
                    kind,
                )


def test_gateway_rollout_pdb_and_autoscaler(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    gw = one(docs, "Deployment", "lorafleet-gateway")
    labels = gw["spec"]["template"]["metadata"]["labels"]
    # The autoscaler owns the replica count: a fixed one would reset the scale on every apply.
    assert "replicas" not in gw["spec"]
    # A new pod first: the fleet never serves below its count during a rollout.
    assert gw["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert "volumeClaimTemplates" not in gw["spec"]
    pdb = one(docs, "PodDisruptionBudget", "lorafleet-gateway")
    assert pdb["apiVersion"] == "policy/v1"
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selects(selector, labels)
    others = [w for w in workloads(docs) if w is not gw]
    assert not any(selects(selector, w["spec"]["template"]["metadata"]["labels"]) for w in others)
    hpa = one(docs, "HorizontalPodAutoscaler", "lorafleet-gateway")
    assert pdb["spec"].get("maxUnavailable", 0) < hpa["spec"]["minReplicas"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "lorafleet-gateway",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_one_controller_with_recreate_and_least_privilege(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    ctl = one(docs, "Deployment", "lorafleet-controller")
    assert ctl["spec"]["replicas"] == 1
    assert ctl["spec"]["strategy"] == {"type": "Recreate"}
    p, c = pod(docs, "lorafleet-controller"), container(docs, "lorafleet-controller")
    args = c["args"]
    assert args[0] == "controller"
    flags = dict(a.split("=", 1) for a in args[1:] if "=" in a)
    routes_cm = one(docs, "ConfigMap", flags["--routes-configmap"])
    assert flags["--namespace"] == "$(POD_NAMESPACE)"
    assert env(c)["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    if name == "gpu":
        assert flags["--prometheus-url"] == "$(PROMETHEUS_URL)"
        assert env(c)["PROMETHEUS_URL"]["value"] == "http://prometheus-operated.monitoring.svc:9090"
    else:
        # No Prometheus in the demo: the gate reads the controller's local signals, not a dead address.
        assert "--prometheus-url" not in flags and "PROMETHEUS_URL" not in env(c)
    sa = one(docs, "ServiceAccount", p["serviceAccountName"])
    binding = one(docs, "RoleBinding", "lorafleet-controller")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "lorafleet"}
    ]
    role = one(docs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [routes_cm["metadata"]["name"]],
            "verbs": ["get", "patch"],
        }
    ]
    # only the controller talks to the API server
    for name in ("lorafleet-gateway", "lorafleet-engine"):
        assert pod(docs, name)["automountServiceAccountToken"] is False


def test_routes_configmap_is_mounted_as_a_folder_and_readable(
    overlay: tuple[str, list[Doc]], tmp_path: Path
) -> None:
    _, docs = overlay
    p, c = pod(docs, "lorafleet-gateway"), container(docs, "lorafleet-gateway")
    e = env(c)
    assert e["LORAFLEET_ROUTER_CONTROLLER"]["value"] == "external"
    routes_file = Path(e["LORAFLEET_ROUTER_ROUTES_FILE"]["value"])
    (mount,) = [m for m in mounts(c).values() if m["mountPath"] == str(routes_file.parent)]
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    assert mount["readOnly"] is True
    name = volumes(p)[mount["name"]]["configMap"]["name"]
    cm = one(docs, "ConfigMap", name)
    assert routes_file.name == ROUTES_KEY
    assert parse_routes(cm["data"][ROUTES_KEY], name).revision == 0
    # the controller's other keys land beside it, under the names the gateways' FileStore reads
    store = FileStore(routes_file)
    assert (store.state_path.name, store.history_path.name) == (STATE_KEY, HISTORY_KEY)


def test_engines_behind_a_headless_service_that_gateway_and_controller_resolve(
    overlay: tuple[str, list[Doc]],
) -> None:
    _, docs = overlay
    svc = one(docs, "Service", "lorafleet-engine-headless")
    assert svc["spec"]["clusterIP"] == "None"
    engine = one(docs, "Deployment", "lorafleet-engine")
    assert selects(svc["spec"]["selector"], engine["spec"]["template"]["metadata"]["labels"])
    (port,) = svc["spec"]["ports"]
    target = f"dns+http://{svc['metadata']['name']}:{port['port']}"
    assert json.loads(env(container(docs, "lorafleet-gateway"))["LORAFLEET_ROUTER_ENGINES"]["value"]) == [
        target
    ]
    assert f"--engine={target}" in container(docs, "lorafleet-controller")["args"]
    c = container(docs, "lorafleet-engine")
    assert (
        port["targetPort"] == "http" and {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == 8000
    )


def test_gateways_share_one_feedback_database_from_a_secret(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    e = env(container(docs, "lorafleet-gateway"))
    assert "LORAFLEET_ROUTER_PEERS" not in e  # the shared store answers feedback for every replica
    ref = e["LORAFLEET_ROUTER_FEEDBACK__URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "lorafleet-feedback-db", "key": "url"}  # required: no silent SQLite fallback
    if name == "gpu":  # an external or operator-managed database
        assert not [w for w in workloads(docs) if "postgres" in w["metadata"]["name"]]
        return
    db = one(docs, "StatefulSet", "lorafleet-postgres")
    labels = db["spec"]["template"]["metadata"]["labels"]
    svc = one(docs, "Service", "lorafleet-postgres")
    assert selects(svc["spec"]["selector"], labels) and svc["spec"]["ports"][0]["port"] == 5432
    (claim,) = db["spec"]["volumeClaimTemplates"]
    c = db["spec"]["template"]["spec"]["containers"][0]
    data_mount = mounts(c)[claim["metadata"]["name"]]["mountPath"]
    assert env(c)["PGDATA"]["value"].startswith(data_mount + "/")  # not the mount point itself
    assert env(c)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "lorafleet-postgres"
    assert db["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert db["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # only the gateways reach it
    policy = one(docs, "NetworkPolicy", "lorafleet-postgres")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    gateway_labels = workload(docs, "lorafleet-gateway")["spec"]["template"]["metadata"]["labels"]
    assert selects(peer["podSelector"]["matchLabels"], gateway_labels)
    assert rule["ports"] == [{"port": 5432}]


def test_engine_runs_vllm_with_runtime_lora(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    p, c = pod(docs, "lorafleet-engine"), container(docs, "lorafleet-engine")
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = c["args"]
    assert "--enable-lora" in args
    assert any(a.startswith("--max-loras=") for a in args) and any(
        a.startswith("--max-lora-rank=") for a in args
    )
    assert len([a for a in args if a.startswith("--max-model-len")]) == 1
    assert "--port=8000" in args and "--host=0.0.0.0" in args
    assert env(c)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    shm = volumes(p)[mounts(c)["dshm"]["name"]]
    assert mounts(c)["dshm"]["mountPath"] == "/dev/shm" and shm["emptyDir"]["medium"] == "Memory"
    model = next(a for a in args if a.startswith("--model=")).split("=", 1)[1]
    assert any(model.startswith(m["mountPath"] + "/") for m in mounts(c).values())


def test_registry_mounted_read_only_wherever_it_is_read(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    claim = one(docs, "PersistentVolumeClaim", "lorafleet-registry")
    for deployment in ("lorafleet-engine", "lorafleet-gateway", "lorafleet-controller"):
        p, c = pod(docs, deployment), container(docs, deployment)
        (name,) = [
            n
            for n, v in volumes(p).items()
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
        ]
        assert volumes(p)[name]["persistentVolumeClaim"]["readOnly"] is True
        assert mounts(c)[name]["readOnly"] is True and mounts(c)[name]["mountPath"] == "/registry"
    # the same path everywhere: an adapter path means the same file in every pod
    assert env(container(docs, "lorafleet-gateway"))["LORAFLEET_ROUTER_REGISTRY"]["value"] == "/registry"
    assert "--registry=/registry" in container(docs, "lorafleet-controller")["args"]


def test_gpus_only_in_the_gpu_overlay(built: dict[str, list[Doc]]) -> None:
    def gpus(docs: list[Doc]) -> dict[str, tuple[str | None, str | None]]:
        found = {}
        for w in workloads(docs):
            spec = w["spec"]["template"]["spec"]
            for c in spec["containers"] + spec.get("initContainers", []):
                r = c["resources"]
                req, lim = r["requests"].get("nvidia.com/gpu"), r["limits"].get("nvidia.com/gpu")
                if req or lim:
                    found[f"{w['metadata']['name']}/{c['name']}"] = (req, lim)
        return found

    assert gpus(built["gpu"]) == {"lorafleet-engine/vllm": ("1", "1")}
    assert gpus(built["cpu-demo"]) == {}
    tolerations = pod(built["gpu"], "lorafleet-engine")["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert "--gpu-memory-utilization=0.90" in container(built["gpu"], "lorafleet-engine")["args"]
    cpu = container(built["cpu-demo"], "lorafleet-engine")
    assert env(cpu)["VLLM_CPU_KVCACHE_SPACE"]["value"] == "1"
    assert cpu["image"].endswith("-cpu") and container(built["gpu"], "lorafleet-engine")["image"].endswith(
        "-cuda"
    )


def test_cpu_demo_prepares_the_embedded_model_in_the_pod(built: dict[str, list[Doc]]) -> None:
    docs = built["cpu-demo"]
    p, c = pod(docs, "lorafleet-engine"), container(docs, "lorafleet-engine")
    (init,) = p["initContainers"]
    assert init["command"] == ["lorafleet", "base", "prepare"] and init["image"] == c["image"]
    home = env(init)["LORAFLEET_HOME"]["value"]
    assert mounts(init)["models"]["mountPath"] == home and not mounts(init)["models"].get("readOnly")
    assert "emptyDir" in volumes(p)["models"] and "persistentVolumeClaim" not in volumes(p)["models"]
    # lorafleet.basemodel prepares into $LORAFLEET_HOME/models/SmolLM2-135M-Instruct
    assert f"--model={home}/models/SmolLM2-135M-Instruct" in c["args"]
    assert one(docs, "PersistentVolumeClaim", "lorafleet-registry")["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]


def test_the_admin_secret_is_referenced(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    ref = env(container(docs, "lorafleet-gateway"))["LORAFLEET_ROUTER_ADMIN_TOKEN"]["valueFrom"][
        "secretKeyRef"
    ]
    assert ref == {"name": "lorafleet-admin", "key": "token"}  # not optional: no token, no start
    p, c = pod(docs, "lorafleet-controller"), container(docs, "lorafleet-controller")
    (vol,) = [v for v in volumes(p).values() if "secret" in v]
    assert vol["secret"]["secretName"] == "lorafleet-admin"
    assert vol["secret"]["items"] == [{"key": "token", "path": "token"}]
    mount = mounts(c)[vol["name"]]
    assert mount["readOnly"] is True
    assert f"--admin-token-file={mount['mountPath']}/token" in c["args"]
    # the Secret itself is created by the operator, never committed
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_admin_stays_inside_the_cluster(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    ingress = one(docs, "Ingress", "lorafleet-gateway")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/v1", "Prefix")]
    assert {p["backend"]["service"]["name"] for p in paths} == {"lorafleet-gateway"}
    assert not [d for d in docs if d["kind"] == "Ingress" and d["metadata"]["name"] != "lorafleet-gateway"]
    ctl_svc = one(docs, "Service", "lorafleet-controller")
    assert ctl_svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    policy = one(docs, "NetworkPolicy", "lorafleet-controller")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "every rule of the controller's policy names its peers"
        assert [p["port"] for p in rule["ports"]] == [8090]
    engine_policy = one(docs, "NetworkPolicy", "lorafleet-engine")
    assert all(rule["from"] for rule in engine_policy["spec"]["ingress"])


@pytest.mark.parametrize(
    ("deployment", "port"),
    [("lorafleet-gateway", 8080), ("lorafleet-controller", 8090), ("lorafleet-engine", 8000)],
)
def test_scraped_once_by_annotations_or_by_the_service_monitor(
    overlay: tuple[str, list[Doc]], deployment: str, port: int
) -> None:
    name, docs = overlay
    annotations = workload(docs, deployment)["spec"]["template"]["metadata"].get("annotations", {})
    scrape = {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")}
    if name == "gpu":  # the ServiceMonitor scrapes it: annotations too would scrape it twice
        assert scrape == {}
        assert one(docs, "ServiceMonitor", "lorafleet")
    else:
        assert scrape == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }
        assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert {p["containerPort"] for p in container(docs, deployment)["ports"]} == {port}


def test_images_are_tagged(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for w in workloads(docs):
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            name, _, tag = c["image"].rpartition(":")
            assert tag and tag != "latest" and "." in tag, c["image"]  # a release, not a moving tag
            assert name.startswith("lorafleet-") or name == "postgres", c["image"]


def test_prometheus_operator_resources_in_the_gpu_overlay(built: dict[str, list[Doc]]) -> None:
    docs = built["gpu"]
    rule = one(docs, "PrometheusRule", "lorafleet")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == rule_groups()
    monitor = one(docs, "ServiceMonitor", "lorafleet")
    (endpoint,) = monitor["spec"]["endpoints"]
    scraped = []
    for svc in (d for d in docs if d["kind"] == "Service"):
        labels = svc["metadata"]["labels"]
        matched = all(
            labels.get(e["key"]) in e["values"] for e in monitor["spec"]["selector"]["matchExpressions"]
        )
        if matched:
            assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}, svc["metadata"]["name"]
            scraped.append(svc["metadata"]["name"])
    assert sorted(scraped) == ["lorafleet-controller", "lorafleet-engine-headless", "lorafleet-gateway"]
    assert not {d["kind"] for d in built["cpu-demo"]} & {"PrometheusRule", "ServiceMonitor"}


def test_grafana_dashboard_configmap_is_the_generated_dashboard(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    cm = one(docs, "ConfigMap", "lorafleet-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == {"lorafleet.json": render_dashboard()}
    assert cm["data"]["lorafleet.json"] == (ROOT / "monitor" / "dashboards" / "lorafleet.json").read_text()


def test_the_finetune_job_writes_the_registry_others_read(
    built: dict[str, list[Doc]], kustomize: Callable[[Path], list[Doc]]
) -> None:
    (job,) = kustomize(ROOT / "k8s" / "jobs")
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "lorafleet"
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["args"][0] == "finetune" and "--registry=/registry" in c["args"]
    claim = volumes(spec)[mounts(c)["registry"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == "lorafleet-registry" and not mounts(c)["registry"].get("readOnly")
    one(built["gpu"], "PersistentVolumeClaim", claim)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])


def test_base_is_device_neutral(kustomize: Callable[[Path], list[Doc]]) -> None:
    docs = kustomize(ROOT / "k8s" / "base")
    text = yaml.safe_dump_all(docs)
    assert "nvidia.com/gpu" not in text and "VLLM_CPU_KVCACHE_SPACE" not in text


def _model_folder(c: Doc) -> str:
    (model,) = [str(a).split("=", 1)[1] for a in c["args"] if str(a).startswith("--model=")]
    return model


def test_gateways_read_each_engines_base_from_its_folder(built: dict[str, list[Doc]]) -> None:
    """The gateways fingerprint each engine's base: its model folder is mounted in the gateways and
    the controller read-only, at the engine's path, from the same claim."""
    for name, engines in (
        ("gpu", ["lorafleet-engine"]),
        ("gpu-two-bases", ["lorafleet-engine", "lorafleet-engine-second"]),
    ):
        docs = built[name]
        for engine in engines:
            e = container(docs, engine)
            folder = _model_folder(e)
            (mount,) = [m for m in mounts(e).values() if folder.startswith(m["mountPath"] + "/")]
            claim = volumes(pod(docs, engine))[mount["name"]]["persistentVolumeClaim"]["claimName"]
            one(docs, "PersistentVolumeClaim", claim)
            for reader in ("lorafleet-gateway", "lorafleet-controller"):
                c = container(docs, reader)
                (theirs,) = [m for m in mounts(c).values() if m["mountPath"] == mount["mountPath"]]
                assert theirs["readOnly"] is True, (name, reader)
                vol = volumes(pod(docs, reader))[theirs["name"]]["persistentVolumeClaim"]
                assert vol == {"claimName": claim, "readOnly": True}, (name, reader, engine)


def test_two_bases_two_engine_deployments_behind_one_service(built: dict[str, list[Doc]]) -> None:
    docs = built["gpu-two-bases"]
    first, second = workload(docs, "lorafleet-engine"), workload(docs, "lorafleet-engine-second")
    assert _model_folder(container(docs, "lorafleet-engine")) != _model_folder(
        container(docs, "lorafleet-engine-second")
    )
    # Deployments whose selectors overlap would fight over each other's pods.
    for a, b in ((first, second), (second, first)):
        assert not selects(a["spec"]["selector"]["matchLabels"], b["spec"]["template"]["metadata"]["labels"])
    # Both are engines to the headless Service, the network policy and the monitoring.
    svc = one(docs, "Service", "lorafleet-engine-headless")
    policy = one(docs, "NetworkPolicy", "lorafleet-engine")
    for w in (first, second):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert selects(svc["spec"]["selector"], labels)
        assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
        c = w["spec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" in c["resources"]["limits"] and c["image"].endswith(":0.1.0-cuda")
    assert Counter(d["kind"] for d in docs) == Counter(EXPECTED_KINDS["gpu"]) + Counter(
        {"Deployment": 1, "PersistentVolumeClaim": 1}
    )
