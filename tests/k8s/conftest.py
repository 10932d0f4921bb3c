"""Fixtures of the Kubernetes tests: each overlay built with `kubectl kustomize` (offline, no cluster)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
OVERLAYS = ("gpu", "cpu-demo")


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize PATH` prints (the build runs offline: no cluster needed)."""
    if KUBECTL is None:
        pytest.skip(
            "kubectl is not installed (scripts/setup.sh installs it): cannot build the kustomizations"
        )
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict[str, Any]]]:
    """Each overlay's built resources."""
    return {name: kustomize(ROOT / "k8s" / "overlays" / name) for name in OVERLAYS}
