"""Pure metrics of a classification run: accuracy, macro-F1, per-label precision/recall, the confusion.
(Whether a difference between two models is real: training/significance.py.)

Definitions (what tests/training/test_scoring.py checks by hand):
- answers are compared after `normalize` (surrounding whitespace and trailing punctuation removed);
  given a label set, an answer, and the expected one alike, is the label it names as the gateway
  matches it live (`lorafleet.textstats.match_label`: also quotes and case), so offline and live
  accuracy agree;
  `exact_match` is plain string equality of the raw answer and the expected one;
- the labels are the given label set, else the distinct expected answers; an answer outside them is
  wrong, counts against the expected label's recall, and sits in the confusion's `OTHER` column;
- precision of a label = correct answers with it / answers with it (0 when never answered);
  recall = correct / expected; F1 their harmonic mean (0 when both are 0);
- macro-F1 is the unweighted mean F1 over the labels that occur in the expected answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from lorafleet.textstats import match_label

OTHER = "<other>"
_TRAILING_PUNCTUATION = ".!?,;:"


def normalize(answer: str) -> str:
    """The answer as compared for classification: stripped of whitespace and trailing punctuation."""
    return answer.strip().rstrip(_TRAILING_PUNCTUATION).strip()


class LabelScore(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class Confusion(BaseModel):
    """`matrix[i][j]`: examples expected `labels[i]` and answered `columns[j]` (the last column is OTHER)."""

    labels: list[str]
    columns: list[str]
    matrix: list[list[int]]


class Scores(BaseModel):
    accuracy: float
    macro_f1: float
    exact_match: float
    examples: int
    per_label: dict[str, LabelScore]
    confusion: Confusion
    correct: list[bool] = Field(
        default_factory=list, description="Per test example, in order: answered right (for paired tests)."
    )

    def headline(self) -> dict[str, float | int]:
        """The four numbers `Registry.summary` and the model card show."""
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "exact_match": self.exact_match,
            "examples": self.examples,
        }


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def score(
    expected: Sequence[str], got: Sequence[str], labels: Sequence[str] | None = None, confusion: bool = True
) -> Scores:
    """Score answers `got` against `expected` (same order); see the module docstring.

    `confusion=False` (free text, JSON: every answer its own "label") leaves the per-label scores and
    the confusion out."""
    if len(expected) != len(got):
        raise ValueError(f"{len(expected)} expected answers but {len(got)} answers")
    gold = [normalize(e) for e in expected]
    if not confusion:
        correct = [g == normalize(a) for g, a in zip(gold, got, strict=True)]
        n = len(gold)
        return Scores(
            accuracy=_ratio(sum(correct), n),
            macro_f1=0.0,
            exact_match=_ratio(sum(e == g for e, g in zip(expected, got, strict=True)), n),
            examples=n,
            per_label={},
            confusion=Confusion(labels=[], columns=[], matrix=[]),
            correct=correct,
        )
    if labels:
        # The expected answer and the model's through the one matcher: a label that ends in
        # punctuation (BANKING77's `reverted_card_payment?`) is named by its own answer.
        label_list = sorted(set(labels))
        gold = [match_label(e, label_list) or g for e, g in zip(expected, gold, strict=True)]
        pred = [match_label(g, label_list) or OTHER for g in got]
    else:
        label_list = sorted(set(gold))
        pred = [normalize(g) for g in got]
    label_list += sorted(set(gold) - set(label_list))
    index = {lab: i for i, lab in enumerate(label_list)}
    columns = [*label_list, OTHER]
    matrix = [[0] * len(columns) for _ in label_list]
    for g, p in zip(gold, pred, strict=True):
        matrix[index[g]][index.get(p, len(label_list))] += 1

    per_label: dict[str, LabelScore] = {}
    for i, lab in enumerate(label_list):
        tp = matrix[i][i]
        support = sum(matrix[i])
        answered = sum(row[i] for row in matrix)
        precision, recall = _ratio(tp, answered), _ratio(tp, support)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[lab] = LabelScore(precision=precision, recall=recall, f1=f1, support=support)
    present = [s.f1 for s in per_label.values() if s.support]
    n = len(gold)
    correct = [g == p for g, p in zip(gold, pred, strict=True)]
    return Scores(
        accuracy=_ratio(sum(correct), n),
        macro_f1=sum(present) / len(present) if present else 0.0,
        exact_match=_ratio(sum(e == g for e, g in zip(expected, got, strict=True)), n),
        examples=n,
        per_label=per_label,
        confusion=Confusion(labels=label_list, columns=columns, matrix=matrix),
        correct=correct,
    )
