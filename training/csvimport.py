"""`lorafleet data import-csv`: a labelled spreadsheet (one row per example) to chat JSONL.

Each row becomes `[system?], user = the text column, assistant = the label column`. Every problem is
collected before anything is written, each naming the file, the line and the column: a missing column,
an empty text or label, bytes that are not UTF-8, a row with more or fewer fields than the header.
The delimiter is the one of `, ; tab |` that splits the header into the named columns (spreadsheets
in many locales export `;`), else csv.Sniffer's guess from the first lines.
The output is written whole through a temporary file, or not at all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from training.dataset import Example, Problem
from training.errors import CsvImportError, OutputExistsError, TrainingError
from training.split import jsonl_bytes, write_atomic

DELIMITERS = ",;\t|"


def labels_system_prompt(labels: Sequence[str]) -> str:
    """A system prompt that lists the labels, for a classifier that must answer with one of them."""
    return (
        f"Classify the customer message into exactly one of these labels: {', '.join(labels)}. "
        "Answer with the label only."
    )


def _decode(path: Path, data: bytes) -> tuple[str | None, list[Problem]]:
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        return None, [
            Problem(
                str(path),
                line,
                "(line)",
                f"not UTF-8: byte {byte:#04x}; save the spreadsheet as 'CSV UTF-8' and import it again",
            )
        ]


def _delimiter(text: str, columns: Sequence[str]) -> str:
    """The delimiter that splits the header into the named columns, else csv.Sniffer's guess, else ','."""
    lines = text.splitlines()
    for d in DELIMITERS:
        names = [h.strip() for h in next(csv.reader(lines[:1], delimiter=d), [])]
        if all(c in names for c in columns):
            return d
    try:
        return csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def read_labelled_csv(
    csv_path: Path, *, text_column: str = "text", label_column: str = "label"
) -> list[tuple[str, str]]:
    """The (text, label) rows of a CSV file, whitespace stripped; CsvImportError listing every problem."""
    path = Path(csv_path)
    name = str(path)
    if not path.is_file():
        raise CsvImportError(
            path, [Problem(name, 0, "(file)", "no such file" if not path.exists() else "not a file")]
        )
    text, problems = _decode(path, path.read_bytes())
    if text is None:
        raise CsvImportError(path, problems)
    delimiter = _delimiter(text, (text_column, label_column))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[str, str]] = []
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise CsvImportError(path, [Problem(name, 1, "(header)", "no header row: the file is empty")])
        columns = [h.strip() for h in header]
        for column in (text_column, label_column):
            if column not in columns:
                problems.append(
                    Problem(
                        name, 1, column, f"no column named {column!r} (the columns are: {', '.join(columns)})"
                    )
                )
            elif columns.count(column) > 1:
                problems.append(
                    Problem(name, 1, column, f"the column {column!r} appears twice in the header")
                )
        if problems:
            raise CsvImportError(path, problems)
        if text_column == label_column:
            raise CsvImportError(
                path, [Problem(name, 1, text_column, "the text and label columns must differ")]
            )
        ti, li = columns.index(text_column), columns.index(label_column)
        start = reader.line_num + 1
        for row in reader:
            # Spreadsheets export blank rows as empty lines or as lines of empty fields.
            if not any(field.strip() for field in row):
                start = reader.line_num + 1
                continue
            if len(row) != len(columns):
                problems.append(
                    Problem(name, start, "(row)", f"{len(row)} fields where the header has {len(columns)}")
                )
            else:
                value, label = row[ti].strip(), row[li].strip()
                if not value:
                    problems.append(Problem(name, start, text_column, "empty text"))
                if not label:
                    problems.append(Problem(name, start, label_column, "empty label"))
                if value and label:
                    rows.append((value, label))
            start = reader.line_num + 1
    except csv.Error as exc:
        problems.append(Problem(name, reader.line_num, "(row)", f"malformed CSV: {exc}"))
    if problems:
        raise CsvImportError(path, problems)
    if not rows:
        raise CsvImportError(path, [Problem(name, 2, "(file)", "no rows under the header")])
    return rows


def import_csv(
    csv_path: Path,
    out_path: Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    system: str | None = None,
    system_from_labels: bool = False,
    force: bool = False,
) -> int:
    """Convert a labelled CSV to chat JSONL at out_path; return the number of examples written.

    `system` adds that system prompt to every example; `system_from_labels` adds one listing the
    labels (`labels_system_prompt`). An existing out_path is replaced only with `force`.
    """
    if system is not None and system_from_labels:
        raise TrainingError("give a system prompt or ask for one built from the labels, not both")
    if system is not None and not system.strip():
        raise TrainingError("the system prompt is empty", hint="leave --system out for no system prompt")
    out = Path(out_path)
    if out.exists() and out.resolve() == Path(csv_path).resolve():
        raise OutputExistsError(f"{out} is the CSV being imported", hint="name another output file")
    if out.exists() and not force:
        raise OutputExistsError(
            f"{out} already exists", hint="name a new file, or pass --force to replace it"
        )
    rows = read_labelled_csv(csv_path, text_column=text_column, label_column=label_column)
    if system_from_labels:
        system = labels_system_prompt(sorted({label for _, label in rows}))
    examples = [Example.from_turns(value, label, system=system) for value, label in rows]
    write_atomic(out, jsonl_bytes(examples))
    return len(examples)
