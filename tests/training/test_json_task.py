"""A structured-output task made from the demo's data: JSON answers, scored per field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import read_demo
from training.dataset import Example, write_jsonl

URGENT = {"lost_or_stolen_card", "declined_card_payment", "transfer_not_received_by_recipient"}
SYSTEM = 'Answer with a JSON object: {"intent": <the intent>, "urgent": <true or false>}.'


def _example(text: str, label: str) -> Example:
    return Example.from_turns(text, json.dumps({"intent": label, "urgent": label in URGENT}), SYSTEM)


@pytest.mark.slow
def test_json_answers_train_and_are_scored_per_field(tmp_path: Path, base_model_dir: Path) -> None:
    from training.config import TrainConfig
    from training.evaluate import evaluate
    from training.train import train

    per_label: dict[str, list[str]] = {}
    for text, label in read_demo():
        per_label.setdefault(label, []).append(text)
    train_set = [_example(t, lab) for lab, texts in per_label.items() for t in texts[:3]]
    test_set = [_example(t, lab) for lab, texts in per_label.items() for t in texts[3:4]]
    write_jsonl(tmp_path / "train.jsonl", train_set)
    write_jsonl(tmp_path / "test.jsonl", test_set)
    result = train(
        TrainConfig(epochs=1, batch_size=10, learning_rate=1e-3, rank=8, target_modules=["q_proj", "v_proj"]),
        tmp_path / "train.jsonl",
        None,
        tmp_path / "adapter",
        progress=False,
    )
    assert result.labels is not None  # few distinct answers: the trainer may see a label set...
    report = evaluate(tmp_path / "test.jsonl", tmp_path / "adapter", train_path=tmp_path / "train.jsonl")
    assert report.labels is None  # ...but the answers are JSON objects: scored per field, not as labels
    for name in ("base", "tuned"):
        scores = report.models[name].json_scores
        assert scores is not None and set(scores.fields) == {"intent", "urgent"}
        assert report.models[name].choice is None
        assert report.summary[name]["accuracy"] == scores.exact_match
        assert report.summary[name]["json_validity"] == scores.validity
    assert "JSON answers" in report.render()
