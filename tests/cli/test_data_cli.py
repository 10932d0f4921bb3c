"""`lorafleet data`: check, audit, split and import-csv on good and broken files, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from lorafleet.cli import app

LORAFLEET = Path(sys.executable).parent / "lorafleet"
DEMO_CSV = Path(__file__).resolve().parents[2] / "data" / "banking77" / "demo.csv"

GOOD = '{"messages": [{"role": "user", "content": "Where is my card?"}, {"role": "assistant", "content": "card_arrival"}]}'
BROKEN: dict[str, tuple[str | bytes, str]] = {
    # case: (the line, what `check` prints after FILE:2:)
    "bad JSON": ('{"messages": [{"role": "user"', "(line): not valid JSON"),
    "missing messages": ('{"conversation": []}', "messages: missing"),
    "empty messages": ('{"messages": []}', "messages: empty list"),
    "unknown role": (
        '{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "a"}]}',
        "messages[0].role: unknown role 'bot'",
    ),
    "empty content": (
        '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}',
        "messages[0].content: empty",
    ),
    "no final assistant turn": (
        '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "hi"}]}',
        "messages: no final assistant turn",
    ),
    "wrong types": (
        '{"messages": [["user", "hi"]]}',
        "messages[0]: expected an object with role and content",
    ),
    "not UTF-8": (b'{"messages": [{"role": "user", "content": "\xff"}]}', "(line): not UTF-8"),
    "over-long": (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "my card never arrived " * 30},
                    {"role": "assistant", "content": "card_arrival"},
                ]
            }
        ),
        "messages: too long:",
    ),
}


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed `lorafleet` script: what a user sees, error handling of main() included."""
    return subprocess.run([LORAFLEET, *map(str, args)], capture_output=True, text=True, timeout=120)


def write(path: Path, lines: Sequence[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def chat(user: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    )


def test_data_help_lists_the_commands() -> None:
    result = run("data", "--help")
    assert result.exit_code == 0
    for command in ("check", "audit", "split", "import-csv"):
        assert command in result.stdout


def test_check_a_good_file(tmp_path: Path, base_model_dir: Path) -> None:
    # base_model_dir: the model is prepared first, so that its one-time messages are not in the output.
    path = write(tmp_path / "good.jsonl", [GOOD, GOOD.replace("Where", "When")])
    result = run("data", "check", path)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.strip() == "2 examples, 0 problems"


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_names_each_broken_line(case: str, tmp_path: Path) -> None:
    line, expected = BROKEN[case]
    path = write(tmp_path / "data.jsonl", [GOOD, line])
    result = run("data", "check", path, "--max-tokens", "100")
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{path}:2: {expected}")
    assert result.stdout.count("\n") == 1
    assert result.stderr.strip() == "2 examples, 1 problem"


def test_check_reports_every_problem_as_json(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", [GOOD, *(BROKEN[case][0] for case in sorted(BROKEN))])
    result = run("data", "check", path, "--max-tokens", "100", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["examples"] == 1 + len(BROKEN) and report["valid"] == 1
    assert report["max_tokens"] == 100
    assert [p["line"] for p in report["problems"]] == list(range(2, len(BROKEN) + 2))
    assert set(report["problems"][0]) == {"file", "line", "field", "message"}


def test_check_never_shows_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", [b"\x80\x81", "{", '{"messages": 3}'])
    proc = run_script("data", "check", path)
    assert proc.returncode == 1
    first, second, third = proc.stdout.splitlines()
    assert first == f"{path}:1: (line): not UTF-8: byte 0x80 at 0"
    assert second.startswith(f"{path}:2: (line): not valid JSON: Expecting property name")
    assert third == f"{path}:3: messages: expected a list, got int"
    assert proc.stderr.strip() == "3 examples, 3 problems"
    missing = run_script("data", "check", tmp_path / "nope.jsonl")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stdout.strip() == f"{tmp_path / 'nope.jsonl'}:0: (file): no such file"


def test_audit_reports_planted_problems_and_exits_0(tmp_path: Path) -> None:
    rows = [
        chat("Where is my new card?", "card_arrival"),
        chat("where is my new card", "card_arrival"),
        chat("How do I change my PIN?", "change_pin"),
        chat("how do i change my pin", "card_arrival"),
        chat("I want to cancel a transfer", "cancel_transfer"),
        chat("Please cancel my last payment to John", "cancel_transfer"),
    ]
    path = write(tmp_path / "data.jsonl", rows)
    test = write(tmp_path / "test.jsonl", [chat("WHERE is my new card??", "card_arrival")])
    review = tmp_path / "review.jsonl"
    result = run("data", "audit", path, "--against", test, "--review-out", review, "--epochs", "2")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "1 extra copy in 1 group" in text
    assert "'how do i change my pin': 'change_pin' on lines 3; 'card_arrival' on lines 4" in text
    assert f"leakage: inputs also in {test}" in text and "2 exact, 0 near" in text
    assert "training cost, 2 epochs" in text
    assert review.is_file() and len(review.read_text().splitlines()) == 6
    assert "warnings" in result.stderr


def test_audit_json_has_the_report_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path / "data.jsonl",
        [chat(f"question {w}", "a" if i % 2 else "b") for i, w in enumerate("uvwxyz")],
    )
    result = run(
        "data", "audit", path, "--json", "--tokens-per-second", "1000", "--gpu-hourly-usd", "2",
        "--api-price-per-1m-usd", "8", "--seed", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["examples"] == 6
    assert report["labels"]["counts"] == {"a": 3, "b": 3}
    assert report["cost"]["tokens_per_second"] == 1000 and report["cost"]["gpu_hourly_usd"] == 2
    assert report["cost"]["api_cost_usd"] == pytest.approx(report["cost"]["training_tokens"] * 8 / 1e6)
    assert report["review"]["seed"] == 4 and report["review"]["path"] is None
    for key in ("duplicates", "near_duplicates", "conflicts", "leakage", "tokens", "warnings"):
        assert key in report


def test_audit_of_an_unreadable_file_says_to_run_check(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", [GOOD, "{"])
    proc = run_script("data", "audit", path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path} cannot be read as chat JSONL: 1 problem")
    assert f"{path}:2: (line): not valid JSON" in proc.stderr
    assert f"hint: run `lorafleet data check {path}`" in proc.stderr


def test_import_check_split_and_audit_the_demo_data(tmp_path: Path) -> None:
    data = tmp_path / "demo.jsonl"
    result = run("data", "import-csv", DEMO_CSV, "--out", data, "--system-from-labels")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"wrote 600 examples to {data}"
    assert run("data", "check", data).exit_code == 0

    out = tmp_path / "splits"
    result = run("data", "split", data, "--out", out, "--seed", "1", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["counts"] == {"train": 480, "val": 60, "test": 60}
    assert manifest["stratified"] is True
    assert all(n == 6 for n in manifest["label_counts"]["test"].values())

    result = run("data", "audit", out / "test.jsonl", "--against", out / "train.jsonl", "--json")
    assert result.exit_code == 0, result.output
    (leak,) = json.loads(result.stdout)["leakage"]
    assert (leak["exact"], leak["near"]) == (0, 0)


def test_split_refuses_a_non_empty_folder_without_force(tmp_path: Path) -> None:
    data = write(tmp_path / "data.jsonl", [chat(f"question number {w}", "a") for w in "abcdefghij"])
    out = tmp_path / "out"
    assert run("data", "split", data, "--out", out).exit_code == 0
    proc = run_script("data", "split", data, "--out", out)
    assert proc.returncode == 1
    assert (
        proc.stderr.splitlines()[0] == f"error: {out} is not empty: splitting there would replace its files"
    )
    assert "--force" in proc.stderr
    result = run("data", "split", data, "--out", out, "--force", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3


def test_import_csv_errors_name_file_line_and_column(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text,label\nok,a\n,b\nfine,\none,two,three\n")
    proc = run_script("data", "import-csv", source, "--out", tmp_path / "out.jsonl")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{source}:3: text: empty text" in proc.stderr
    assert f"{source}:4: label: empty label" in proc.stderr
    assert f"{source}:5: (row): 3 fields where the header has 2" in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()
    proc = run_script("data", "import-csv", source, "--out", tmp_path / "o.jsonl", "--label-column", "intent")
    assert proc.returncode == 1
    assert f"{source}:1: intent: no column named 'intent' (the columns are: text, label)" in proc.stderr


def test_the_data_guide_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "data-guide.md").read_text()
    (tmp_path / "data" / "banking77").mkdir(parents=True)
    (tmp_path / "data" / "banking77" / "demo.csv").write_bytes(DEMO_CSV.read_bytes())
    monkeypatch.chdir(tmp_path)
    commands = [line for block in re.findall(r"```sh\n(.*?)```", guide, re.S) for line in block.splitlines()]
    assert len(commands) == 5
    for command in commands:
        program, *args = shlex.split(command)
        assert program == "lorafleet"
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (command, result.output)
    (python,) = re.findall(r"```python\n(.*?)```", guide, re.S)
    exec(compile(python, "data-guide.md", "exec"), {})
    assert (tmp_path / "runs" / "banking" / "splits-7" / "manifest.json").is_file()


def test_import_csv_reads_a_semicolon_csv_as_spreadsheets_export_it(tmp_path: Path) -> None:
    source = tmp_path / "tickets.csv"
    source.write_text(
        "id;question;intent\n1;Hello, where is my card?;card_arrival\n2;Ich habe meine PIN vergessen;change_pin\n"
    )
    out = tmp_path / "tickets.jsonl"
    result = run(
        "data", "import-csv", source, "--out", out, "--text-column", "question", "--label-column", "intent"
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(x)["messages"] for x in out.read_text().splitlines()]
    assert [(m[0]["content"], m[1]["content"]) for m in rows] == [
        ("Hello, where is my card?", "card_arrival"),
        ("Ich habe meine PIN vergessen", "change_pin"),
    ]


def test_a_file_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text,label\nWhere is my card?,card_arrival\n")
    folder = tmp_path / "out"
    folder.mkdir()
    proc = run_script("data", "import-csv", source, "--out", folder, "--force")
    assert (proc.returncode, proc.stderr) == (1, f"error: {folder}: Is a directory\n")
    proc = subprocess.run(
        [LORAFLEET, "data", "import-csv", source, "--out", folder, "--force"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LORAFLEET_DEBUG": "1"},
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "IsADirectoryError" in proc.stderr
