"""`lorafleet data check`: every problem of a chat JSONL file, each as `FILE:LINE: field: message`.

The structure (JSON, types, roles, empty content, the final assistant turn, UTF-8) is checked by
`training.dataset.read_jsonl`; this module adds the length check: a conversation longer than the
model's context, counted through the base model's tokenizer and chat template, cannot be trained on
whole. Extra keys beside `messages` are allowed (OpenAI's format ignores them too).

`read_valid` is how the other data commands read their input: all of it valid, or DatasetInvalidError
pointing at `lorafleet data check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet import basemodel
from training.dataset import Example, Problem, read_jsonl
from training.errors import DatasetInvalidError
from training.tokens import DEFAULT_MAX_TOKENS, count_tokens_batch, load_tokenizer, model_context


@dataclass(frozen=True)
class CheckResult:
    """What `check` found: the records read (non-blank lines), how many are valid, every problem."""

    path: str
    records: int
    valid: int
    problems: list[Problem]
    max_tokens: int | None

    def summary(self) -> str:
        n, m = self.records, len(self.problems)
        return f"{n} example{'' if n == 1 else 's'}, {m} problem{'' if m == 1 else 's'}"


def check(
    path: Path,
    *,
    max_tokens: int | None = None,
    tokenizer: Any | None = None,
    tokenizer_dir: Path | None = None,
) -> CheckResult:
    """Check a chat JSONL file; see `check_file`."""
    examples, problems = read_jsonl(path)
    limit = None
    if tokenizer is not None or max_tokens is not None or tokenizer_dir is not None:
        if tokenizer is None:
            model_dir = basemodel.resolve(tokenizer_dir)
            limit = max_tokens if max_tokens is not None else model_context(model_dir)
            # Loading a tokenizer takes seconds: not for a file with nothing valid to count.
            tokenizer = load_tokenizer(model_dir) if examples else None
        else:
            limit = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
        if tokenizer is not None:
            for example, n in zip(examples, count_tokens_batch(tokenizer, examples), strict=True):
                if n > limit:
                    problems.append(
                        Problem(
                            str(path),
                            example.line,
                            "messages",
                            f"too long: {n} tokens through the chat template, over the limit of {limit}",
                        )
                    )
    problems.sort(key=lambda p: p.line)
    bad_lines = {p.line for p in problems if p.line > 0}
    valid_lines = {e.line for e in examples}
    return CheckResult(
        path=str(path),
        records=len(valid_lines | bad_lines),
        valid=len(valid_lines - bad_lines),
        problems=problems,
        max_tokens=limit,
    )


def check_file(
    path: Path,
    *,
    max_tokens: int | None = None,
    tokenizer: Any | None = None,
    tokenizer_dir: Path | None = None,
) -> list[Problem]:
    """Every problem of a chat JSONL file, in line order; an empty list when it is valid.

    Lengths are checked when a tokenizer, a `max_tokens` or a `tokenizer_dir` (a model folder) is
    given; without a tokenizer, the model folder's (default: the embedded base model) is loaded.
    The limit defaults to the model's context, at most 2048 tokens. Otherwise only the structure.
    """
    return check(path, max_tokens=max_tokens, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir).problems


def read_valid(path: Path) -> list[Example]:
    """The examples of a file that must be fully valid; DatasetInvalidError otherwise."""
    examples, problems = read_jsonl(path)
    if problems:
        raise DatasetInvalidError(path, problems)
    return examples
