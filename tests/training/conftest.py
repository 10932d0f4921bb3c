"""Fixtures shared by the training tests: a tiny labelled dataset and one adapter trained on it.

Training is real (the embedded SmolLM2-135M-Instruct, a few optimiser steps on CPU), done once per
session and shared, because the machine's two cores are shared too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

LABELS = ("card_arrival", "change_pin", "exchange_rate", "lost_card")
TEXTS = {
    "card_arrival": ["Where is my new card?", "My card has not arrived yet", "When will the card come?"],
    "change_pin": ["How do I change my PIN?", "I want a new PIN code", "Can I reset my PIN number?"],
    "exchange_rate": ["What is the euro exchange rate?", "How much is a dollar in pounds?", "Rate for yen?"],
    "lost_card": ["I lost my card", "My card was stolen yesterday", "I can't find my card anywhere"],
}
SYSTEM = f"Classify the customer message into exactly one of these labels: {', '.join(LABELS)}. Answer with the label only."


def line(text: str, label: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": text},
                {"role": "assistant", "content": label},
            ]
        }
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Chat JSONL files: train (24 examples: 3 per label, twice), val and test (4 each)."""
    root = tmp_path_factory.mktemp("tiny-data")
    train = [line(t, lab) for _ in range(2) for lab in LABELS for t in TEXTS[lab]]
    val = [line(f"Please help: {TEXTS[lab][0].lower()}", lab) for lab in LABELS]
    test = [line(f"Hello, {TEXTS[lab][1].lower()}", lab) for lab in LABELS]
    files = {"train": root / "train.jsonl", "val": root / "val.jsonl", "test": root / "test.jsonl"}
    for name, rows in (("train", train), ("val", val), ("test", test)):
        files[name].write_text("\n".join(rows) + "\n")
    return files


@pytest.fixture(scope="session")
def tiny_adapter(tiny_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained with the `lorafleet train` defaults for 3 steps (1 epoch of 24 examples)."""
    from training.config import TrainConfig
    from training.train import train

    out = tmp_path_factory.mktemp("tiny-adapter") / "adapter"
    train(TrainConfig(epochs=1), tiny_data["train"], tiny_data["val"], out, progress=False)
    return out
