"""Fixtures of the Kubernetes tests: kustomizations built with `kubectl kustomize` (offline, no cluster).

Without kubectl (scripts/setup.sh installs it) every test that needs a build is skipped, and says
why; in CI (the CI environment variable set) a missing tool fails instead, so CI cannot pass by
skipping. `require_tool` does the same for the other tools (hadolint, kubernetes-validate, promtool).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")


def _require(path: str | None, reason: str) -> str:
    """`path` if the tool was found; else skip the test saying `reason`, or fail it in CI."""
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this test (the CI environment variable is set)")
        pytest.skip(reason)
    return path


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = _require(
        KUBECTL, "kubectl is not installed (scripts/setup.sh installs it): cannot build the kustomizations"
    )
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def require_tool() -> Callable[[str | None, str], str]:
    """require_tool(path or None, reason): the path; else skip (fail in CI) saying `reason`."""
    return _require


@pytest.fixture(scope="session")
def kustomize() -> Callable[[Path], list[dict[str, Any]]]:
    """`kubectl kustomize PATH`, parsed: the documents it prints."""
    return _kustomize


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict[str, Any]]]:
    """Each overlay's built resources."""
    return {name: _kustomize(ROOT / "k8s" / "overlays" / name) for name in ("gpu", "cpu-demo")}
