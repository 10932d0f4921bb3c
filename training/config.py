"""The training configuration: one typed model, saved next to the adapter as train_config.json.

Values come, in order of precedence, from command-line flags, a YAML/JSON file (`--config`) and the
defaults below. Every error names the field and the bad value.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.errors import ConfigFileError, describe_validation_error

TRAIN_CONFIG_FILE = "train_config.json"


class Balance(StrEnum):
    """How to treat unequal label counts (label sets only)."""

    NONE = "none"
    WEIGHTS = "weights"  # weight each example's loss by 1 / its label's frequency
    UPSAMPLE = "upsample"  # repeat examples of rare labels until every label is as frequent as the most


class TooLong(StrEnum):
    """What training does with an example longer than `max_length` (check and audit name them first)."""

    ERROR = "error"  # stop before training, naming each one (file:line)
    CUT = "cut"  # keep its answer and the end of its prompt: the start of the prompt is cut
    DROP = "drop"  # leave it out


class Keep(StrEnum):
    """Which epoch's adapter training keeps."""

    BEST = "best"  # the lowest validation loss's (or the latest within keep_within of it); early stopping
    LAST = "last"  # the last epoch's: the whole schedule runs, its learning rate decayed to the end


class Precision(StrEnum):
    """Dtype of the frozen base weights; LoRA weights and the loss are always fp32."""

    AUTO = "auto"  # bf16 where the hardware supports it, else fp32
    BF16 = "bf16"
    FP32 = "fp32"


class TrainConfig(BaseModel):
    """Hyperparameters of one LoRA training run."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    base_model: str | None = Field(
        default=None, description="A local model folder; None: the embedded SmolLM2-135M-Instruct."
    )
    rank: int | None = Field(
        default=None, ge=1, le=256, description="LoRA rank r; None: chosen from the data."
    )
    alpha: float | None = Field(
        default=None, gt=0, description="LoRA alpha (the update is scaled by alpha/r); None: twice the rank."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Names of the linear layers that get LoRA weights; None: every attention and MLP projection.",
    )
    epochs: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="Passes over the training data (at most, with early stopping); None: chosen from the data.",
    )
    learning_rate: float | None = Field(default=None, gt=0, lt=1, description="None: chosen from the data.")
    early_stopping_patience: int = Field(
        default=2,
        ge=0,
        description="Epochs without a better validation loss before training stops (the best epoch is "
        "kept); 0: train every epoch.",
    )
    keep: Keep = Field(
        default=Keep.BEST,
        description="best: the epoch of the lowest validation loss, with early stopping; last: every epoch "
        "runs and the last one is kept (early_stopping_patience and keep_within do not apply).",
    )
    keep_within: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Keep the adapter of the latest epoch whose validation loss is within this share of "
        "the lowest (0.02: 2%); 0: the lowest's own epoch.",
    )
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1, description="Share of steps with linear warm-up.")
    batch_size: int = Field(default=8, ge=1, le=1024, description="Examples per optimiser step.")
    max_length: int | None = Field(
        default=None,
        ge=8,
        description="Longest example in tokens (through the chat template); None: the base model's context, "
        "at most 2048 (what `data check` and the serving engine use).",
    )
    too_long: TooLong = Field(
        default=TooLong.ERROR,
        description="An example over max_length: error (stop, naming each), cut (the prompt's start), or drop.",
    )
    balance: Balance = Balance.NONE
    seed: int = 0
    precision: Precision = Precision.AUTO
    device: str = Field(
        default="auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ..."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads; None: the cores that other processes leave idle (at least 1).",
    )
    share_prefix: bool = Field(
        default=True,
        description="Run the prompt prefix a batch shares (the system prompt) once per batch, not once per example.",
    )

    @field_validator("target_modules")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [v for v in value if not v or not v.replace("_", "").replace(".", "").isalnum()]
        if bad:
            raise ValueError(f"target module names must be layer names such as q_proj, got {bad}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in ("auto", "cpu", "cuda", "mps") or (index and not index.isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("learning_rate", "alpha", "epochs")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        return value

    @model_validator(mode="after")
    def _keep_last(self) -> TrainConfig:
        if self.keep is not Keep.LAST:
            return self
        clashes = [
            f"{name}={getattr(self, name):g}"
            for name in ("early_stopping_patience", "keep_within")
            if name in self.model_fields_set and getattr(self, name) > 0
        ]
        if clashes:
            raise ValueError(
                f"keep=last trains every epoch and keeps the last; {' and '.join(clashes)} apply only to "
                "keep=best: leave them out"
            )
        self.early_stopping_patience = 0
        return self

    def save(self, folder: Path) -> Path:
        target = folder / TRAIN_CONFIG_FILE
        target.write_text(self.model_dump_json(indent=2) + "\n")
        return target

    @classmethod
    def build(cls, data: dict[str, Any], source: str) -> TrainConfig:
        """Validate `data`; a ConfigFileError names each bad field and value."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigFileError(
                "invalid training configuration:\n" + describe_validation_error(exc, source),
                hint="see `lorafleet train --help` for every field and its range",
            ) from None


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (JSON is YAML, but its errors read better from json)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a mapping of field: value, got {type(data).__name__}")
    return data


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the file at `path` (if any), then `overrides` (None values are ignored)."""
    data = read_config_file(path) if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.build(data, str(path) if path else "options")
