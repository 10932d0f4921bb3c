"""`check_file` finds every problem of a chat JSONL file, each with its line and field; tokens count right."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lorafleet import basemodel
from training.check import check, check_file, read_valid
from training.dataset import Example
from training.errors import DatasetInvalidError
from training.tokens import count_tokens, count_tokens_batch, load_tokenizer, model_context

Line = str | bytes | dict[str, Any]


def chat(user: str, answer: str, system: str | None = None) -> dict[str, Any]:
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": [*head, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write(path: Path, lines: Sequence[Line]) -> Path:
    """One line per item: dicts as JSON, strings as they are, bytes raw."""
    raw = [
        item if isinstance(item, bytes) else (json.dumps(item) if isinstance(item, dict) else item).encode()
        for item in lines
    ]
    path.write_bytes(b"".join(r + b"\n" for r in raw))
    return path


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The embedded base model, prepared once in ~/.lorafleet and reused."""
    return basemodel.resolve(None)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return load_tokenizer(model_dir)


BROKEN: dict[str, tuple[str | bytes, str, str]] = {
    # case: (line, field, words the message must contain)
    "bad JSON": ('{"messages": [', "(line)", "not valid JSON"),
    "not an object": ("[1, 2]", "(line)", "expected a JSON object"),
    "missing messages": ('{"prompt": "hi"}', "messages", "missing"),
    "empty messages": ('{"messages": []}', "messages", "empty"),
    "messages not a list": ('{"messages": "hi"}', "messages", "expected a list"),
    "unknown role": (
        '{"messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
        "messages[0].role",
        "unknown role 'customer'",
    ),
    "empty content": (
        '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}',
        "messages[0].content",
        "empty",
    ),
    "content not a string": (
        '{"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]}',
        "messages[0].content",
        "expected a string, got int",
    ),
    "null content": (
        '{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "x"}]}',
        "messages[0].content",
        "null: expected a string",
    ),
    "content parts": (
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "x"}]}',
        "messages[0].content",
        "a list of content parts is not supported for fine-tuning data",
    ),
    "tool role": (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "x"}]}',
        "messages[1].role",
        "role 'tool' is not supported for fine-tuning data",
    ),
    "assistant tool call": (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null, "tool_calls": []}]}',
        "messages[1].content",
        "null: expected a string (a tool call: not supported for fine-tuning data)",
    ),
    "no final assistant turn": (
        '{"messages": [{"role": "user", "content": "hi"}]}',
        "messages",
        "no final assistant turn",
    ),
    "not UTF-8": (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "(line)", "not UTF-8"),
}


def test_a_valid_file_has_no_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path / "data.jsonl",
        [chat("Where is my card?", "card_arrival"), chat("Hi", "greeting", system="Be brief.")],
    )
    assert check_file(path) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_line_is_named_with_its_line_and_field(case: str, tmp_path: Path) -> None:
    line, field, words = BROKEN[case]
    path = write(tmp_path / "data.jsonl", [chat("Where is my card?", "card_arrival"), line])
    (problem,) = check_file(path)
    assert (problem.file, problem.line, problem.field) == (str(path), 2, field)
    assert words in problem.message
    assert str(problem).startswith(f"{path}:2: {field}: ")


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    lines: list[Line] = [chat("ok", "a")]
    for case in sorted(BROKEN):
        lines.append(BROKEN[case][0])
    path = write(tmp_path / "data.jsonl", lines)
    problems = check_file(path)
    assert [p.line for p in problems] == list(range(2, len(BROKEN) + 2))


def test_extra_keys_and_blank_lines_are_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path / "data.jsonl", [{**chat("hi", "a"), "id": 7, "weight": 1}, "", "   ", chat("ho", "b")]
    )
    result = check(path)
    assert result.problems == []
    assert (result.records, result.valid) == (2, 2)


def test_a_missing_or_empty_file_is_a_problem(tmp_path: Path) -> None:
    (missing,) = check_file(tmp_path / "nope.jsonl")
    assert missing.message == "no such file"
    (tmp_path / "empty.jsonl").write_text("")
    (empty,) = check_file(tmp_path / "empty.jsonl")
    assert "empty" in empty.message


def test_a_conversation_longer_than_the_limit_is_a_problem(tmp_path: Path, tokenizer: Any) -> None:
    long_text = "please help me with my card " * 400
    path = write(tmp_path / "data.jsonl", [chat("short", "a"), chat(long_text, "b")])
    (problem,) = check_file(path, tokenizer=tokenizer)  # the default limit: 2048 tokens
    assert (problem.line, problem.field) == (2, "messages")
    assert "over the limit of 2048" in problem.message
    assert [p.line for p in check_file(path, max_tokens=60, tokenizer=tokenizer)] == [2]
    assert check_file(path, max_tokens=100_000, tokenizer=tokenizer) == []


def test_without_a_tokenizer_or_limit_only_the_structure_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", [chat("please help me with my card " * 400, "b")])
    assert check(path).max_tokens is None
    assert check_file(path) == []


def test_max_tokens_alone_uses_the_embedded_tokenizer(tmp_path: Path) -> None:
    path = write(
        tmp_path / "data.jsonl", [chat("short", "a"), chat("a much longer question about my card " * 10, "b")]
    )
    assert [p.line for p in check_file(path, max_tokens=60)] == [2]


def test_tokens_are_counted_over_the_whole_chat_template(tokenizer: Any) -> None:
    example = Example.from_turns("Where is my card?", "card_arrival", system="Classify.")
    rendered = tokenizer.apply_chat_template([dict(m) for m in example.to_json()["messages"]])
    assert count_tokens(tokenizer, example) == len(rendered["input_ids"])
    # SmolLM2's template adds a default system turn, so the same turn costs more without one.
    bare = Example.from_turns("Where is my card?", "card_arrival")
    assert count_tokens(tokenizer, bare) > count_tokens(
        tokenizer, Example.from_turns("x", "y", system="Classify.")
    )
    assert count_tokens_batch(tokenizer, [example, bare]) == [
        count_tokens(tokenizer, example),
        count_tokens(tokenizer, bare),
    ]


def test_the_models_context_caps_the_default_limit(model_dir: Path, tmp_path: Path) -> None:
    assert model_context(model_dir) == 2048  # SmolLM2 has 8192 positions; serving uses 2048
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 512}')
    assert model_context(tmp_path) == 512


def test_read_valid_refuses_a_file_with_problems_and_points_at_check(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", [chat("ok", "a"), '{"messages": ['])
    with pytest.raises(DatasetInvalidError) as err:
        read_valid(path)
    assert err.value.problems[0].line == 2
    assert f"{path}:2: (line)" in err.value.message
    assert err.value.hint is not None and "lorafleet data check" in err.value.hint


@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_gets_one_problem_saying_how_to_convert_it(tmp_path: Path, indent: int | None) -> None:
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps([chat("Where is my card?", "card_arrival"), chat("Hi", "greeting")], indent=indent)
    )
    (problem,) = check_file(path)
    assert (problem.line, problem.field) == (1, "(file)")
    assert problem.message == (
        "this looks like a JSON array (2 values), not JSONL (one JSON object per line); "
        f"convert it with: jq -c '.[]' {path} > {tmp_path / 'data.jsonl'}"
    )


def test_one_object_over_several_lines_gets_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(chat("Where is my card?", "card_arrival"), indent=2))
    (problem,) = check_file(path)
    assert problem.message.startswith("this looks like one JSON object spread over several lines, not JSONL")
    assert problem.message.endswith(f"jq -c . {path} > {tmp_path / 'data.fixed.jsonl'}")
