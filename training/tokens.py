"""Token counts of chat examples, through the base model's tokenizer and chat template.

A conversation costs what the model sees in training: the whole conversation rendered by the chat
template (SmolLM2's adds a default system turn when an example has none), then tokenized. transformers
is imported inside the functions: the gateway's install has no transformers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.dataset import Example
from training.errors import TokenizerError

# The context the serving engine is started with (vLLM --max-model-len); a model with a shorter
# context of its own gets that instead (see `model_context`).
DEFAULT_MAX_TOKENS = 2048


def model_context(model_dir: Path, limit: int = DEFAULT_MAX_TOKENS) -> int:
    """The longest conversation the model takes: its own context, at most `limit`."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return limit
    own = config.get("max_position_embeddings")
    return min(limit, own) if isinstance(own, int) and own > 0 else limit


@functools.cache
def _load(folder: Path) -> Any:
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise TokenizerError(
            "counting tokens needs transformers, which is not installed here",
            hint="install the training extras: pip install 'lorafleet[train]'",
        ) from exc
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot load a tokenizer from {folder}: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerError(
            f"the tokenizer in {folder} has no chat template, so conversations cannot be rendered",
            hint="use an instruction-tuned base model (its folder has chat_template.jinja or a "
            "chat_template in tokenizer_config.json)",
        )
    return tokenizer


def load_tokenizer(model_dir: Path) -> Any:
    """The model folder's tokenizer (transformers AutoTokenizer), loaded once per folder."""
    return _load(Path(model_dir).expanduser().resolve())


def render(tokenizer: Any, example: Example) -> str:
    """The conversation as the model sees it in training, through the chat template."""
    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not isinstance(text, str):
        raise TokenizerError("the chat template did not render to text")
    return text


def count_tokens(tokenizer: Any, example: Example) -> int:
    """Tokens of the full conversation through the chat template."""
    return count_tokens_batch(tokenizer, [example])[0]


def count_tokens_batch(tokenizer: Any, examples: Sequence[Example]) -> list[int]:
    """`count_tokens` of many examples, tokenized in one batch."""
    if not examples:
        return []
    texts = [render(tokenizer, e) for e in examples]
    # The template already holds the special tokens; the tokenizer must not add its own again.
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(i) for i in ids]
