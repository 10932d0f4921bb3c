"""Errors of the training package: what a user sees when data or training inputs are wrong.

    LorafleetError
     +-- TrainingError               base of every training error
          +-- DatasetInvalidError    a chat JSONL file has problems (carries them all)
          +-- CsvImportError         a CSV cannot be imported (carries every bad row and column)
          +-- OutputExistsError      an output would overwrite files already there
          +-- SplitError             a split cannot be made as asked (bad ratios)
          +-- TokenizerError         the base model's tokenizer cannot be loaded or used
          +-- StageFailedError       `lorafleet finetune` stopped at a stage (names the stage)

`training.dataset.DatasetError` (raised by `load_examples`) is converted to DatasetInvalidError at
the boundary, so that the CLI prints it as one message and a hint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lorafleet.errors import LorafleetError
from training.dataset import Problem

_SHOWN = 20


def _listing(problems: Sequence[Problem]) -> str:
    shown = "\n".join(f"  {p}" for p in problems[:_SHOWN])
    more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return shown + more


class TrainingError(LorafleetError):
    pass


class DatasetInvalidError(TrainingError):
    def __init__(self, path: Path | str, problems: Sequence[Problem]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(
            f"{self.path} cannot be read as chat JSONL: {n} problem{'' if n == 1 else 's'}\n"
            + _listing(self.problems),
            hint=f"run `lorafleet data check {self.path}` to list every problem, fix them, then retry",
        )


class CsvImportError(TrainingError):
    def __init__(self, path: Path | str, problems: Sequence[Problem]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(
            f"{self.path} cannot be imported: {n} problem{'' if n == 1 else 's'}\n" + _listing(self.problems),
            hint="fix the CSV (or name its columns with --text-column/--label-column) and run it again",
        )


class OutputExistsError(TrainingError):
    pass


class SplitError(TrainingError):
    pass


class TokenizerError(TrainingError):
    pass


class StageFailedError(TrainingError):
    """A stage of `lorafleet finetune` failed; the message names the stage and what went wrong."""

    def __init__(self, stage: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"finetune stopped at the {stage} stage: {message}", hint=hint)
        self.stage = stage


def describe_exception(exc: BaseException) -> str:
    """One line for an error that is not lorafleet's: `file: reason` for an OSError, else its message."""
    if isinstance(exc, OSError) and exc.strerror:
        # A rename's or copy's target (filename2) is the file the user named; its source is ours.
        name = exc.filename2 if exc.filename2 is not None else exc.filename
        return f"{name}: {exc.strerror}" if name is not None else exc.strerror
    text = " ".join(str(exc).split())
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__
