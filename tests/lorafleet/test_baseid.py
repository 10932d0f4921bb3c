"""Base model identity: the fingerprint of a model folder and the alias engines report it under."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorafleet.baseid import BaseIdentity, alias, identify, parse_alias
from lorafleet.errors import BaseModelError
from tests.support import truncated_model


def test_a_copy_has_the_same_fingerprint_and_another_model_another(
    base_model_dir: Path, tmp_path: Path
) -> None:
    original = identify(base_model_dir)
    copy = tmp_path / "elsewhere" / base_model_dir.name
    shutil.copytree(base_model_dir, copy)
    assert identify(copy) == original  # not the path, not the file times
    smaller = identify(truncated_model(base_model_dir, tmp_path / "SmolLM2-20L", 20))
    assert smaller.fingerprint != original.fingerprint and smaller.name == "SmolLM2-20L"
    assert len(original.fingerprint) == 16 and original.name == "SmolLM2-135M-Instruct"


def test_the_same_architecture_with_other_weights_differs(base_model_dir: Path, tmp_path: Path) -> None:
    # An instruct and a base model share every shape: the sampled weights tell them apart.
    other = tmp_path / "other"
    shutil.copytree(base_model_dir, other)
    weights = next(other.glob("*.safetensors"))
    raw = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header : header + 16] = bytes(16)  # the first tensor's first values, zeroed
    weights.write_bytes(bytes(raw))
    assert identify(other).fingerprint != identify(base_model_dir).fingerprint


def test_alias_round_trip_and_other_ids() -> None:
    identity = BaseIdentity(name="Meta-Llama-3-8B-Instruct", fingerprint="0123456789abcdef")
    assert alias(identity) == "lorafleet-base@Meta-Llama-3-8B-Instruct@0123456789abcdef"
    assert parse_alias(alias(identity)) == identity
    for other in ("base", "banking-v1-20261203", "lorafleet-base@x", "lorafleet-base@x@short"):
        assert parse_alias(other) is None


def test_a_folder_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BaseModelError, match=r"no \*\.safetensors"):
        identify(tmp_path)
    with pytest.raises(BaseModelError, match=r"config\.json"):
        identify(tmp_path / "missing")
