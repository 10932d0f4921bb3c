"""`lorafleet finetune`: the whole loop on a tiny CSV, and stopping at the first failing stage."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lorafleet.modelcard import ModelCard
from lorafleet.registry import AdapterRef, ReferenceStats, Registry

LORAFLEET = Path(sys.executable).parent / "lorafleet"
WORDS = {
    "card_arrival": ["card", "arrived", "delivery", "post", "mail", "came", "shipping", "envelope"],
    "change_pin": ["pin", "code", "digits", "reset", "number", "secret", "change", "new"],
    "lost_card": ["lost", "stolen", "missing", "thief", "dropped", "gone", "wallet", "robbed"],
}


def tiny_csv(path: Path) -> Path:
    """8 rows per label, distinct enough that the split's near-duplicate grouping keeps them apart."""
    rows = ["text,label"]
    for label, words in WORDS.items():
        rows += [f"question {i} about the {w} of my account,{label}" for i, w in enumerate(words)]
    path.write_text("\n".join(rows) + "\n")
    return path


def lorafleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LORAFLEET, *map(str, args)], capture_output=True, text=True, timeout=900)


def test_finetune_stops_at_the_check_stage_for_a_broken_file(tmp_path: Path) -> None:
    data = tmp_path / "broken.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "Where is my card?"}, {"role": "assistant", "content": "card_arrival"}]}\n'
        '{"messages": [{"role": "user", "content": "hi"}]}\n'
        "not json\n"
    )
    registry = tmp_path / "registry"
    proc = lorafleet("finetune", data, "--task", "banking", "--registry", registry)
    assert proc.returncode == 1
    assert "finetune stopped at the check stage: 2 problems" in proc.stderr
    assert f"{data}:2: messages: no final assistant turn" in proc.stderr
    assert f"{data}:3: (line): not valid JSON" in proc.stderr
    assert "[train]" not in proc.stderr and "Traceback" not in proc.stderr
    assert Registry(registry).versions() == []


def test_finetune_names_the_valid_target_modules_before_any_stage(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    proc = lorafleet(
        "finetune", tiny_csv(tmp_path / "tiny.csv"), "--task", "tiny", "--registry", registry,
        "--target-modules", "q_proj,foo",
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == (
        "error: --target-modules: foo is not a layer of SmolLM2-135M-Instruct; its layers LoRA can adapt "
        "are: embed_tokens, q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"
    )
    assert "[check]" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_finetune_refuses_cuda_where_there_is_none_before_any_stage(tmp_path: Path) -> None:
    proc = lorafleet(
        "finetune", tiny_csv(tmp_path / "tiny.csv"), "--task", "tiny", "--registry", tmp_path / "r", "--device", "cuda"
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: --device cuda: CUDA is not available")
    assert "--device cpu" in proc.stderr and "[check]" not in proc.stderr


def test_finetune_refuses_a_registry_or_work_dir_that_is_a_file(tmp_path: Path) -> None:
    data, a_file = tiny_csv(tmp_path / "tiny.csv"), tmp_path / "notes.txt"
    a_file.write_text("mine")
    proc = lorafleet("finetune", data, "--task", "tiny", "--registry", a_file)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == f"error: the registry {a_file} is a file, not a folder"
    proc = lorafleet("finetune", data, "--task", "tiny", "--registry", tmp_path / "r", "--work-dir", a_file)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == f"error: --work-dir {a_file} is a file, not a folder"
    assert "[import]" not in proc.stderr and a_file.read_text() == "mine"


def test_an_unexpected_error_inside_a_stage_is_one_line_naming_the_stage(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "tiny.jsonl").mkdir(parents=True)  # where the import stage writes the converted CSV
    proc = lorafleet(
        "finetune", tiny_csv(tmp_path / "tiny.csv"), "--task", "tiny", "--registry", tmp_path / "r", "--work-dir", work
    )  # fmt: skip
    assert proc.returncode == 1
    assert (
        f"error: finetune stopped at the import stage: {work / 'tiny.jsonl'}: Is a directory" in proc.stderr
    )
    assert "LORAFLEET_DEBUG=1" in proc.stderr and "Traceback" not in proc.stderr


def test_finetune_stops_at_the_split_stage_when_the_test_split_would_be_empty(tmp_path: Path) -> None:
    # A semicolon CSV with its own column names, as a spreadsheet in many locales exports it.
    data = tmp_path / "same.csv"
    data.write_text(
        "question;intent\n" + "Where is my card?;card_arrival\nwhere is my card;card_arrival\n" * 5
    )
    proc = lorafleet(
        "finetune", data, "--task", "tiny", "--registry", tmp_path / "r",
        "--text-column", "question", "--label-column", "intent", "--system", "Classify the message.",
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"[import] 10 examples from {data}, with the given system prompt" in proc.stderr
    assert (
        "error: finetune stopped at the split stage: the test split is empty: the 10 examples form 1 group "
        "of equal or near-duplicate inputs (the largest holds 10)"
    ) in proc.stderr
    assert "[train]" not in proc.stderr


def test_finetune_a_csv_end_to_end_registers_a_complete_version(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    proc = lorafleet(
        "finetune", tiny_csv(tmp_path / "tiny.csv"), "--task", "tiny", "--registry", registry,
        "--epochs", "1", "--batch-size", "6", "--quiet", "--work-dir", tmp_path / "work",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("import", "check", "audit", "split", "baseline", "train", "eval", "register"):
        assert f"[{stage}] done in" in proc.stderr
    name = f"tiny-v1-{dt.date.today():%Y%m%d}"
    assert f"registered: {name}" in proc.stdout
    assert "verdict: fine-tuning" in proc.stdout

    version = Registry(registry).get(name)
    files = {p.relative_to(version.path).as_posix() for p in version.path.rglob("*") if p.is_file()}
    assert files == {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "README.md", "version.json",
        "eval.json", "reference.json", "train_config.json", "loss_history.json", "split_manifest.json",
        "confusion.png", "loss.png", "splits/train.jsonl", "splits/val.jsonl", "splits/test.jsonl",
    }  # fmt: skip
    info = version.info()
    # Rank and the rest chosen from the data (only --epochs and --batch-size were given).
    assert (info.name, info.task, info.number, info.lora_rank) == (name, "tiny", 1, 16)
    assert (
        info.labels == sorted(WORDS) and info.helped is not None and info.verdict == report_verdict(version)
    )
    manifest = json.loads((version.path / "split_manifest.json").read_text())
    assert info.dataset_sha256 == {"source": manifest["source_sha256"], **manifest["sha256"]}

    report = version.eval_report()
    assert report is not None
    assert set(report["summary"]) == {"base", "tuned"}
    for model in ("base", "tuned"):
        assert set(report["summary"][model]) == {
            "accuracy",
            "macro_f1",
            "exact_match",
            "examples",
            "accuracy_free",
            "in_label_set",
        }
    assert report["comparison"]["baseline"] == "base"
    card = ModelCard.parse((version.path / "README.md").read_text())
    assert card.version == name and card.labels == sorted(WORDS)
    assert card.metrics["tuned"].accuracy == report["summary"]["tuned"]["accuracy"]
    assert card.hyperparameters["rank"] == 16 and card.verdict == report["verdict"]

    ref = version.reference()
    assert isinstance(ref, ReferenceStats)
    assert ref.examples == manifest["counts"]["train"]
    assert ref.labels is not None and ref.labels.labels == sorted(WORDS)
    assert ref.entropy_nats is not None and sum(ref.entropy_nats.counts) == manifest["counts"]["test"]
    assert ref.system_prompt is not None and "change_pin" in ref.system_prompt
    assert AdapterRef.parse(name).task == "tiny"


def report_verdict(version: Any) -> str:
    report = version.eval_report()
    assert report is not None
    return str(report["verdict"])


def test_the_config_files_seed_is_used_unless_seed_is_given(tmp_path: Path) -> None:
    data = tmp_path / "same.csv"  # stops at the split stage, after it names the seed
    data.write_text("text,label\n" + "Where is my card?,card_arrival\n" * 4)
    config = tmp_path / "my.yaml"
    config.write_text("seed: 7\n")
    proc = lorafleet("finetune", data, "--task", "tiny", "--registry", tmp_path / "r", "--config", config)
    assert "(seed 7)" in proc.stderr, proc.stderr
    proc = lorafleet(
        "finetune", data, "--task", "tiny", "--registry", tmp_path / "r", "--config", config, "--seed", "3"
    )
    assert "(seed 3)" in proc.stderr, proc.stderr


def test_finetune_of_a_rank_above_the_engines_default_says_how_to_serve_it(tmp_path: Path) -> None:
    proc = lorafleet(
        "finetune", tiny_csv(tmp_path / "tiny.csv"), "--task", "tiny", "--registry", tmp_path / "r",
        "--rank", "24", "--epochs", "0.2", "--skip-baseline", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = f"tiny-v1-{dt.date.today():%Y%m%d}"
    assert (
        f"note: LoRA rank 24: engines serve it with --max-lora-rank 32 or more (`lorafleet serve engine "
        f"--adapter {name}` sizes it; the default is 16)"
    ) in proc.stderr
