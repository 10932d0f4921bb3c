"""The built manifests validate with `kubernetes-validate --strict` against Kubernetes' own schemas.

Strict mode rejects any property a schema does not know (a misspelt field fails). kubernetes-validate
bundles the schemas of Kubernetes' built-in kinds only, so the custom resources are skipped with a
warning: PrometheusRule and ServiceMonitor (monitoring.coreos.com/v1), AnalysisTemplate
(argoproj.io/v1alpha1) and MetricTemplate (flagger.app/v1beta1). Those are checked by
tests/k8s/test_manifests.py and tests/k8s/test_render.py instead (shape, and their PromQL run by a
real Prometheus engine through promtool).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which(
    "kubernetes-validate"
)
CUSTOM_KINDS = {"PrometheusRule", "ServiceMonitor", "AnalysisTemplate", "MetricTemplate"}
# The oldest Kubernetes minor still supported by the big providers, and the newest schema bundled.
VERSIONS = ("1.30.0", "1.37.0")


@pytest.fixture
def validator(require_tool: Callable[[str | None, str], str]) -> str:
    return require_tool(VALIDATE, "kubernetes-validate is not installed (it is in the dev extra)")


def validate(validator: str, path: Path, version: str) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [validator, "--strict", "-k", version, str(path)], capture_output=True, text=True, timeout=120
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def check(validator: str, path: Path, docs: list[dict[str, Any]], version: str) -> None:
    code, lines = validate(validator, path, version)
    errors = [line for line in lines if line.startswith("ERROR")]
    assert code == 0 and not errors, "\n".join(errors or lines)
    passed = [line for line in lines if line.startswith("INFO") and " passed for resource " in line]
    built_in = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    assert len(passed) == len(built_in), "\n".join(lines)
    skipped = {line.split("kind ")[1].split(" ")[0] for line in lines if line.startswith("WARN")}
    assert skipped == {d["kind"] for d in docs} & CUSTOM_KINDS


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", ["gpu", "cpu-demo", "gpu-two-bases"])
def test_overlays_validate_strictly(
    validator: str, built: dict[str, list[dict[str, Any]]], overlay: str, version: str, tmp_path: Path
) -> None:
    docs = built[overlay]
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    check(validator, out, docs, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_jobs_validate_strictly(
    validator: str, kustomize: Callable[[Path], list[dict[str, Any]]], version: str, tmp_path: Path
) -> None:
    docs = kustomize(ROOT / "k8s" / "jobs")
    out = tmp_path / "jobs.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    check(validator, out, docs, version)


def test_integrations_are_custom_kinds_only(validator: str) -> None:
    for path in sorted((ROOT / "k8s" / "integrations").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs and {d["kind"] for d in docs} <= CUSTOM_KINDS, path
        check(validator, path, docs, VERSIONS[-1])


def test_strict_validation_catches_a_misspelt_field(
    validator: str, built: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    # The check above would be worthless if the validator let unknown fields through.
    gateway = next(d for d in built["cpu-demo"] if d["metadata"]["name"] == "lorafleet-gateway")
    broken = {**gateway, "spec": {**gateway["spec"], "replica": 2}}
    out = tmp_path / "broken.yaml"
    out.write_text(yaml.safe_dump(broken))
    code, lines = validate(validator, out, VERSIONS[-1])
    assert code != 0 and any("'replica' was unexpected" in line for line in lines)
