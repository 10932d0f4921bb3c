"""An engine's --max-lora-rank: a size vLLM accepts, big enough for the versions it starts with."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from lorafleet.registry import Registry, VersionInfo
from serve.settings import EngineSettings, LoraRankError, max_lora_rank_for, rank_size

LORAFLEET = Path(sys.executable).with_name("lorafleet")


def test_a_rank_takes_the_smallest_size_vllm_accepts_that_holds_it() -> None:
    assert [rank_size(r) for r in (1, 2, 8, 16, 17, 64, 300, 512)] == [1, 8, 8, 16, 32, 64, 320, 512]
    with pytest.raises(LoraRankError, match="LoRA rank 513 is above 512"):
        rank_size(513)


def test_the_engine_rank_is_the_default_or_what_the_largest_adapter_needs() -> None:
    assert max_lora_rank_for(None, {}) == 16
    assert max_lora_rank_for(None, {"a-v1-20261204": 8}) == 16
    assert max_lora_rank_for(None, {"a-v1-20261204": 8, "a-v2-20261204": 64}) == 64
    assert max_lora_rank_for(None, {"a-v1-20261204": 40}) == 64
    assert max_lora_rank_for(32, {"a-v1-20261204": 16}) == 32


def test_a_given_rank_below_an_adapters_names_the_version_and_the_size_it_needs() -> None:
    with pytest.raises(LoraRankError) as err:
        max_lora_rank_for(16, {"a-v1-20261204": 8, "a-v2-20261204": 40})
    assert str(err.value) == (
        "a-v2-20261204 has LoRA rank 40, above --max-lora-rank 16: give --max-lora-rank 64, "
        "or leave it out to size it from the adapters"
    )


def test_settings_refuse_a_size_vllm_does_not_accept() -> None:
    with pytest.raises(
        ValidationError, match=r"20 is not a size vLLM accepts \(1, 8, 16, .*\); 32 holds rank 20"
    ):
        EngineSettings(max_lora_rank=20)


def stored_version(root: Path, rank: int) -> str:
    """A version of rank `rank` in the registry at `root` (its adapter a config file only)."""
    reg = Registry(root)
    with reg.new_version("cards") as draft:
        draft.adapter_path.mkdir()
        (draft.adapter_path / "adapter_config.json").write_text(f'{{"peft_type": "LORA", "r": {rank}}}\n')
        (draft.path / "README.md").write_text("---\nlorafleet: {}\n---\n")
        draft.write_json(
            "version.json",
            VersionInfo(
                name=str(draft.ref), task="cards", number=1, created_at=dt.datetime.now(dt.UTC),
                base_model="base", adapter_sha256="0" * 64, lora_rank=rank,
            ),
        )  # fmt: skip
        return str(draft.ref)


def test_serve_engine_refuses_an_adapter_above_its_rank_before_starting_anything(tmp_path: Path) -> None:
    name = stored_version(tmp_path / "reg", 64)
    argv = [LORAFLEET, "serve", "engine", "--registry", tmp_path / "reg", "--adapter", "cards", "--port", "1"]
    proc = subprocess.run(
        [*map(str, argv), "--max-lora-rank", "16"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert f"{name} has LoRA rank 64, above --max-lora-rank 16: give --max-lora-rank 64" in proc.stderr
    proc = subprocess.run(
        [*map(str, argv), "--max-lora-rank", "48"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "48 is not a size vLLM accepts (1, 8, 16, 32, 64, 128, 256, 320, 512); 64 holds" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_engine_without_the_flag_holds_every_rank_in_its_registry(tmp_path: Path) -> None:
    name = stored_version(tmp_path / "reg", 40)
    with socket.socket() as taken:  # the engine stops at its taken port, after choosing its rank
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [LORAFLEET, "serve", "engine", "--registry", tmp_path / "reg", "--port", port]
        proc = subprocess.run([*map(str, argv)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"--max-lora-rank 64: {name} has LoRA rank 40 (registry {tmp_path / 'reg'})" in proc.stderr
