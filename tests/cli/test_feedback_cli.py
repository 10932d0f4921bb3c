"""`lorafleet feedback export`: answers with feedback become chat JSONL that `data check` takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lorafleet.registry import NewVersion, Registry
from monitor.feedback import open_store

ROOT = Path(__file__).resolve().parents[2]
V1 = "banking-v1-20261201"
SYSTEM = "Classify the customer message."


LORAFLEET = Path(sys.executable).parent / "lorafleet"


def lorafleet(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LORAFLEET, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300)


def _split(path: Path, texts: list[tuple[str, str]]) -> Path:
    lines = [
        json.dumps({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": t},
                                 {"role": "assistant", "content": lab}]})
        for t, lab in texts
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def test_export_writes_the_right_answers_leaves_test_leaks_out_and_says_where_they_came_from(
    tmp_path: Path,
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    test_split = _split(tmp_path / "test.jsonl", [("What is my PIN?", "change_pin")])
    train_split = _split(tmp_path / "train.jsonl", [("Where is my card?", "card_arrival")])
    registry = Registry(tmp_path / "registry")
    version = registry.register(
        "banking",
        NewVersion(
            adapter_dir=adapter,
            base_model="base",
            files={"splits/test.jsonl": test_split, "splits/train.jsonl": train_split},
        ),
    ).name
    store_path = tmp_path / "feedback.sqlite3"
    with open_store(store_path, lookup_grace_s=0) as store:
        rows = [
            ("a", "My card has not come", "card_arrival", {"label": "card_arrival"}),  # right: kept
            ("b", "I want to stop a transfer", "change_pin", {"label": "cancel_transfer"}),  # corrected
            ("c", "What is my PIN?", "card_arrival", {"label": "change_pin"}),  # in the test split: left out
            ("d", "Where is my card?", "card_arrival", {"correct": True}),  # in the train split: counted
            ("e", "Something else", "lost_card", {"correct": False}),  # wrong, no label: no answer to learn
        ]
        for cid, text, answer, verdict in rows:
            store.record_answer(cid, "banking", version, answer, answer, input_text=text, system=SYSTEM)
            store.add_feedback(cid, **verdict)  # type: ignore[arg-type]
    out = tmp_path / "next.jsonl"
    proc = lorafleet(
        "feedback",
        "export",
        "--store",
        store_path,
        "--version",
        version,
        "--registry",
        registry.root,
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [[m["content"] for m in e["messages"]] for e in exported] == [
        [SYSTEM, "My card has not come", "card_arrival"],
        [SYSTEM, "I want to stop a transfer", "cancel_transfer"],
        [SYSTEM, "Where is my card?", "card_arrival"],
    ]
    manifest = json.loads((tmp_path / "next.jsonl.manifest.json").read_text())
    assert (manifest["exported"], manifest["left_out_test_leaks"], manifest["in_training_split"]) == (3, 1, 1)
    assert manifest["skipped_no_answer"] == 1 and manifest["store"] == str(store_path)
    assert "1 left out (in its test split)" in proc.stderr
    check = lorafleet("data", "check", out)
    assert check.returncode == 0, check.stdout + check.stderr
    corrected = tmp_path / "corrected.jsonl"
    proc = lorafleet("feedback", "export", "--store", store_path, "--corrected-only", "--out", corrected)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["messages"][-1]["content"] for line in corrected.read_text().splitlines()] == [
        "cancel_transfer",
        "change_pin",
    ]
    assert "not checked for leakage" in proc.stderr
