"""Fixtures of the Kubernetes tests: kustomizations built with `kubectl kustomize` (offline, no cluster).

Without kubectl (scripts/setup.sh installs it) every test that needs a build is skipped, and says why.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")


def _kustomize(path: Path) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip(
            "kubectl is not installed (scripts/setup.sh installs it): cannot build the kustomizations"
        )
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def kustomize() -> Callable[[Path], list[dict[str, Any]]]:
    """`kubectl kustomize PATH`, parsed: the documents it prints."""
    return _kustomize


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict[str, Any]]]:
    """Each overlay's built resources."""
    return {name: _kustomize(ROOT / "k8s" / "overlays" / name) for name in ("gpu", "cpu-demo")}
