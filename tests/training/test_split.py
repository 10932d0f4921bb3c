"""Split invariants: no input on two sides, stratification, determinism per seed, the manifest."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from training.dataset import Example, load_examples
from training.errors import DatasetInvalidError, OutputExistsError, SplitError
from training.split import (
    MANIFEST_FILE,
    SplitManifest,
    input_key,
    similar_across,
    split_examples,
    split_file,
)

# Random word sequences over this vocabulary share few character trigrams: no two generated inputs
# are near duplicates unless a test plants one.
VOCABULARY = [
    "account",
    "balance",
    "card",
    "transfer",
    "payment",
    "refund",
    "limit",
    "pin",
    "phone",
    "app",
    "cash",
    "atm",
    "fee",
    "charge",
    "euro",
    "pound",
    "dollar",
    "travel",
    "abroad",
    "online",
    "shop",
    "order",
    "delivery",
    "address",
    "verify",
    "identity",
    "passport",
    "selfie",
    "blocked",
    "frozen",
    "stolen",
    "lost",
    "found",
    "expired",
    "renew",
    "contactless",
    "chip",
    "wallet",
    "merchant",
    "receipt",
    "statement",
    "monthly",
    "weekly",
    "yesterday",
    "tomorrow",
    "morning",
    "evening",
    "urgent",
    "quickly",
    "slowly",
    "never",
    "always",
    "please",
    "thanks",
    "hello",
]
RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


def labelled(sizes: dict[str, int], seed: int = 0) -> list[Example]:
    """`sizes[label]` examples per label with distinct random inputs, shuffled, numbered as lines."""
    rng = random.Random(seed)
    texts: set[str] = set()
    pairs = []
    for label, n in sizes.items():
        for _ in range(n):
            text = " ".join(rng.sample(VOCABULARY, 7))
            while text in texts:
                text = " ".join(rng.sample(VOCABULARY, 7))
            texts.add(text)
            pairs.append((text, label))
    rng.shuffle(pairs)
    return [
        Example(Example.from_turns(t.capitalize() + "?", a).messages, line=i + 1)
        for i, (t, a) in enumerate(pairs)
    ]


def write(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(json.dumps(e.to_json()) + "\n" for e in examples))
    return path


SIZES = {"a": 101, "b": 50, "c": 23, "d": 10, "e": 7, "f": 5}


def test_splits_partition_the_examples_with_no_input_on_two_sides() -> None:
    examples = labelled(SIZES)
    splits = split_examples(examples, seed=3)
    assert sorted(e.line for part in splits.values() for e in part) == [e.line for e in examples]
    keys = {name: [input_key(e) for e in part] for name, part in splits.items()}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not set(keys[a]) & set(keys[b])
        assert similar_across(keys[a], keys[b]) == []


def test_each_label_is_within_one_example_of_the_exact_ratio() -> None:
    examples = labelled(SIZES)
    for seed in range(5):
        for name, part in split_examples(examples, seed=seed).items():
            counts = Counter(e.answer for e in part)
            for label, n in SIZES.items():
                assert abs(counts[label] - n * RATIOS[name]) <= 1, (seed, name, label, counts[label])


@pytest.mark.parametrize("n", [3, 4])
def test_a_label_with_three_or_four_examples_is_in_every_split(n: int) -> None:
    splits = split_examples(labelled({"big": 40, "small": n}), seed=0)
    assert all(Counter(e.answer for e in part)["small"] >= 1 for part in splits.values())


def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    examples = labelled(SIZES)
    first, again = split_examples(examples, seed=7), split_examples(examples, seed=7)
    assert first == again
    other = split_examples(examples, seed=8)
    assert [e.line for e in other["test"]] != [e.line for e in first["test"]]
    # Counts per label do not depend on the seed; only which examples.
    assert Counter(e.answer for e in other["test"]) == Counter(e.answer for e in first["test"])


def test_duplicates_and_near_duplicates_stay_on_one_side() -> None:
    examples = labelled({"a": 30, "b": 30})
    base = examples[0]
    planted = [
        Example.from_turns(base.user_text.upper() + "!!", base.answer),  # same normalised input
        Example.from_turns("  " + base.user_text.replace(" ", "  ") + "", base.answer),  # whitespace
        Example.from_turns(base.user_text[:-1] + " please?", base.answer),  # near: one word more
    ]
    assert similar_across([input_key(planted[2])], [input_key(base)]) != []
    examples += [Example(p.messages, line=len(examples) + i + 1) for i, p in enumerate(planted)]
    for seed in range(10):
        splits = split_examples(examples, seed=seed)
        sides = {name for name, part in splits.items() for e in part if e.line in {1, 61, 62, 63}}
        assert len(sides) == 1, (seed, sides)


def test_free_text_answers_are_split_without_stratification(tmp_path: Path) -> None:
    examples = [
        Example(Example.from_turns(e.user_text, f"answer number {i}: {e.user_text}").messages, line=i + 1)
        for i, e in enumerate(labelled({"x": 50}))
    ]
    manifest = split_file(write(tmp_path / "free.jsonl", examples), tmp_path / "out")
    assert manifest.stratified is False and manifest.label_counts is None
    assert manifest.counts == {"train": 40, "val": 5, "test": 5}


def test_bad_ratios_are_refused() -> None:
    with pytest.raises(SplitError, match="summing to 1"):
        split_examples(labelled({"a": 10}), ratios=(0.8, 0.1, 0.2))


def test_split_file_writes_the_splits_and_a_manifest_with_their_hashes(tmp_path: Path) -> None:
    source = write(tmp_path / "data.jsonl", labelled(SIZES))
    out = tmp_path / "splits"
    manifest = split_file(source, out, seed=5)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
    assert SplitManifest.model_validate_json((out / MANIFEST_FILE).read_text()) == manifest
    assert manifest.seed == 5 and manifest.stratified
    assert manifest.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    for name in ("train", "val", "test"):
        data = (out / f"{name}.jsonl").read_bytes()
        assert manifest.sha256[name] == hashlib.sha256(data).hexdigest()
        part = load_examples(out / f"{name}.jsonl")
        assert manifest.counts[name] == len(part)
        assert manifest.label_counts is not None
        assert manifest.label_counts[name] == dict(sorted(Counter(e.answer for e in part).items()))
    assert sum(manifest.counts.values()) == sum(SIZES.values())


def test_split_file_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    source = write(tmp_path / "data.jsonl", labelled(SIZES))
    first = split_file(source, tmp_path / "one", seed=2)
    second = split_file(source, tmp_path / "two", seed=2)
    assert first.sha256 == second.sha256
    assert (tmp_path / "one" / MANIFEST_FILE).read_bytes() == (tmp_path / "two" / MANIFEST_FILE).read_bytes()


def test_a_non_empty_folder_is_refused_unless_forced(tmp_path: Path) -> None:
    source = write(tmp_path / "data.jsonl", labelled({"a": 20, "b": 20}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        split_file(source, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    split_file(source, out, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "train.jsonl").is_file()


def test_an_invalid_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"messages": []}\n')
    with pytest.raises(DatasetInvalidError):
        split_file(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def numbered(pairs: list[tuple[str, str]]) -> list[Example]:
    return [Example(Example.from_turns(t, a).messages, line=i + 1) for i, (t, a) in enumerate(pairs)]


def test_templated_inputs_that_differ_in_a_number_split_80_10_10(tmp_path: Path) -> None:
    examples = numbered(
        [(f"What is the status of my order number {1000 + i} please", "order") for i in range(100)]
    )
    manifest = split_file(write(tmp_path / "templated.jsonl", examples), tmp_path / "out")
    assert manifest.counts == {"train": 80, "val": 10, "test": 10}
    assert manifest.warnings == []


def test_near_duplicates_group_around_one_input_not_in_a_chain(tmp_path: Path) -> None:
    chain = [
        "My card has not arrived yet and I am worried",
        "My card has not arrived yet and I am very worried",
        "My card has still not arrived yet and I am very worried",
        "My new card has still not arrived yet and I am very worried now",
    ]
    keys = [input_key(e) for e in numbered([(t, "x") for t in chain])]
    # Each is a near duplicate of the next only: a chain, which must not become one group.
    assert [(i, j) for i, j, _ in similar_across(keys, keys) if i < j] == [(0, 1), (1, 2), (2, 3)]
    examples = numbered([(t, "card_arrival") for t in chain] + [(t, "other") for t, _ in _random_pairs(16)])
    manifest = split_file(write(tmp_path / "chain.jsonl", examples), tmp_path / "out")
    assert manifest.groups == 2 + 16
    splits = {name: load_examples(tmp_path / "out" / f"{name}.jsonl") for name in ("train", "val", "test")}
    side = {e.user_text: name for name, part in splits.items() for e in part}
    assert side[chain[0]] == side[chain[1]] and side[chain[2]] == side[chain[3]]


def _random_pairs(n: int) -> list[tuple[str, str]]:
    return [(e.user_text, e.answer) for e in labelled({"other": n}, seed=11)]


def test_many_small_labels_still_fill_val_and_test(tmp_path: Path) -> None:
    sizes = {f"label_{k}": 2 for k in range(10)}
    examples = labelled(sizes)
    manifest = split_file(write(tmp_path / "small.jsonl", examples), tmp_path / "out")
    assert manifest.counts == {"train": 16, "val": 2, "test": 2}
    assert manifest.label_counts is not None
    for name, per_label in manifest.label_counts.items():
        for label, n in sizes.items():
            assert abs(per_label.get(label, 0) - n * RATIOS[name]) <= 1, (name, label)


def test_a_split_left_empty_says_why(tmp_path: Path) -> None:
    examples = numbered([("Where is my card?", "card_arrival"), ("where is my card", "card_arrival")] * 3)
    manifest = split_file(write(tmp_path / "same.jsonl", examples), tmp_path / "out")
    assert manifest.counts == {"train": 6, "val": 0, "test": 0}
    assert manifest.warnings == [
        f"the {name} split is empty: the 6 examples form 1 group of equal or near-duplicate inputs "
        "(the largest holds 6), and a group stays in one split; `lorafleet data audit` lists the near duplicates"
        for name in ("val", "test")
    ]
