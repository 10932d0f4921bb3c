"""Each package's __all__ names what exists; the gateway's packages load neither torch nor vllm."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["serve", "router", "monitor", "training"])
def test_exported_members_exist(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name}"


def test_the_gateway_imports_neither_torch_nor_vllm() -> None:
    code = (
        "import sys, router, serve, monitor, lorafleet.cli\n"
        "from router.app import create_app\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'transformers', 'peft'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
