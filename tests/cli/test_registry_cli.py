"""`lorafleet registry list|show` on a version that `lorafleet finetune` really trained and registered."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

LORAFLEET = Path(sys.executable).parent / "lorafleet"
LABELS = {
    "card_arrival": ["card", "arrived", "delivery", "post", "mail", "came", "shipping", "envelope"],
    "lost_card": ["lost", "stolen", "missing", "thief", "dropped", "gone", "wallet", "robbed"],
}


def lorafleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LORAFLEET, *map(str, args)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-registry")
    data = root / "cards.csv"
    rows = ["text,label"] + [
        f"my {w} card question number {i},{lab}" for lab, ws in LABELS.items() for i, w in enumerate(ws)
    ]
    data.write_text("\n".join(rows) + "\n")
    proc = lorafleet(
        "finetune", data, "--task", "cards", "--registry", root / "reg", "--epochs", "1", "--quiet"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "reg"


def test_list_prints_each_version_with_base_and_tuned_accuracy(registry: Path) -> None:
    name = f"cards-v1-{dt.date.today():%Y%m%d}"
    proc = lorafleet("registry", "list", "--registry", registry)
    assert proc.returncode == 0, proc.stderr
    header, _rule, row = proc.stdout.strip().splitlines()
    assert header.split() == ["version", "created", "base", "acc", "tuned", "acc", "tuned", "macro-F1"]
    cells = row.split()
    assert cells[0] == name
    for value in cells[-3:]:
        assert 0.0 <= float(value) <= 1.0  # base acc, tuned acc and tuned macro-F1 all filled in

    listed = json.loads(lorafleet("registry", "list", "--registry", registry, "--json").stdout)
    assert [v["name"] for v in listed] == [name]
    assert set(listed[0]["metrics"]) == {"base", "tuned"}


def test_show_prints_the_card_and_json_has_both_models_metrics(registry: Path) -> None:
    proc = lorafleet("registry", "show", "cards", "--registry", registry)
    assert proc.returncode == 0, proc.stderr
    assert "## Evaluation on the held-out test split" in proc.stdout
    assert "| base |" in proc.stdout and "| tuned |" in proc.stdout
    assert "fine-tuning" in proc.stdout  # the verdict

    shown = json.loads(lorafleet("registry", "show", "cards", "--registry", registry, "--json").stdout)
    for model in ("base", "tuned"):
        metrics = shown["metrics"][model]
        assert set(metrics) == {"accuracy", "macro_f1", "exact_match", "examples"}
        assert shown["card"]["metrics"][model]["accuracy"] == metrics["accuracy"]
    assert shown["eval"]["summary"] == shown["metrics"]
    assert shown["eval"]["models"]["tuned"]["errors"] is not None
