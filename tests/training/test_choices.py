"""Constrained choice among the labels with the embedded model: the answers are always labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.choices import LabelTrie
from training.dataset import write_jsonl
from training.train import answer_token_ids, load_tokenizer

LABELS = ["card_arrival", "card_about_to_expire", "change_pin", "cancel_transfer"]


def test_the_trie_holds_each_label_as_training_wrote_it(base_model_dir: Path) -> None:
    tokenizer = load_tokenizer(base_model_dir)
    end = tokenizer.eos_token_id
    trie = LabelTrie.build(tokenizer, LABELS, end)
    for label in LABELS:
        ids = answer_token_ids(tokenizer, label)
        assert end in ids  # the chat template ends the answer with the end-of-turn token
        path = ids[: ids.index(end) + 1]
        for i, token in enumerate(path):
            assert token in trie.allowed(path[:i])
        assert trie.label_of(path) == label
        assert trie.allowed(path) == [end]  # a label is complete: only its end may follow
    # Labels sharing their first tokens share the first steps of the trie.
    assert len(trie.allowed([])) < len(LABELS)
    assert trie.label_of(tokenizer("card", add_special_tokens=False).input_ids) is None
    assert trie.max_tokens() == max(len(answer_token_ids(tokenizer, lab)) for lab in LABELS) - 1


@pytest.mark.slow
def test_constrained_answers_are_always_labels_where_free_ones_are_not(
    tmp_path: Path, tiny_task: object, trained_registry: tuple[object, list[str]]
) -> None:
    from lorafleet.registry import Registry
    from training.dataset import Example
    from training.evaluate import evaluate

    registry, names = trained_registry
    assert isinstance(registry, Registry)
    task = tiny_task
    labels: list[str] = task.labels  # type: ignore[attr-defined]
    system: str = task.system  # type: ignore[attr-defined]
    test = [Example.from_turns(text, label, system) for text, label in task.test]  # type: ignore[attr-defined]
    write_jsonl(tmp_path / "test.jsonl", test)
    write_jsonl(tmp_path / "train.jsonl", task.train)  # type: ignore[attr-defined]
    report = evaluate(
        tmp_path / "test.jsonl",
        registry.get(names[0]).adapter_path,
        train_path=tmp_path / "train.jsonl",
        batch_size=8,
    )
    for name in ("base", "tuned"):
        result = report.models[name]
        assert result.choice is not None
        assert set(result.choice.answers) <= set(labels), result.choice.answers
        assert result.in_label_set is not None
        assert report.summary[name]["accuracy"] == result.choice.scores.accuracy
        assert report.summary[name]["accuracy_free"] == result.scores.accuracy
    # The base model, free, never answers with a bare label here; constrained, it must.
    assert report.models["base"].in_label_set == 0.0
