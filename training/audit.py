"""`lorafleet data audit`: what a valid dataset still gets wrong, and what training on it costs.

    duplicates      the same normalised input with the same answer, more than once
    near duplicates inputs whose character-trigram Jaccard similarity is >= 0.8 (`near_threshold`)
    conflicts       the same normalised input with different answers: the model cannot learn both
    leakage         inputs of this file found (exactly or nearly) in each `against` file, e.g. the
                    test split in the training split, which would inflate every metric
    class balance   when the answers form a label set: counts, max/min ratio, a warning above 3x
    tokens          per conversation through the base model's tokenizer and chat template
    cost            training tokens for N epochs, priced per GPU hour and per 1M API tokens
    review sample   N seeded random examples written to a file for a person to read

"The same input" is defined once, in `training.split` (normalised text, the system turn left out,
trigram similarity), so that what the audit calls a duplicate is what the split keeps on one side.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lorafleet import basemodel
from training.check import read_valid
from training.dataset import Example, label_set
from training.errors import TrainingError
from training.split import NEAR_THRESHOLD, input_key, similar_across, similar_pairs, write_atomic
from training.tokens import count_tokens_batch, load_tokenizer, model_context

IMBALANCE_THRESHOLD = 3.0
# Many labels, few examples each: where a list of the labels in the prompt becomes a real choice.
MANY_LABELS = 30
FEW_PER_LABEL = 20
REVIEW_SIZE = 50
# Training throughput measured on the project's reference machine (2 CPU cores, AMX-bf16; SmolLM2-135M,
# LoRA r=8, frozen base in bf16), 2026-11-25. A GPU is far faster: measure yours and pass it.
TOKENS_PER_SECOND = 500.0
# A round on-demand price for one small cloud GPU (an NVIDIA L4 or A10G was about $0.7-1.0/h in 2025).
GPU_HOURLY_USD = 1.0
# OpenAI's published price for fine-tuning gpt-4o-mini: $3.00 per 1M training tokens (2025).
API_PRICE_PER_1M_USD = 3.0
_LISTED = 100


class DuplicateGroup(BaseModel):
    lines: list[int] = Field(description="Lines holding the same normalised input and the same answer.")
    input: str
    answer: str


class NearPair(BaseModel):
    line_a: int
    line_b: int
    input_a: str
    input_b: str
    similarity: float
    same_answer: bool


class Conflict(BaseModel):
    input: str
    answers: dict[str, list[int]] = Field(description="Each answer and the lines that give it.")


class LeakPair(BaseModel):
    line: int = Field(description="Line in the audited file.")
    other_line: int = Field(description="Line in the other file.")
    similarity: float


class Leakage(BaseModel):
    against: str
    examples: int = Field(description="Examples in the other file.")
    exact: int = Field(description="Audited examples whose normalised input is in the other file.")
    near: int = Field(description="Audited examples only nearly matching one in the other file.")
    pairs: list[LeakPair] = Field(description=f"The first {_LISTED} matching pairs, exact first.")


class ClassBalance(BaseModel):
    counts: dict[str, int]
    imbalance_ratio: float = Field(description="Examples of the largest label over the smallest.")
    threshold: float


class LabelPrompt(BaseModel):
    """Many labels, few examples each: what listing the labels in the system prompt costs."""

    labels: int
    examples_per_label: float
    listed: bool = Field(description="Every example's system prompt already names every label.")
    prompt_tokens: int = Field(description="Tokens a system prompt listing the labels adds to each example.")
    training_tokens: int = Field(description="prompt_tokens x examples x epochs.")


class TokenStats(BaseModel):
    tokenizer: str = Field(description="The model folder whose tokenizer and chat template counted.")
    min: int
    median: float
    p95: int
    max: int
    total: int
    max_tokens: int
    over_max: list[int] = Field(description="Lines longer than max_tokens.")


class CostEstimate(BaseModel):
    epochs: int
    training_tokens: int = Field(description="Total tokens x epochs.")
    tokens_per_second: float
    gpu_hourly_usd: float
    training_hours: float
    gpu_cost_usd: float
    api_price_per_1m_usd: float
    api_cost_usd: float


class ReviewSample(BaseModel):
    path: str | None = Field(description="Where the sample was written; None when not asked for.")
    seed: int
    lines: list[int]


class AuditReport(BaseModel):
    file: str
    sha256: str
    examples: int
    duplicates: list[DuplicateGroup]
    duplicate_examples: int = Field(description="Copies beyond the first of each duplicate group.")
    near_threshold: float
    near_duplicates: list[NearPair] = Field(description=f"The first {_LISTED} pairs.")
    near_duplicate_pairs: int
    conflicts: list[Conflict]
    leakage: list[Leakage]
    labels: ClassBalance | None = Field(description="None when the answers are free text.")
    label_prompt: LabelPrompt | None = Field(
        default=None, description=f"Set when labels are many (>= {MANY_LABELS}) and examples per label few."
    )
    tokens: TokenStats
    cost: CostEstimate
    review: ReviewSample
    warnings: list[str]

    def render(self) -> str:
        """The report as text for a person."""
        out = [f"audit of {self.file} ({self.examples} examples, sha256 {self.sha256[:12]})", ""]

        def section(title: str) -> None:
            out.extend(["", title] if out[-1] else [title])

        section("duplicates (same normalised input and answer)")
        out.append(
            f"  {_count(self.duplicate_examples, 'extra copy', 'extra copies')} in "
            f"{_count(len(self.duplicates), 'group')}"
        )
        out.extend(
            f"  lines {_lines(g.lines)}: {_short(g.input)!r} -> {g.answer!r}" for g in self.duplicates[:10]
        )
        section(f"near duplicates (trigram similarity >= {self.near_threshold:g})")
        out.append(f"  {_count(self.near_duplicate_pairs, 'pair')}")
        out.extend(
            f"  lines {p.line_a} and {p.line_b} ({p.similarity:.2f}"
            + ("" if p.same_answer else ", different answers")
            + f"): {_short(p.input_a, 40)!r} ~ {_short(p.input_b, 40)!r}"
            for p in self.near_duplicates[:10]
        )
        section("conflicts (same normalised input, different answers)")
        out.append(f"  {_count(len(self.conflicts), 'input')}")
        for conflict in self.conflicts[:10]:
            answers = "; ".join(f"{a!r} on lines {_lines(ls)}" for a, ls in conflict.answers.items())
            out.append(f"  {_short(conflict.input)!r}: {answers}")
        for leak in self.leakage:
            section(f"leakage: inputs also in {leak.against} ({_count(leak.examples, 'example')})")
            out.append(f"  {leak.exact} exact, {leak.near} near")
            out.extend(
                f"  line {p.line} ~ {leak.against}:{p.other_line} ({p.similarity:.2f})"
                for p in leak.pairs[:10]
            )
        section("class balance")
        if self.labels is None:
            out.append("  the answers are free text, not a label set")
        else:
            width = max(len(lab) for lab in self.labels.counts)
            out.extend(f"  {lab.ljust(width)}  {n}" for lab, n in self.labels.counts.items())
            out.append(f"  imbalance ratio (max/min): {self.labels.imbalance_ratio:.2f}")
        if self.label_prompt is not None:
            lp = self.label_prompt
            section(
                f"many labels, few examples: {lp.labels} labels, {lp.examples_per_label:.1f} examples each"
            )
            if lp.listed:
                out.append(
                    f"  the system prompt lists the labels: {lp.prompt_tokens} tokens on every example and request"
                )
            else:
                out.append(
                    f"  listing them in the system prompt (finetune --list-labels): +{lp.prompt_tokens} tokens on every "
                    f"example and every request, {lp.training_tokens} more training tokens"
                )
            out.append(
                "  without a list, the model learns the names from the examples: serve with "
                "`route create --enforce-labels` so that every answer is a label"
            )
        t = self.tokens
        section(f"tokens per conversation (chat template of {t.tokenizer})")
        out.append(f"  min {t.min}, median {t.median:g}, p95 {t.p95}, max {t.max}; total {t.total}")
        out.append(
            f"  over {t.max_tokens}: {len(t.over_max)}"
            + (f" (lines {_lines(t.over_max)})" if t.over_max else "")
        )
        c = self.cost
        section(f"training cost, {c.epochs} epochs")
        out.append(f"  {c.training_tokens} training tokens")
        out.append(
            f"  GPU: {_duration(c.training_hours)} at {c.tokens_per_second:g} tokens/s x ${c.gpu_hourly_usd:.2f}/h"
            f" = ${c.gpu_cost_usd:.2f}"
        )
        out.append(f"  API: ${c.api_price_per_1m_usd:.2f} per 1M tokens = ${c.api_cost_usd:.2f}")
        section("review sample")
        if self.review.path:
            out.append(f"  {len(self.review.lines)} examples (seed {self.review.seed}) in {self.review.path}")
        else:
            out.append(
                f"  {len(self.review.lines)} examples chosen (seed {self.review.seed}); "
                "pass --review-out FILE to write them to a file"
            )
        section("warnings")
        out.extend(f"  - {w}" for w in self.warnings) if self.warnings else out.append("  none")
        return "\n".join(out)


def _duration(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def _lines(lines: Sequence[int], shown: int = 8) -> str:
    text = ", ".join(str(n) for n in lines[:shown])
    return text + (f", ... ({len(lines)} in all)" if len(lines) > shown else "")


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _groups(examples: Sequence[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[input_key(e)].append(e)
    return groups


def _matches(
    examples: Sequence[Example], other_path: Path, threshold: float
) -> tuple[list[Example], list[LeakPair], list[LeakPair]]:
    """(the other file's examples, exact matches, near ones) of `examples` against `other_path`."""
    others = read_valid(other_path)
    other_groups = _groups(others)
    exact = [
        LeakPair(line=e.line, other_line=other_groups[input_key(e)][0].line, similarity=1.0)
        for e in examples
        if input_key(e) in other_groups
    ]
    exact_lines = {p.line for p in exact}
    rest = [e for e in examples if e.line not in exact_lines]
    other_keys = list(other_groups)
    best: dict[int, LeakPair] = {}
    for i, j, sim in similar_across([input_key(e) for e in rest], other_keys, threshold):
        line = rest[i].line
        if line not in best or sim > best[line].similarity:
            best[line] = LeakPair(line=line, other_line=other_groups[other_keys[j]][0].line, similarity=sim)
    return others, exact, sorted(best.values(), key=lambda p: p.line)


def _leakage(examples: Sequence[Example], other_path: Path, threshold: float) -> Leakage:
    others, exact, near = _matches(examples, other_path, threshold)
    return Leakage(
        against=str(other_path),
        examples=len(others),
        exact=len(exact),
        near=len(near),
        pairs=[*exact, *near][:_LISTED],
    )


def leaked_lines(
    examples: Sequence[Example], other_path: Path, threshold: float = NEAR_THRESHOLD
) -> set[int]:
    """The lines of `examples` whose input is in `other_path`, exactly or nearly (as the audit finds)."""
    _, exact, near = _matches(examples, other_path, threshold)
    return {p.line for p in [*exact, *near]}


def _review(examples: Sequence[Example], size: int, seed: int, out: Path | None) -> ReviewSample:
    sample = sorted(
        random.Random(seed).sample(list(examples), min(size, len(examples))), key=lambda e: e.line
    )
    if out is not None:
        if out.suffix.lower() == ".csv":
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(["line", "input", "answer", "ok"])
            for e in sample:
                turns = [m for m in e.messages[:-1] if m.role != "system"]
                shown = (
                    turns[0].content
                    if len(turns) == 1
                    else "\n".join(f"{m.role}: {m.content}" for m in turns)
                )
                writer.writerow([e.line, shown, e.answer, ""])
            data = buf.getvalue().encode()
        else:
            data = "".join(
                json.dumps({"line": e.line, **e.to_json()}, ensure_ascii=False) + "\n" for e in sample
            ).encode()
        write_atomic(out, data)
    return ReviewSample(path=str(out) if out else None, seed=seed, lines=[e.line for e in sample])


def _label_prompt(
    tokenizer: Any, examples: Sequence[Example], labels: Sequence[str], epochs: int
) -> LabelPrompt:
    from training.csvimport import labels_system_prompt

    listed = all(e.system is not None and all(lab in e.system for lab in labels) for e in examples)
    listing = len(tokenizer(labels_system_prompt(labels), add_special_tokens=False).input_ids)
    plain = statistics.median(
        len(tokenizer(e.system or "", add_special_tokens=False).input_ids) for e in examples[:200]
    )
    extra = listing if listed else max(0, listing - int(plain))
    return LabelPrompt(
        labels=len(labels),
        examples_per_label=round(len(examples) / len(labels), 2),
        listed=listed,
        prompt_tokens=extra,
        training_tokens=extra * len(examples) * epochs,
    )


def audit_file(
    path: Path,
    against: Sequence[Path] = (),
    *,
    tokenizer_dir: Path | None = None,
    epochs: int = 3,
    max_tokens: int | None = None,
    gpu_hourly_usd: float = GPU_HOURLY_USD,
    tokens_per_second: float = TOKENS_PER_SECOND,
    api_price_per_1m_usd: float = API_PRICE_PER_1M_USD,
    near_threshold: float = NEAR_THRESHOLD,
    imbalance_threshold: float = IMBALANCE_THRESHOLD,
    review_out: Path | None = None,
    review_size: int = REVIEW_SIZE,
    seed: int = 0,
) -> AuditReport:
    """Audit a valid chat JSONL file (DatasetInvalidError otherwise); write the review sample if asked.

    `tokenizer_dir` defaults to the embedded base model; `max_tokens` to its context (at most 2048).
    """
    for name, value, low in (
        ("epochs", epochs, 1),
        ("tokens_per_second", tokens_per_second, 1e-9),
        ("gpu_hourly_usd", gpu_hourly_usd, 0),
        ("api_price_per_1m_usd", api_price_per_1m_usd, 0),
        ("review_size", review_size, 0),
    ):
        if value < low:
            raise TrainingError(f"{name} must be {'positive' if low else 'zero or more'}, got {value}")
    if not 0 < near_threshold <= 1:
        raise TrainingError(f"near_threshold must be in (0, 1], got {near_threshold}")
    path = Path(path)
    examples = read_valid(path)
    warnings: list[str] = []

    groups = _groups(examples)
    duplicates: list[DuplicateGroup] = []
    conflicts: list[Conflict] = []
    for key, members in groups.items():
        by_answer: dict[str, list[int]] = defaultdict(list)
        for e in members:
            by_answer[e.answer.strip()].append(e.line)
        for answer, lines in by_answer.items():
            if len(lines) > 1:
                duplicates.append(DuplicateGroup(lines=lines, input=key, answer=answer))
        if len(by_answer) > 1:
            conflicts.append(Conflict(input=key, answers=dict(by_answer)))
    extra_copies = sum(len(g.lines) - 1 for g in duplicates)
    if duplicates:
        warnings.append(
            f"{_count(extra_copies, 'duplicate example')}: each weighs its input more in training; "
            "`lorafleet data split` keeps each group on one side"
        )
    if conflicts:
        warnings.append(
            f"{_count(len(conflicts), 'input')} with conflicting answers: decide on one answer for each"
        )

    keys = list(groups)
    firsts = [members[0] for members in groups.values()]
    pairs = similar_pairs(keys, near_threshold)
    near = [
        NearPair(
            line_a=firsts[i].line,
            line_b=firsts[j].line,
            input_a=keys[i],
            input_b=keys[j],
            similarity=round(sim, 4),
            same_answer=firsts[i].answer.strip() == firsts[j].answer.strip(),
        )
        for i, j, sim in pairs
    ]
    near.sort(key=lambda p: (p.line_a, p.line_b))
    differing = sum(1 for p in near if not p.same_answer)
    if differing:
        warnings.append(
            f"{_count(differing, 'near-duplicate pair')} with different answers: check their labels"
        )

    leakage = [_leakage(examples, Path(other), near_threshold) for other in against]
    for leak in leakage:
        if leak.exact or leak.near:
            warnings.append(
                f"{_count(leak.exact + leak.near, 'example')} also in {leak.against} ({leak.exact} exact, {leak.near} near):"
                " evaluation on it would be inflated; split with `lorafleet data split`"
            )

    balance = None
    labels = label_set(examples)
    if labels is not None:
        counts = Counter(e.answer.strip() for e in examples)
        ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        ratio = max(counts.values()) / min(counts.values())
        balance = ClassBalance(counts=ordered, imbalance_ratio=round(ratio, 4), threshold=imbalance_threshold)
        if ratio > imbalance_threshold:
            warnings.append(
                f"labels are imbalanced ({ratio:.1f}x between the largest and the smallest, over "
                f"{imbalance_threshold:g}x): upsample the rare labels or weight the loss by class"
            )
        rare = [lab for lab, n in counts.items() if n < 3]
        if rare:
            warnings.append(
                f"labels with fewer than 3 examples cannot appear in train, val and test: {', '.join(sorted(rare))}"
            )

    model_dir = basemodel.resolve(tokenizer_dir)
    limit = max_tokens if max_tokens is not None else model_context(model_dir)
    tokenizer = load_tokenizer(model_dir)
    counts_tok = count_tokens_batch(tokenizer, examples)
    label_prompt = None
    if labels is not None and len(labels) >= MANY_LABELS and len(examples) / len(labels) <= FEW_PER_LABEL:
        label_prompt = _label_prompt(tokenizer, examples, labels, epochs)
        if not label_prompt.listed:
            warnings.append(
                f"{len(labels)} labels with {label_prompt.examples_per_label:.1f} examples each: the defaults train "
                "longer for it; listing the labels in the prompt costs "
                f"{label_prompt.prompt_tokens} tokens a request (see 'many labels, few examples')"
            )
    ordered_tok = sorted(counts_tok)
    tokens = TokenStats(
        tokenizer=str(model_dir),
        min=ordered_tok[0],
        median=statistics.median(ordered_tok),
        p95=ordered_tok[math.ceil(0.95 * len(ordered_tok)) - 1],
        max=ordered_tok[-1],
        total=sum(ordered_tok),
        max_tokens=limit,
        over_max=[e.line for e, n in zip(examples, counts_tok, strict=True) if n > limit],
    )
    if tokens.over_max:
        warnings.append(
            f"{_count(len(tokens.over_max), 'example')} longer than {limit} tokens: shorten or drop them"
        )

    training_tokens = tokens.total * epochs
    hours = training_tokens / tokens_per_second / 3600
    cost = CostEstimate(
        epochs=epochs,
        training_tokens=training_tokens,
        tokens_per_second=tokens_per_second,
        gpu_hourly_usd=gpu_hourly_usd,
        training_hours=hours,
        gpu_cost_usd=hours * gpu_hourly_usd,
        api_price_per_1m_usd=api_price_per_1m_usd,
        api_cost_usd=training_tokens / 1e6 * api_price_per_1m_usd,
    )

    return AuditReport(
        file=str(path),
        sha256=_sha256(path),
        examples=len(examples),
        duplicates=duplicates,
        duplicate_examples=extra_copies,
        near_threshold=near_threshold,
        near_duplicates=near[:_LISTED],
        near_duplicate_pairs=len(near),
        conflicts=conflicts,
        leakage=leakage,
        labels=balance,
        label_prompt=label_prompt,
        tokens=tokens,
        cost=cost,
        review=_review(examples, review_size, seed, review_out),
        warnings=warnings,
    )
