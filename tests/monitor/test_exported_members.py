"""The monitor package's public surface, and what it must never import (it runs in the gateway)."""

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import monitor

ROOT = Path(__file__).resolve().parents[2]


def test_all_lists_existing_monitor_names() -> None:
    assert len(monitor.__all__) == len(set(monitor.__all__))
    for name in monitor.__all__:
        member = getattr(monitor, name)
        module = getattr(member, "__module__", "monitor.")
        assert module.startswith("monitor.") or name == "OTHER", (name, module)


def test_every_public_name_of_the_package_is_in_all() -> None:
    public = {n for n, v in vars(monitor).items() if not n.startswith("_") and not isinstance(v, ModuleType)}
    assert public == set(monitor.__all__)


def test_monitor_never_imports_heavy_libraries() -> None:
    code = (
        "import sys, monitor, monitor.alerts, monitor.dashboards.build\n"
        "heavy = {'torch', 'vllm', 'transformers', 'peft'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
