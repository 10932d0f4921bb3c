"""The audit finds planted duplicates, near duplicates, conflicts and leakage; balance, tokens, cost, review."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest

from training.audit import AuditReport, audit_file
from training.dataset import load_examples
from training.errors import DatasetInvalidError, TrainingError

VOCABULARY = [
    "account",
    "balance",
    "card",
    "transfer",
    "payment",
    "refund",
    "limit",
    "pin",
    "phone",
    "app",
    "cash",
    "atm",
    "fee",
    "charge",
    "euro",
    "pound",
    "dollar",
    "travel",
    "abroad",
    "online",
    "shop",
    "order",
    "delivery",
    "address",
    "verify",
    "identity",
    "passport",
    "selfie",
    "blocked",
    "frozen",
    "stolen",
    "lost",
    "found",
    "expired",
    "renew",
    "contactless",
    "chip",
    "wallet",
    "merchant",
    "receipt",
    "statement",
    "monthly",
    "weekly",
    "yesterday",
    "tomorrow",
    "morning",
    "evening",
    "urgent",
    "quickly",
    "slowly",
    "never",
    "always",
    "please",
    "thanks",
    "hello",
]
SYSTEM = "Classify the customer message into exactly one label. Answer with the label only."


def chat(user: str, answer: str, system: str | None = SYSTEM) -> dict[str, Any]:
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": [*head, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def distinct_texts(n: int, seed: int = 0) -> list[str]:
    """n random inputs, no two equal or near duplicates (few shared character trigrams)."""
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < n:
        text = " ".join(rng.sample(VOCABULARY, 7)).capitalize() + "?"
        if text not in texts:
            texts.append(text)
    return texts


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def balanced(
    n_per_label: int, labels: tuple[str, ...] = ("card_arrival", "change_pin"), seed: int = 0
) -> list[dict[str, Any]]:
    texts = distinct_texts(n_per_label * len(labels), seed)
    return [chat(t, labels[i % len(labels)]) for i, t in enumerate(texts)]


def test_a_clean_file_has_no_findings(tmp_path: Path) -> None:
    report = audit_file(write(tmp_path / "clean.jsonl", balanced(20)))
    assert report.examples == 40
    assert report.duplicates == [] and report.conflicts == [] and report.near_duplicate_pairs == 0
    assert report.warnings == []
    assert report.labels is not None and report.labels.counts == {"card_arrival": 20, "change_pin": 20}


def test_planted_duplicates_are_found_after_normalisation(tmp_path: Path) -> None:
    rows = balanced(10)
    rows.append(chat("  WHERE is my card?!  ", "card_arrival"))  # line 21
    rows.append(chat("where is my card", "card_arrival", system=None))  # line 22: the system turn is left out
    rows.append(chat("Where, is my... card", "card_arrival"))  # line 23
    report = audit_file(write(tmp_path / "dups.jsonl", rows))
    (group,) = report.duplicates
    assert group.lines == [21, 22, 23]
    assert group.input == "where is my card" and group.answer == "card_arrival"
    assert report.duplicate_examples == 2
    assert any("2 duplicate examples" in w for w in report.warnings)


def test_planted_conflicts_are_found(tmp_path: Path) -> None:
    rows = balanced(10)
    rows.append(chat("My card has not arrived yet", "card_arrival"))  # line 21
    rows.append(chat("my card has not arrived yet.", "change_pin"))  # line 22
    report = audit_file(write(tmp_path / "conflicts.jsonl", rows))
    (conflict,) = report.conflicts
    assert conflict.answers == {"card_arrival": [21], "change_pin": [22]}
    assert any("conflicting answers" in w for w in report.warnings)


def test_planted_near_duplicates_are_found(tmp_path: Path) -> None:
    rows = balanced(10)
    rows.append(chat("Why did my top up get reverted?", "card_arrival"))  # line 21
    rows.append(chat("why did my topup get reverted", "card_arrival"))  # line 22
    rows.append(chat("How do I change the PIN of my card", "change_pin"))  # line 23
    rows.append(chat("How do I change the PIN on my card", "card_arrival"))  # line 24
    report = audit_file(write(tmp_path / "near.jsonl", rows))
    pairs = {(p.line_a, p.line_b): p for p in report.near_duplicates}
    assert set(pairs) == {(21, 22), (23, 24)}
    assert pairs[(21, 22)].same_answer and not pairs[(23, 24)].same_answer
    assert all(0.8 <= p.similarity < 1 for p in pairs.values())
    assert any("different answers" in w for w in report.warnings)


def test_leakage_into_other_files_is_found_exact_and_near(tmp_path: Path) -> None:
    texts = distinct_texts(40, seed=1)
    train = write(
        tmp_path / "train.jsonl", [chat(t, "a" if i % 2 else "b") for i, t in enumerate(texts[:30])]
    )
    leaked = [
        chat(texts[3].upper(), "a"),  # exact after normalisation, line 1
        chat(texts[5][:-1] + " please?", "b"),  # near, line 2
        *[chat(t, "a") for t in texts[30:]],
    ]
    test = write(tmp_path / "test.jsonl", leaked)
    clean = write(tmp_path / "clean.jsonl", [chat(t, "a") for t in texts[30:]])
    report = audit_file(test, [train, clean])
    into_train, into_clean = report.leakage
    assert (into_train.exact, into_train.near) == (1, 1)
    assert [(p.line, p.other_line) for p in into_train.pairs] == [(1, 4), (2, 6)]
    assert into_train.pairs[0].similarity == 1.0 and 0.8 <= into_train.pairs[1].similarity < 1
    # The clean file holds the 10 unleaked inputs themselves: all exact.
    assert (into_clean.exact, into_clean.near) == (10, 0)
    assert any(f"also in {train}" in w for w in report.warnings)


def test_imbalanced_labels_get_a_warning(tmp_path: Path) -> None:
    texts = distinct_texts(44)
    rows = [chat(t, "big") for t in texts[:40]] + [chat(t, "small") for t in texts[40:]]
    report = audit_file(write(tmp_path / "imbalanced.jsonl", rows))
    assert report.labels is not None
    assert report.labels.counts == {"big": 40, "small": 4}
    assert report.labels.imbalance_ratio == 10.0
    assert any("imbalanced" in w and "upsample" in w and "class" in w for w in report.warnings)
    assert not audit_file(
        write(tmp_path / "mild.jsonl", rows[:12] + rows[40:]), imbalance_threshold=3.0
    ).warnings


def test_free_text_answers_have_no_class_balance(tmp_path: Path) -> None:
    rows = [chat(t, f"a free answer about {t}") for t in distinct_texts(10)]
    assert audit_file(write(tmp_path / "free.jsonl", rows)).labels is None


def test_token_counts_and_cost(tmp_path: Path) -> None:
    rows = balanced(10)
    rows.append(chat("please help me with my card " * 400, "card_arrival"))  # line 21, over 2048 tokens
    report = audit_file(
        write(tmp_path / "tokens.jsonl", rows),
        epochs=2,
        tokens_per_second=100,
        gpu_hourly_usd=3.6,
        api_price_per_1m_usd=10,
    )
    t = report.tokens
    assert t.min <= t.median <= t.p95 <= t.max and t.max > 2048
    assert t.max_tokens == 2048 and t.over_max == [21]
    c = report.cost
    assert c.training_tokens == 2 * t.total
    assert c.training_hours == pytest.approx(c.training_tokens / 100 / 3600, rel=1e-3)
    assert c.gpu_cost_usd == pytest.approx(c.training_hours * 3.6, rel=1e-3)
    assert c.api_cost_usd == pytest.approx(c.training_tokens / 1e6 * 10, rel=1e-3)
    assert any("longer than 2048" in w for w in report.warnings)


def test_the_review_sample_is_seeded_and_readable(tmp_path: Path) -> None:
    path = write(tmp_path / "many.jsonl", balanced(40))
    first = audit_file(path, review_out=tmp_path / "review.jsonl", seed=1)
    again = audit_file(path, review_out=tmp_path / "again.jsonl", seed=1)
    other = audit_file(path, seed=2)
    assert len(first.review.lines) == 50 and first.review.lines == again.review.lines
    assert other.review.lines != first.review.lines and other.review.path is None
    assert (tmp_path / "review.jsonl").read_bytes() == (tmp_path / "again.jsonl").read_bytes()
    sample = load_examples(tmp_path / "review.jsonl")  # still valid chat JSONL, with each source line
    assert [e.extra["line"] for e in sample] == first.review.lines
    audit_file(path, review_out=tmp_path / "review.csv", seed=1)
    with (tmp_path / "review.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["line"]) for r in table] == first.review.lines
    assert set(table[0]) == {"line", "input", "answer", "ok"}


def test_the_report_renders_as_text_and_json(tmp_path: Path) -> None:
    rows = balanced(10)
    rows.append(chat("where is my card", "card_arrival"))
    rows.append(chat("Where is my card?", "change_pin"))
    report = audit_file(write(tmp_path / "r.jsonl", rows))
    text = report.render()
    for heading in ("duplicates", "near duplicates", "conflicts", "class balance", "tokens", "training cost"):
        assert heading in text
    assert "'where is my card': 'card_arrival' on lines 21; 'change_pin' on lines 22" in text
    assert AuditReport.model_validate_json(report.model_dump_json()) == report


def test_an_unreadable_file_is_refused_with_a_pointer_to_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DatasetInvalidError) as err:
        audit_file(bad)
    assert err.value.hint is not None and "lorafleet data check" in err.value.hint
    good = write(tmp_path / "good.jsonl", balanced(3))
    with pytest.raises(DatasetInvalidError):
        audit_file(good, [bad])


def test_nonsense_options_are_refused(tmp_path: Path) -> None:
    good = write(tmp_path / "good.jsonl", balanced(3))
    with pytest.raises(TrainingError, match="tokens_per_second must be positive"):
        audit_file(good, tokens_per_second=0)
    with pytest.raises(TrainingError, match="epochs"):
        audit_file(good, epochs=0)
