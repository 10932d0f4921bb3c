"""Metrics for tasks beyond labels: structured (JSON) answers and free text.

    task_kind(answers)          LABELS (a label set), JSON (every answer a JSON object) or TEXT
    json_scores(expected, got)  validity rate, exact match of the whole object, accuracy of each field
                                of the expected objects, and the wrong values listed per field
    text_scores(expected, got)  exact match, normalised match (case, whitespace, punctuation), and
                                token-overlap F1 (SQuAD's: the harmonic mean of token precision and
                                recall, per answer, averaged)

Each gives, per example, whether it counts as right (`correct`: the whole object equal; the
normalised text equal), which the paired tests of training/significance.py compare.
"""

from __future__ import annotations

import enum
import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

MAX_LISTED = 20  # wrong values listed per field


class TaskKind(enum.StrEnum):
    LABELS = "labels"
    JSON = "json"
    TEXT = "text"


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def task_kind(answers: Sequence[str], labels: Sequence[str] | None) -> TaskKind:
    """JSON when every answer is a JSON object (even when few distinct ones repeat: fields say more
    than a label set would), else LABELS when the answers form a label set, else TEXT."""
    if answers and all(_object(a) is not None for a in answers):
        return TaskKind.JSON
    if labels:
        return TaskKind.LABELS
    return TaskKind.TEXT


class FieldError(BaseModel):
    example: int = Field(description="Index of the test example.")
    expected: Any
    got: Any


class FieldScore(BaseModel):
    accuracy: float = Field(description="Share of the examples whose answer has this field equal.")
    missing: int = Field(description="Answers (valid JSON objects) without the field.")
    errors: list[FieldError] = Field(description=f"The first {MAX_LISTED} wrong values.")


class JsonScores(BaseModel):
    validity: float = Field(description="Share of answers that are a JSON object.")
    exact_match: float = Field(description="Share of answers whose whole object equals the expected one.")
    fields: dict[str, FieldScore]
    correct: list[bool]


class TextScores(BaseModel):
    exact_match: float
    normalised_match: float = Field(
        description="Equal after lowercasing, removing punctuation and extra spaces."
    )
    token_f1: float = Field(description="Mean token-overlap F1 (SQuAD's definition).")
    correct: list[bool] = Field(description="Normalised match per example.")


def json_scores(expected: Sequence[str], got: Sequence[str]) -> JsonScores:
    n = len(expected)
    wanted = [_object(e) or {} for e in expected]
    answers = [_object(g) for g in got]
    names = sorted({k for w in wanted for k in w})
    fields: dict[str, FieldScore] = {}
    for name in names:
        right, missing = 0, 0
        errors: list[FieldError] = []
        for i, (w, a) in enumerate(zip(wanted, answers, strict=True)):
            if name not in w:
                continue
            if a is not None and name not in a:
                missing += 1
            value = a.get(name) if a is not None else None
            if a is not None and name in a and value == w[name]:
                right += 1
            elif len(errors) < MAX_LISTED:
                errors.append(FieldError(example=i, expected=w[name], got=value if a is not None else got[i]))
        present = sum(1 for w in wanted if name in w)
        fields[name] = FieldScore(
            accuracy=right / present if present else 0.0, missing=missing, errors=errors
        )
    correct = [a is not None and a == w for w, a in zip(wanted, answers, strict=True)]
    return JsonScores(
        validity=sum(a is not None for a in answers) / n if n else 0.0,
        exact_match=sum(correct) / n if n else 0.0,
        fields=fields,
        correct=correct,
    )


_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalise_text(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def token_f1(expected: str, got: str) -> float:
    want, have = normalise_text(expected).split(), normalise_text(got).split()
    if not want or not have:
        return float(want == have)
    common = sum((Counter(want) & Counter(have)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(have), common / len(want)
    return 2 * precision * recall / (precision + recall)


def text_scores(expected: Sequence[str], got: Sequence[str]) -> TextScores:
    n = len(expected)
    correct = [normalise_text(e) == normalise_text(g) for e, g in zip(expected, got, strict=True)]
    return TextScores(
        exact_match=sum(e.strip() == g.strip() for e, g in zip(expected, got, strict=True)) / n if n else 0.0,
        normalised_match=sum(correct) / n if n else 0.0,
        token_f1=sum(token_f1(e, g) for e, g in zip(expected, got, strict=True)) / n if n else 0.0,
        correct=correct,
    )
