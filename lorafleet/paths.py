"""Where lorafleet keeps its files: LORAFLEET_HOME (default ~/.lorafleet) and the registry inside it."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """lorafleet's home folder: prepared base models, the default registry, run state."""
    return Path(os.environ.get("LORAFLEET_HOME") or Path.home() / ".lorafleet").expanduser()


def default_registry() -> Path:
    """The registry named by LORAFLEET_REGISTRY, else `registry/` inside the home folder."""
    env = os.environ.get("LORAFLEET_REGISTRY")
    return Path(env).expanduser() if env else home() / "registry"
