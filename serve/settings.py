"""Settings of one vLLM engine (`lorafleet serve engine`), from flags or LORAFLEET_ENGINE_* variables."""

from __future__ import annotations

import enum

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_lora_rank: int = Field(default=16, ge=1, description="Largest LoRA rank the engine accepts.")
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

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
