"""Fixtures of the Kubernetes tests: kustomizations built with `kubectl kustomize` (offline, no cluster).

Without kubectl (scripts/setup.sh installs it) every test that needs a build is skipped, and says
why; in CI (the CI environment variable set) a missing tool fails instead, so CI cannot pass by
skipping. `require_tool` (tests/conftest.py) does the same for every external tool.
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


@pytest.fixture(scope="session")
def kustomize(require_tool: Callable[[str | None, str], str]) -> Callable[[Path], list[dict[str, Any]]]:
    """`kubectl kustomize PATH`, parsed: the documents it prints."""
    kubectl = require_tool(
        KUBECTL, "kubectl is not installed (scripts/setup.sh installs it): cannot build the kustomizations"
    )

    def build(path: Path) -> list[dict[str, Any]]:
        proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return build


@pytest.fixture(scope="session")
def built(kustomize: Callable[[Path], list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each overlay's built resources."""
    return {
        name: kustomize(ROOT / "k8s" / "overlays" / name) for name in ("gpu", "cpu-demo", "gpu-two-bases")
    }
