"""`lorafleet registry list|show` on a version that `lorafleet finetune` really trained and registered."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet.registry import Registry, VersionInfo

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
        assert {"accuracy", "macro_f1", "exact_match", "examples"} <= set(metrics)
        assert shown["card"]["metrics"][model]["accuracy"] == metrics["accuracy"]
    assert shown["eval"]["summary"] == shown["metrics"]
    assert shown["eval"]["models"]["tuned"]["errors"] is not None


def test_a_broken_version_folder_is_skipped_with_a_warning_and_show_names_it(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    with reg.new_version("cards") as draft:
        draft.adapter_path.mkdir()
        (draft.adapter_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}\n')
        (draft.path / "README.md").write_text("---\nlorafleet: {}\n---\n")
        draft.write_json(
            "version.json",
            VersionInfo(
                name=str(draft.ref), task="cards", number=1, created_at=dt.datetime.now(dt.UTC),
                base_model="base", adapter_sha256="0" * 64, lora_rank=8,
            ),
        )  # fmt: skip
        good = str(draft.ref)
    broken = reg.root / f"cards-v2-{dt.date.today():%Y%m%d}"
    broken.mkdir()  # a version folder copied by hand, without its version.json
    proc = lorafleet("registry", "list", "--registry", reg.root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[2].split()[0] == good
    assert f"warning: skipped {broken}: not a complete version: no version.json" in proc.stderr
    listed = json.loads(lorafleet("registry", "list", "--registry", reg.root, "--json").stdout)
    assert [v["name"] for v in listed] == [good]

    proc = lorafleet("registry", "show", broken.name, "--registry", reg.root)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == f"error: {broken} is not a complete version: no version.json"
    assert "Traceback" not in proc.stderr
    # `show cards` is the newest complete version, whose card here has an empty lorafleet block.
    proc = lorafleet("registry", "show", "cards", "--registry", reg.root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: the model card's lorafleet block is not valid:\n")
    assert f"{reg.root / good / 'README.md'}: version: Field required" in proc.stderr
