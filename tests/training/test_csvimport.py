"""CSV import: good files become chat JSONL; bad ones name the file, line and column, and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.check import check_file
from training.csvimport import import_csv, labels_system_prompt
from training.dataset import load_examples
from training.errors import CsvImportError, OutputExistsError, TrainingError

DEMO = Path(__file__).resolve().parents[2] / "data" / "banking77"


def csv_file(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def problems_of(path: Path) -> list[tuple[int, str, str]]:
    with pytest.raises(CsvImportError) as err:
        import_csv(path, path.with_suffix(".jsonl"))
    assert not path.with_suffix(".jsonl").exists()
    assert err.value.path == str(path)
    return [(p.line, p.field, p.message) for p in err.value.problems]


def test_rows_become_user_and_assistant_turns(tmp_path: Path) -> None:
    source = csv_file(
        tmp_path, 'text,label\nWhere is my card?,card_arrival\n"Hi, I forgot my PIN",change_pin\n'
    )
    out = tmp_path / "out.jsonl"
    assert import_csv(source, out) == 2
    examples = load_examples(out)
    assert [(e.user_text, e.answer, e.system) for e in examples] == [
        ("Where is my card?", "card_arrival", None),
        ("Hi, I forgot my PIN", "change_pin", None),
    ]


def test_a_system_prompt_given_or_built_from_the_labels(tmp_path: Path) -> None:
    source = csv_file(tmp_path, "text,label\na,y\nb,x\nc,y\n")
    import_csv(source, tmp_path / "given.jsonl", system="Be brief.")
    assert {e.system for e in load_examples(tmp_path / "given.jsonl")} == {"Be brief."}
    import_csv(source, tmp_path / "labels.jsonl", system_from_labels=True)
    expected = (
        "Classify the customer message into exactly one of these labels: x, y. Answer with the label only."
    )
    assert labels_system_prompt(["x", "y"]) == expected
    assert {e.system for e in load_examples(tmp_path / "labels.jsonl")} == {expected}
    with pytest.raises(TrainingError, match="not both"):
        import_csv(source, tmp_path / "both.jsonl", system="x", system_from_labels=True)


def test_other_column_names_a_bom_quoted_newlines_and_blank_rows(tmp_path: Path) -> None:
    source = csv_file(tmp_path, '\ufeffid,query,intent\n1,"two\nlines",a\n\n,,\n2,  padded  , b \n'.encode())
    out = tmp_path / "out.jsonl"
    assert import_csv(source, out, text_column="query", label_column="intent") == 2
    assert [(e.user_text, e.answer) for e in load_examples(out)] == [("two\nlines", "a"), ("padded", "b")]


def test_a_missing_column_names_the_columns_there_are(tmp_path: Path) -> None:
    source = csv_file(tmp_path, "text,category\nhi,a\n")
    assert problems_of(source) == [(1, "label", "no column named 'label' (the columns are: text, category)")]


def test_empty_text_and_label_name_the_line_and_column(tmp_path: Path) -> None:
    source = csv_file(tmp_path, 'text,label\nok,a\n"",b\n"multi\nline", \nfine,c\n')
    assert problems_of(source) == [(3, "text", "empty text"), (4, "label", "empty label")]


def test_ragged_rows_are_named(tmp_path: Path) -> None:
    source = csv_file(tmp_path, "text,label\nok,a\ntoo,many,fields\nfew\n")
    assert problems_of(source) == [
        (3, "(row)", "3 fields where the header has 2"),
        (4, "(row)", "1 fields where the header has 2"),
    ]


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    source = csv_file(tmp_path, b"text,label\nok,a\ncaf\xe9,b\n")
    ((line, field, message),) = problems_of(source)
    assert (line, field) == (3, "(line)") and "not UTF-8: byte 0xe9" in message


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    assert problems_of(csv_file(tmp_path, "", "empty.csv"))[0][2] == "no header row: the file is empty"
    assert problems_of(csv_file(tmp_path, "text,label\n", "header.csv"))[0][2] == "no rows under the header"


def test_an_existing_output_is_kept_unless_forced(tmp_path: Path) -> None:
    source = csv_file(tmp_path, "text,label\nhi,a\n")
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(OutputExistsError):
        import_csv(source, out)
    assert out.read_text() == "precious\n"
    assert import_csv(source, out, force=True) == 1
    with pytest.raises(OutputExistsError):
        import_csv(source, source, force=True)


def test_the_demo_data_imports_and_checks_clean(tmp_path: Path) -> None:
    out = tmp_path / "demo.jsonl"
    assert import_csv(DEMO / "demo.csv", out, system_from_labels=True) == 600
    assert check_file(out) == []
    examples = load_examples(out)
    assert len({e.answer for e in examples}) == 10
    assert import_csv(DEMO / "shifted.csv", tmp_path / "shifted.jsonl") == 200


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_the_delimiter_is_detected_from_the_header(tmp_path: Path, delimiter: str) -> None:
    rows = (
        ["text", "label"],
        ["Hi, where is my card?", "card_arrival"],
        ["I forgot my PIN, help", "change_pin"],
    )
    source = csv_file(tmp_path, "".join(delimiter.join(r) + "\n" for r in rows))
    assert import_csv(source, tmp_path / "out.jsonl") == 2
    examples = load_examples(tmp_path / "out.jsonl")
    assert [(e.user_text, e.answer) for e in examples] == [tuple(r) for r in rows[1:]]
