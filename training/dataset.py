"""Chat JSONL datasets: one `{"messages": [{role, content}, ...]}` object per line (OpenAI and TRL's format).

A valid example has an optional system turn, then alternating user/assistant turns, and ends with the
assistant's answer. `read_jsonl` returns every valid example and every problem, each naming the file,
the line and the field, so that `lorafleet data check` can report all of them at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
UNSUPPORTED_ROLES = ("tool", "function", "ipython")
_TOOL_KEYS = {"tool_calls", "function_call"}
_JSON_TYPES = {dict: "object", list: "list", str: "string", int: "int", float: "number", bool: "boolean"}


def _json_type(value: Any) -> str:
    """A JSON value's type as the file spells it: null, not NoneType; boolean, not bool."""
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, printed as `FILE:LINE: field: message`."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Example:
    """One conversation: the prompt (everything before the last turn) and the answer (the last turn)."""

    messages: tuple[Message, ...]
    line: int = 0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages[:-1]]

    @property
    def answer(self) -> str:
        return self.messages[-1].content

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages[0].role == "system" else None

    @property
    def user_text(self) -> str:
        """The last user turn: what a live request would carry."""
        return next(m.content for m in reversed(self.messages) if m.role == "user")

    def to_json(self) -> dict[str, Any]:
        return {"messages": [{"role": m.role, "content": m.content} for m in self.messages], **self.extra}

    @classmethod
    def from_turns(cls, user: str, answer: str, system: str | None = None) -> Example:
        msgs = [Message("system", system)] if system else []
        return cls((*msgs, Message("user", user), Message("assistant", answer)))


class DatasetError(Exception):
    """Raised by `load_examples` when a file has problems; carries all of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        shown = "\n".join(str(p) for p in self.problems[:20])
        more = f"\n... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the dataset:\n{shown}{more}")


def _parse_messages(obj: Any, where: tuple[str, int]) -> tuple[tuple[Message, ...] | None, list[Problem]]:
    file, line = where
    problems: list[Problem] = []

    def bad(fld: str, msg: str) -> None:
        problems.append(Problem(file, line, fld, msg))

    if not isinstance(obj, dict):
        bad("(line)", f"expected a JSON object, got {_json_type(obj)}")
        return None, problems
    if "messages" not in obj:
        bad("messages", "missing")
        return None, problems
    raw = obj["messages"]
    if not isinstance(raw, list):
        bad("messages", f"expected a list, got {_json_type(raw)}")
        return None, problems
    if not raw:
        bad("messages", "empty list")
        return None, problems
    messages: list[Message] = []
    for i, m in enumerate(raw):
        fld = f"messages[{i}]"
        if not isinstance(m, dict):
            bad(fld, f"expected an object with role and content, got {_json_type(m)}")
            continue
        role, content = m.get("role"), m.get("content")
        ok = True
        if role is None:
            bad(f"{fld}.role", "missing" if "role" not in m else "null (expected a string)")
            ok = False
        elif not isinstance(role, str):
            bad(f"{fld}.role", f"expected a string, got {_json_type(role)}")
            ok = False
        elif role in UNSUPPORTED_ROLES:
            bad(
                f"{fld}.role",
                f"role {role!r} is not supported for fine-tuning data: tool and function turns cannot be "
                f"trained on here (expected one of {', '.join(ROLES)})",
            )
            ok = False
        elif role not in ROLES:
            bad(f"{fld}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
            ok = False
        if "content" not in m:
            bad(f"{fld}.content", "missing")
            ok = False
        elif content is None:
            calls = " (a tool call: not supported for fine-tuning data)" if _TOOL_KEYS & m.keys() else ""
            bad(f"{fld}.content", f"null: expected a string{calls}")
            ok = False
        elif isinstance(content, list):
            bad(
                f"{fld}.content",
                "a list of content parts is not supported for fine-tuning data: give the text as one string",
            )
            ok = False
        elif not isinstance(content, str):
            bad(f"{fld}.content", f"expected a string, got {_json_type(content)}")
            ok = False
        elif not content.strip():
            bad(f"{fld}.content", "empty")
            ok = False
        if ok:
            messages.append(Message(str(role), str(content)))
    if problems:
        return None, problems
    roles = [m.role for m in messages]
    if "system" in roles[1:]:
        bad(f"messages[{roles.index('system', 1)}].role", "a system turn may only come first")
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or turns[-1] != "assistant":
        bad("messages", "no final assistant turn (the last message must be the assistant's answer)")
    elif "user" not in turns:
        bad("messages", "no user turn before the assistant's answer")
    else:
        for j in range(1, len(turns)):
            if turns[j] == turns[j - 1] and turns[j] != "system":
                offset = 1 if roles[0] == "system" else 0
                bad(f"messages[{j + offset}].role", f"two {turns[j]} turns in a row")
                break
    if problems:
        return None, problems
    return tuple(messages), problems


def parse_line(text: str, where: tuple[str, int]) -> tuple[Example | None, list[Problem]]:
    """Parse one JSONL line (already decoded) into an example, or the problems that prevent it."""
    file, line = where
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [Problem(file, line, "(line)", f"not valid JSON: {exc.msg} at column {exc.colno}")]
    messages, problems = _parse_messages(obj, where)
    if messages is None:
        return None, problems
    extra = {k: v for k, v in obj.items() if k != "messages"}
    return Example(messages, line=line, source=file, extra=extra), []


def read_jsonl(path: Path | str) -> tuple[list[Example], list[Problem]]:
    """Every valid example and every problem of a chat JSONL file. Blank lines are skipped."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        return [], [Problem(name, 0, "(file)", "no such file" if not path.exists() else "not a regular file")]
    examples: list[Example] = []
    problems: list[Problem] = []
    first: tuple[int, bool] | None = None  # the first non-blank line: its number, and whether it is broken
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(
                    Problem(name, lineno, "(line)", f"not UTF-8: byte {raw[exc.start]:#04x} at {exc.start}")
                )
                continue
            if not text.strip():
                continue
            example, found = parse_line(text.lstrip("\ufeff") if lineno == 1 else text, (name, lineno))
            if first is None:
                first = (lineno, bool(found) and text.lstrip("\ufeff").lstrip()[:1] in ("[", "{"))
            problems.extend(found)
            if example is not None:
                examples.append(example)
    whole = _whole_file_problem(path, first[0]) if first is not None and first[1] else None
    if whole is not None:
        return [], [whole]
    if not examples and not problems:
        problems.append(Problem(name, 0, "(file)", "no examples: the file is empty"))
    return examples, problems


def _whole_file_problem(path: Path, lineno: int) -> Problem | None:
    """One problem for a file that is a JSON array, or one object over several lines, not JSONL.

    Asked when the first line is broken: one problem per line would bury what is wrong.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    # Never suggest writing over the input: the shell empties the target before jq reads.
    target = path.with_name(path.stem + (".fixed.jsonl" if path.suffix == ".jsonl" else ".jsonl"))
    if isinstance(value, list):
        n = len(value)
        return Problem(
            str(path),
            lineno,
            "(file)",
            f"this looks like a JSON array ({n} value{'' if n == 1 else 's'}), not JSONL (one JSON object "
            f"per line); convert it with: jq -c '.[]' {path} > {target}",
        )
    if isinstance(value, dict) and "\n" in text.strip():
        return Problem(
            str(path),
            lineno,
            "(file)",
            "this looks like one JSON object spread over several lines, not JSONL (one JSON object per "
            f"line); convert it with: jq -c . {path} > {target}",
        )
    return None


def load_examples(path: Path | str) -> list[Example]:
    """The examples of a valid file; raise DatasetError listing every problem otherwise."""
    examples, problems = read_jsonl(path)
    if problems:
        raise DatasetError(problems)
    return examples


def write_jsonl(path: Path | str, examples: Iterable[Example]) -> str:
    """Write examples as chat JSONL; return the SHA-256 of the bytes written."""
    data = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples).encode()
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def label_set(
    examples: Sequence[Example], max_labels: int = 100, min_repeat: float = 2.0
) -> list[str] | None:
    """The answers as a label set, when they look like one: few distinct answers, each repeated.

    None when the answers are free text (more than `max_labels` distinct ones, or on average
    fewer than `min_repeat` examples per distinct answer).
    """
    answers = [e.answer.strip() for e in examples]
    distinct = sorted(set(answers))
    if not distinct or len(distinct) > max_labels or len(answers) / len(distinct) < min_repeat:
        return None
    return distinct
