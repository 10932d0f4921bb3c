"""Issue 20: all 77 BANKING77 intents, measured against the paper (Casanueva et al. 2020).

    python bench/banking77.py --per-intent 10          (a) 10 training examples per intent
    python bench/banking77.py --per-intent 0           (b) the full training set (10,003)
    python bench/banking77.py --per-intent 10 --test-per-intent 5   a stratified test sample
    python bench/banking77.py --per-intent 10 --adapter /tmp/b77-a/adapter --no-base
                                                 score an earlier run's adapter (same splits), no training
    python bench/banking77.py ... --work /tmp/b77-b --compare /tmp/b77-a
                                                 and test the difference to an earlier run, paired
    python bench/banking77.py ... --compare bench/results/banking77-10-<date>.txt
                                                 the same against a committed run's verdicts

What a new user does: a plain system prompt that does not list the labels (`--list-labels` adds
them), `lorafleet train`'s defaults (chosen from the data: training/defaults.py) unless a flag
overrides one, validation on 2 examples per intent of the official train split (never trained on),
and the official test split (all 3,080, or `--test-per-intent N` of each intent, with a 95% Wilson
interval). The adapter is scored by constrained choice among the 77 labels (the headline) and by
free generation beside it, and so is the base model (zero-shot). Prints the training and eval time
on this machine's cores; writes results/banking77-<mode>-<date>.txt, and the evaluation (every
answer) to the work folder's eval.json; the results file ends with the tuned model's verdict on
each test example (1 right, 0 wrong) and the test split's SHA-256. `--compare` sets this run's
adapter against an earlier run, example by example on the same test split: the accuracy difference,
its 95% paired-bootstrap interval and McNemar's p-value (training/significance.py, what `lorafleet
eval` uses for tuned against base). The earlier run is its work folder (its eval.json) or its
results file (its verdicts: a committed run can be paired with long after its work folder is gone).

The paper's figures (its Table 3, USE+ConveRT; BERT-large in brackets): 10 examples per intent
85.2% (83.4%), full training set 93.4% (93.6%) accuracy on the test split.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes

if TYPE_CHECKING:
    from training.evaluate import EvalReport

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"
SYSTEM = "You classify online banking customer questions by intent. Answer with the intent's name only."
PAPER = {"10": (0.852, 0.834), "full": (0.934, 0.936)}  # USE+ConveRT, BERT-large
SEED = 20


def read(path: Path) -> dict[str, list[str]]:
    by_intent: dict[str, list[str]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_intent[row["category"]].append(row["text"].strip())
    return dict(sorted(by_intent.items()))


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def write(path: Path, rows: list[tuple[str, str]], system: str) -> None:
    with path.open("w") as fh:
        for text, label in rows:
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": text},
                {"role": "assistant", "content": label},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")


def chosen_intents(data: Path, count: int) -> set[str]:
    """`count` of the intents, the first of one seeded order: a smaller count's are among a larger's."""
    intents = sorted(read(data / "train.csv"))
    if not 2 <= count <= len(intents):
        sys.exit(f"error: --intents {count}: choose between 2 and {len(intents)}")
    random.Random(SEED).shuffle(intents)
    return set(intents[:count])


def splits(
    data: Path, per_intent: int, val_per_intent: int, test_per_intent: int, intents: set[str] | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Every intent draws its examples as it would among all 77, so a subset's are the full run's."""
    rng = random.Random(SEED)
    train_rows: list[tuple[str, str]] = []
    val_rows: list[tuple[str, str]] = []
    for intent, texts in read(data / "train.csv").items():
        texts = texts[:]
        rng.shuffle(texts)
        if intents is None or intent in intents:
            val_rows += [(t, intent) for t in texts[:val_per_intent]]
            rest = texts[val_per_intent:]
            train_rows += [(t, intent) for t in (rest[:per_intent] if per_intent else rest)]
    test_rows: list[tuple[str, str]] = []
    for intent, texts in read(data / "test.csv").items():
        texts = texts[:]
        if test_per_intent:
            rng.shuffle(texts)
            texts = texts[:test_per_intent]
        if intents is None or intent in intents:
            test_rows += [(t, intent) for t in texts]
    rng.shuffle(train_rows)
    return train_rows, val_rows, test_rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BANKING77_DIR", DEFAULT_DATA)))
    parser.add_argument("--per-intent", type=int, default=10, help="Training examples per intent; 0: all.")
    parser.add_argument("--val-per-intent", type=int, default=2)
    parser.add_argument(
        "--test-per-intent", type=int, default=0, help="A stratified test sample; 0: all 3,080."
    )
    parser.add_argument(
        "--intents", type=int, default=77, help="Keep this many of the 77 intents (a seeded choice)."
    )
    parser.add_argument("--list-labels", action="store_true", help="List the 77 labels in the system prompt.")
    parser.add_argument("--no-base", dest="base", action="store_false", help="Skip the base model's scores.")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="A TrainConfig field."
    )
    parser.add_argument("--base-model", help="A local model folder (default: the embedded SmolLM2-135M).")
    parser.add_argument("--work", type=Path, help="Keep the data and adapter here.")
    parser.add_argument(
        "--adapter",
        type=Path,
        help="Score this adapter (an earlier run's, same splits) instead of training one.",
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads for training and eval (default: the idle cores)."
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR|FILE",
        help="An earlier run to test this one against: its work folder or its results file.",
    )
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args()

    from training.config import TrainConfig
    from training.csvimport import labels_system_prompt
    from training.evaluate import evaluate
    from training.significance import compare
    from training.train import train

    out = fakes.Tee()
    mode = "full" if args.per_intent == 0 else str(args.per_intent)
    shape = "the full training set" if mode == "full" else f"{mode} training examples per intent"
    which = "all 77 intents" if args.intents == 77 else f"{args.intents} of the 77 intents"
    out(fakes.machine_header(f"BANKING77, {which}, {shape} (issue 20)"))
    out(f"command: python bench/banking77.py {' '.join(sys.argv[1:])}")
    work = args.work or Path(tempfile.mkdtemp(prefix="lorafleet-banking77-"))
    work.mkdir(parents=True, exist_ok=True)
    intents = chosen_intents(args.data, args.intents) if args.intents != 77 else None
    train_rows, val_rows, test_rows = splits(
        args.data, args.per_intent, args.val_per_intent, args.test_per_intent, intents
    )
    labels = sorted({lab for _, lab in train_rows})
    system = labels_system_prompt(labels) if args.list_labels else SYSTEM
    for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
        write(work / f"{name}.jsonl", rows, system)
    test_sha = hashlib.sha256((work / "test.jsonl").read_bytes()).hexdigest()
    # Read before training: a comparison that cannot be made is said at once, not 30 minutes later.
    earlier = earlier_verdicts(args.compare, test_sha, len(test_rows)) if args.compare else None
    out(
        f"data: {args.data}; train {len(train_rows)}, val {len(val_rows)} (official train split, "
        f"disjoint), test {len(test_rows)} (official test split"
        + (f", {args.test_per_intent} per intent, seed {SEED})" if args.test_per_intent else ", all)")
    )
    if intents is not None:
        out(f"intents ({len(intents)}, seed {SEED}): {', '.join(sorted(intents))}")
    out(f"system prompt ({'lists the labels' if args.list_labels else 'no labels'}): {system[:160]!r}")
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides.update(read_config_file_value(key, value))
    if args.base_model:
        overrides["base_model"] = args.base_model
    if args.threads:
        overrides["threads"] = args.threads
    config = TrainConfig.build(overrides, "--set")
    adapter = args.adapter or work / "adapter"
    if args.adapter:
        out(f"adapter: {args.adapter} (not trained in this run)")
    else:
        started = time.perf_counter()
        result = train(
            config, work / "train.jsonl", work / "val.jsonl", work / "adapter", progress=True, force=True
        )
        train_s = time.perf_counter() - started
        out(
            f"training config (as run): {result.config.model_dump_json(exclude={'device', 'threads', 'base_model'})}"
        )
        for note in result.notes:
            out(f"  {note}")
        h = result.history
        out(
            f"training: {train_s:.0f} s, {h.tokens} example tokens at {h.tokens_per_s:.0f} tokens/s; "
            f"validation loss by epoch: {', '.join(f'{p.loss:.3f}' for p in h.val)}"
        )
    started = time.perf_counter()
    report = evaluate(
        work / "test.jsonl",
        adapter,
        train_path=work / "train.jsonl",
        skip_baseline=not args.base,
        base_model=args.base_model,
        batch_size=16,
        threads=args.threads,
        log=lambda m: print(m, file=sys.stderr),
    )
    eval_s = time.perf_counter() - started
    import torch

    out(
        f"evaluation: {eval_s:.0f} s for {len(test_rows)} examples"
        + (" x 2 models" if args.base else "")
        + f" on {torch.get_num_threads()} CPU threads"
    )
    for name, r in report.models.items():
        if r.choice is not None:
            out(
                f"  {name}: constrained choice {r.choice.seconds:.0f} s, free generation {r.seconds:.0f} s"
                " (each with the prompts' prefill, which they share)"
            )
    out()
    out(
        f"{'model':<8} {'accuracy (labels)':>18} {'95% interval':>16} {'macro-F1':>9} {'free acc.':>10} {'free in labels':>15}"
    )
    for name, r in report.models.items():
        main = r.choice.scores if r.choice is not None else r.scores
        n = main.examples
        low, high = wilson(round(main.accuracy * n), n)
        free = f"{r.scores.accuracy:.3f}" if r.choice is not None else "-"
        share = f"{r.in_label_set:.0%}" if r.in_label_set is not None else "-"
        out(
            f"{name:<8} {main.accuracy:>18.3f} {f'[{low:.3f}, {high:.3f}]':>16} {main.macro_f1:>9.3f} {free:>10} {share:>15}"
        )
    use, bert = PAPER[mode] if mode in PAPER and intents is None else (None, None)
    if use is not None:
        out(f"paper (Casanueva et al. 2020, test accuracy): USE+ConveRT {use:.3f}, BERT-large {bert:.3f}")
    (work / "eval.json").write_text(report.model_dump_json())
    correct = tuned_correct(report, len(test_rows))
    if earlier is not None:
        c = compare(str(args.compare), earlier, correct)
        low, high = c.interval_points
        out(
            f"against {args.compare} (accuracy {c.baseline_accuracy:.3f}), paired on the {len(test_rows)} test "
            f"examples: {c.gain_points:+.1f} points [{low:+.1f}, {high:+.1f}], McNemar p = {c.mcnemar.p_value:.3g} "
            f"({c.mcnemar.only_b} right only here, {c.mcnemar.only_a} only there)"
        )
    out(verdicts_line(correct, test_sha))
    out(f"work folder: {work}")
    if args.save:
        subset = "" if intents is None else f"-i{args.intents}"
        print(f"saved {out.save(f'banking77-{mode}{subset}')}", file=sys.stderr)


_VERDICTS = "verdicts of the tuned model (constrained choice) on test.jsonl (sha256"
_VERDICTS_LINE = re.compile(re.escape(_VERDICTS) + r" ([0-9a-f]{64})\): ([01]+)$", re.M)


def verdicts_line(correct: list[bool], test_sha: str) -> str:
    """The results file's line that `earlier_verdicts` reads back: 1 right, 0 wrong, per example."""
    return f"{_VERDICTS} {test_sha}): {''.join('1' if ok else '0' for ok in correct)}"


def earlier_verdicts(earlier: Path, test_sha: str, examples: int) -> list[bool]:
    """Per test example, whether the earlier run's tuned model was right: from its work folder's
    eval.json or its results file's verdicts line; exits if its test split is not this run's."""
    if not earlier.exists():
        sys.exit(f"error: --compare {earlier}: no such folder or file")
    if earlier.is_dir():
        if not (earlier / "eval.json").is_file():
            sys.exit(
                f"error: --compare {earlier}: no eval.json there (runs before 2026-12-04 did not write it)"
            )
        if not (earlier / "test.jsonl").is_file():
            sys.exit(f"error: --compare {earlier}: no test.jsonl there to check its test split against")
        if hashlib.sha256((earlier / "test.jsonl").read_bytes()).hexdigest() != test_sha:
            sys.exit(f"error: --compare {earlier}: its test.jsonl differs from this run's")
        from training.evaluate import EvalReport

        return tuned_correct(EvalReport.model_validate_json((earlier / "eval.json").read_text()), examples)
    found = _VERDICTS_LINE.search(earlier.read_text())
    if found is None:
        sys.exit(f"error: --compare {earlier}: no verdicts line in it (results before 2026-12-05 have none)")
    if found.group(1) != test_sha:
        sys.exit(
            f"error: --compare {earlier}: it was tested on another test split (sha256 {found.group(1)[:12]}…)"
        )
    return [c == "1" for c in found.group(2)]


def tuned_correct(report: EvalReport, examples: int) -> list[bool]:
    """Per test example: the tuned model's constrained choice among the labels is right (as scored)."""
    choice = report.models["tuned"].choice
    correct = choice.scores.correct if choice is not None else []
    if len(correct) != examples:
        sys.exit(f"error: {len(correct)} constrained answers for {examples} test examples")
    return correct


def read_config_file_value(key: str, value: str) -> dict[str, Any]:
    """`--set rank=16`, `--set target_modules=q_proj,v_proj`: one TrainConfig field from the command line."""
    import yaml

    if key == "target_modules":
        return {key: [v for v in value.split(",") if v]}
    return {key: yaml.safe_load(value)}


if __name__ == "__main__":
    main()
