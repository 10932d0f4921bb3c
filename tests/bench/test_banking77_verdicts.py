"""bench/banking77.py's per-example verdicts: written to a results file, read back by --compare."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench.banking77 import earlier_verdicts, verdicts_line

SPLIT = hashlib.sha256(b'{"messages": []}\n').hexdigest()


def test_a_results_files_verdicts_are_read_back_in_order(tmp_path: Path) -> None:
    results = tmp_path / "banking77-10-20261205-0300.txt"
    verdicts = [True, False, True, True, False]
    results.write_text(
        f"# BANKING77\naccuracy 0.600\n{verdicts_line(verdicts, SPLIT)}\nload average at end: 1.0\n"
    )
    assert earlier_verdicts(results, SPLIT, examples=5) == verdicts


def test_a_run_on_another_test_split_or_without_verdicts_is_refused_by_name(tmp_path: Path) -> None:
    results = tmp_path / "old.txt"
    results.write_text(verdicts_line([True], SPLIT) + "\n")
    other = hashlib.sha256(b"another split").hexdigest()
    with pytest.raises(SystemExit, match=r"old\.txt: it was tested on another test split"):
        earlier_verdicts(results, other, examples=1)
    results.write_text("# a results file from before 2026-12-05\n")
    with pytest.raises(SystemExit, match=r"old\.txt: no verdicts line in it"):
        earlier_verdicts(results, SPLIT, examples=1)


def test_a_missing_run_or_a_folder_without_its_evaluation_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"gone: no such folder or file"):
        earlier_verdicts(tmp_path / "gone", SPLIT, examples=1)
    with pytest.raises(SystemExit, match=r"no eval\.json there"):
        earlier_verdicts(tmp_path, SPLIT, examples=1)
    (tmp_path / "eval.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"no test\.jsonl there"):
        earlier_verdicts(tmp_path, SPLIT, examples=1)
