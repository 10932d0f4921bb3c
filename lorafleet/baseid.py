"""Which base model a folder holds: a name for people and a fingerprint for machines.

    identify(folder) -> BaseIdentity(name, fingerprint)
    identify_model_folder(folder) -> the same, or None when the folder holds no model

The fingerprint is a SHA-256 (its first 16 hex digits) over what makes two folders the same model:

- the architecture in config.json (model type, layer count and sizes, vocabulary, heads);
- every tensor's name and shape, from the safetensors headers (no weights are read for this);
- a sample of the weights themselves: the first 64 values of up to 8 tensors spread over the
  sorted names, rounded to 3 significant digits, so a bf16 and an fp32 copy of the same weights
  agree while an instruct and a base model of the same architecture differ.

It reads the headers and a few kilobytes, not the weights: milliseconds for a 135M model, the same
for an 8B one. It does not depend on the folder's path, file times or the tokenizer files, so
every copy of a model has the same fingerprint. The name is the folder's name (what people call
the model); two folders of the same name can still differ, which is what the fingerprint is for.

Engines report their base through vLLM's own model list: `lorafleet serve engine` serves the base
under a second name, `alias(identity)` (`lorafleet-base@NAME@FINGERPRINT`), which `parse_alias`
reads back. torch is not imported here: the gateway uses this module.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lorafleet.errors import BaseModelError

ALIAS_PREFIX = "lorafleet-base@"
FINGERPRINT_DIGITS = 16
_SAMPLED_TENSORS = 8
_SAMPLED_VALUES = 64
_ARCHITECTURE_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)
# bytes per value, and how to read `_SAMPLED_VALUES` of them as floats
_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


class BaseIdentity(BaseModel):
    """A base model: `name` for people, `fingerprint` to decide whether two folders are the same model."""

    model_config = ConfigDict(frozen=True)

    name: str
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


def _header(path: Path) -> tuple[dict[str, dict[str, object]], int]:
    """The tensors of one safetensors file (name -> dtype, shape, offsets) and where their data starts."""
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > 100_000_000:
            raise BaseModelError(f"{path} is not a safetensors file (header of {size} bytes)")
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def _floats(raw: bytes, dtype: str) -> list[float]:
    if dtype == "F32":
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if dtype == "F64":
        return list(struct.unpack(f"<{len(raw) // 8}d", raw))
    if dtype == "F16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    # BF16: the upper half of an IEEE float32
    halves = struct.unpack(f"<{len(raw) // 2}H", raw)
    return list(
        struct.unpack(f"<{len(halves)}f", struct.pack(f"<{len(halves)}I", *(h << 16 for h in halves)))
    )


def _rounded(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2e}"


def identify(folder: Path | str) -> BaseIdentity:
    """The identity of the model in `folder` (config.json and *.safetensors)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{folder} has no *.safetensors weights to fingerprint")
    digest = hashlib.sha256()
    digest.update(json.dumps({k: config.get(k) for k in _ARCHITECTURE_KEYS}, sort_keys=True).encode())
    tensors: dict[str, tuple[Path, int, dict[str, object]]] = {}
    for f in files:
        header, start = _header(f)
        for name, meta in header.items():
            tensors[name] = (f, start, meta)
    names = sorted(tensors)
    for name in names:
        digest.update(f"{name}:{tensors[name][2].get('shape')};".encode())
    step = max(1, len(names) // _SAMPLED_TENSORS)
    for name in names[::step][:_SAMPLED_TENSORS]:
        path, start, meta = tensors[name]
        dtype = str(meta.get("dtype"))
        width = _DTYPES.get(dtype)
        offsets = meta.get("data_offsets")
        if width is None or not isinstance(offsets, list):
            digest.update(f"{name}:{dtype}".encode())  # an integer or quantized tensor: its type only
            continue
        count = min(_SAMPLED_VALUES, (int(offsets[1]) - int(offsets[0])) // width)
        with path.open("rb") as fh:
            fh.seek(start + int(offsets[0]))
            raw = fh.read(count * width)
        digest.update(",".join(_rounded(v) for v in _floats(raw, dtype)).encode())
    return BaseIdentity(name=folder.resolve().name, fingerprint=digest.hexdigest()[:FINGERPRINT_DIGITS])


def identify_model_folder(folder: Path | str) -> BaseIdentity | None:
    """The identity of `folder` when it holds a model; None for a name that is not a folder, or a
    folder without config.json or readable *.safetensors."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        return None
    try:
        return identify(path)
    except (BaseModelError, OSError):
        return None


def alias(identity: BaseIdentity) -> str:
    """The second name an engine serves its base under, so that its model list says which base it is."""
    return f"{ALIAS_PREFIX}{identity.name}@{identity.fingerprint}"


def parse_alias(model_id: str) -> BaseIdentity | None:
    """The identity in an engine's model id `lorafleet-base@NAME@FINGERPRINT`; None for other ids."""
    if not model_id.startswith(ALIAS_PREFIX):
        return None
    name, sep, fingerprint = model_id[len(ALIAS_PREFIX) :].rpartition("@")
    if not sep or not name or len(fingerprint) != FINGERPRINT_DIGITS:
        return None
    return BaseIdentity(name=name, fingerprint=fingerprint)
