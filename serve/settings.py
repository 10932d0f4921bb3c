"""Settings of one vLLM engine (`lorafleet serve engine`), from flags or LORAFLEET_ENGINE_* variables."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LORA_RANK_SIZES = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts
DEFAULT_MAX_LORA_RANK = 16


class LoraRankError(ValueError):
    """An adapter's rank that no engine setting can hold, or that the given one cannot."""


def rank_size(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds adapters of `rank`."""
    for size in LORA_RANK_SIZES:
        if size >= rank:
            return size
    raise LoraRankError(f"LoRA rank {rank} is above {LORA_RANK_SIZES[-1]}, the largest vLLM serves")


def accepted_size(value: int) -> int:
    """`value` itself if vLLM accepts it as --max-lora-rank; the error names the size to give instead."""
    if value not in LORA_RANK_SIZES:
        sizes = ", ".join(map(str, LORA_RANK_SIZES))
        raise LoraRankError(
            f"{value} is not a size vLLM accepts ({sizes}); {rank_size(value)} holds rank {value}"
        )
    return value


def max_lora_rank_for(requested: int | None, ranks: Mapping[str, int]) -> int:
    """The engine's --max-lora-rank: `requested` if given (it must hold every version of `ranks`,
    version name -> LoRA rank), else the default or, if more, what the largest of them needs."""
    if requested is None:
        return max([DEFAULT_MAX_LORA_RANK, *(rank_size(r) for r in ranks.values())])
    for name, rank in ranks.items():
        if rank > requested:
            raise LoraRankError(
                f"{name} has LoRA rank {rank}, above --max-lora-rank {requested}: "
                f"give --max-lora-rank {rank_size(rank)}, or leave it out to size it from the adapters"
            )
    return requested


class Device(enum.StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORAFLEET_ENGINE_", env_nested_delimiter="__", extra="ignore"
    )

    base_model: str | None = Field(
        default=None, description="Local base model folder; default: the embedded SmolLM2-135M-Instruct."
    )
    served_model_name: str = Field(
        default="base", description="The name the engine serves the base model under."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8100, ge=1, le=65535, description="Port to listen on.")
    device: Device = Field(
        default=Device.AUTO, description="auto: CUDA when a GPU is visible, else the CPU build."
    )
    max_loras: int = Field(default=4, ge=1, description="Adapters in one batch (vLLM --max-loras).")
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="Adapters cached in memory (--max-cpu-loras)."
    )
    max_lora_rank: int = Field(
        default=DEFAULT_MAX_LORA_RANK,
        description=f"Largest LoRA rank the engine accepts: one of {', '.join(map(str, LORA_RANK_SIZES))}.",
    )
    max_model_len: int = Field(default=2048, ge=64, description="Context length (tokens).")
    kv_cache_gib: float = Field(
        default=1.0, gt=0, description="KV cache size on the CPU (VLLM_CPU_KVCACHE_SPACE)."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of GPU memory vLLM may use."
    )
    dtype: str = Field(default="bfloat16", description="Weights and activations dtype.")
    startup_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest wait for /health after a start."
    )
    stop_timeout_s: float = Field(default=20.0, gt=0, description="Wait after SIGTERM before SIGKILL.")
    restart_backoff_s: float = Field(
        default=2.0, gt=0, description="First delay before restarting a crashed engine."
    )
    restart_backoff_max_s: float = Field(default=60.0, gt=0, description="Longest delay between restarts.")
    extra_args: list[str] = Field(default_factory=list, description="More vLLM flags, passed as they are.")
    log_file: str | None = Field(
        default=None, description="Where the engine's output goes; default: inherit."
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _a_size_vllm_accepts(cls, value: int) -> int:
        return accepted_size(value)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
