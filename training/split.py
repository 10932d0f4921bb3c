"""`lorafleet data split`: train/val/test files, stratified by label, with no input on two sides.

1. Group: examples whose inputs are the same or near duplicates form one group, and a group goes to one
   split whole; otherwise the test split would hold copies of training inputs and inflate every metric.
2. Stratify: when the answers form a label set, each label's groups are split on their own (a group
   counts under its most frequent answer), so every split has the labels' proportions.
3. Allocate: per label, the target counts are the ratios times its examples, each rounded down or up,
   the labels that round up chosen by largest remainder toward the overall 80/10/10 (so many small
   labels still fill val and test); a label with at least 3 examples gets at least one in each split.
   Groups, in a seeded shuffle (largest first), go to the split furthest below its target. Without
   duplicates this hits the targets exactly, so each label is within one example of the exact ratio.

The splits keep the source file's order. The same file and seed give byte-identical files;
`manifest.json` records the seed, ratios, counts and SHA-256 of every file.

"The same input" is defined here, once, and `lorafleet data audit` reports with the same definitions:
the input of an example is every turn before the answer except the system turn (usually the same for
every example, it would make all of them look alike), normalised (NFKC, lowercase, punctuation and
`_` stripped, whitespace collapsed). Near duplicates have a character-trigram Jaccard similarity of at
least 0.8 (this catches "top up"/"topup" and "cannot"/"cant", which word overlap misses). They are
found without comparing every pair: an exact set-similarity join with prefix filtering (Bayardo et
al., "Scaling up all pairs similarity search", WWW 2007): with trigrams ordered rarest first, two sets
with Jaccard >= t share one of the first |s| - ceil(t|s|) + 1 trigrams of each, so only records
sharing such a rare trigram are compared. Inputs with different numbers in them are never near
duplicates: "order 1041" and "order 1042" are two requests of one template, not a typo of one another.
Near duplicates group around a representative (see `_group`), not in chains.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from lorafleet import __version__
from training.check import read_valid
from training.dataset import Example, label_set
from training.errors import OutputExistsError, SplitError

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)
MANIFEST_FILE = "manifest.json"
NEAR_THRESHOLD = 0.8


def write_atomic(path: Path, data: bytes) -> str:
    """Write bytes through a temporary file renamed into place; return their SHA-256.

    A reader sees the old file or the new one, never half of one, and a crash leaves the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    return hashlib.sha256(data).hexdigest()


def jsonl_bytes(examples: Sequence[Example]) -> bytes:
    """Chat JSONL as `training.dataset.write_jsonl` writes it."""
    return "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples).encode()


_PUNCTUATION = re.compile(r"[^\w\s]|_")
_NUMBER = re.compile(r"\d+")


def normalize_text(text: str) -> str:
    """Lowercase, punctuation stripped, whitespace collapsed: what duplicate detection compares."""
    text = _PUNCTUATION.sub("", unicodedata.normalize("NFKC", text).lower())
    return " ".join(text.split())


def input_key(example: Example) -> str:
    """The normalised input of an example: its turns before the answer, system turn left out."""
    return "\n".join(normalize_text(m.content) for m in example.messages[:-1] if m.role != "system")


def _trigrams(key: str) -> set[str]:
    padded = f" {key} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)} or {padded}


def _jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class _Records:
    """Trigram sets as int ids, sorted rarest first, with their prefixes for a threshold."""

    def __init__(self, keys: Sequence[str], rank: dict[str, int], threshold: float) -> None:
        self.sets = [sorted(rank[g] for g in _trigrams(k)) for k in keys]
        self.frozen = [frozenset(s) for s in self.sets]
        self.prefix = [s[: len(s) - math.ceil(threshold * len(s)) + 1] for s in self.sets]


def _rank(keys: Iterable[str]) -> dict[str, int]:
    freq = Counter(g for k in keys for g in _trigrams(k))
    return {g: i for i, (g, _) in enumerate(sorted(freq.items(), key=lambda kv: (kv[1], kv[0])))}


def similar_pairs(keys: Sequence[str], threshold: float = NEAR_THRESHOLD) -> list[tuple[int, int, float]]:
    """Every pair (i, j, similarity), i < j, of distinct keys with trigram Jaccard >= threshold."""
    recs = _Records(keys, _rank(keys), threshold)
    numbers = [_NUMBER.findall(k) for k in keys]
    index: dict[int, list[int]] = defaultdict(list)
    found = []
    for i in sorted(range(len(keys)), key=lambda k: (len(recs.sets[k]), k)):
        size = len(recs.sets[i])
        candidates = {j for g in recs.prefix[i] for j in index[g] if len(recs.sets[j]) >= threshold * size}
        for j in candidates:
            if keys[i] != keys[j] and numbers[i] == numbers[j]:
                sim = _jaccard(recs.frozen[i], recs.frozen[j])
                if sim >= threshold:
                    found.append((min(i, j), max(i, j), sim))
        for g in recs.prefix[i]:
            index[g].append(i)
    return sorted(found)


def similar_across(
    keys: Sequence[str], others: Sequence[str], threshold: float = NEAR_THRESHOLD
) -> list[tuple[int, int, float]]:
    """Every pair (i in keys, j in others, similarity) with trigram Jaccard >= threshold."""
    rank = _rank([*keys, *others])
    mine, theirs = _Records(keys, rank, threshold), _Records(others, rank, threshold)
    numbers = [_NUMBER.findall(k) for k in others]
    index: dict[int, list[int]] = defaultdict(list)
    for j, prefix in enumerate(theirs.prefix):
        for g in prefix:
            index[g].append(j)
    found = []
    for i, prefix in enumerate(mine.prefix):
        size = len(mine.sets[i])
        candidates = {
            j for g in prefix for j in index[g] if threshold * size <= len(theirs.sets[j]) <= size / threshold
        }
        mine_numbers = _NUMBER.findall(keys[i])
        for j in candidates:
            sim = _jaccard(mine.frozen[i], theirs.frozen[j])
            if sim >= threshold and numbers[j] == mine_numbers:
                found.append((i, j, sim))
    return sorted(found)


class SplitManifest(BaseModel):
    """manifest.json beside the split files."""

    source: str
    source_sha256: str
    seed: int
    ratios: dict[str, float]
    stratified: bool = Field(description="Split per label (the answers form a label set).")
    counts: dict[str, int]
    sha256: dict[str, str] = Field(description="SHA-256 of each split file.")
    label_counts: dict[str, dict[str, int]] | None = Field(
        description="Per split, the examples of each label; None when not stratified."
    )
    groups: int = Field(description="Groups of equal or near-duplicate inputs, each kept in one split.")
    largest_group: int = Field(default=0, description="Examples in the largest group.")
    warnings: list[str] = Field(default_factory=list, description="Splits left empty, and why.")
    lorafleet_version: str = __version__


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise SplitError(
            f"ratios must be three non-negative numbers (train, val, test) summing to 1, got {tuple(ratios)}"
        )
    return (ratios[0], ratios[1], ratios[2])


def targets(n: int, ratios: Sequence[float]) -> list[int]:
    """Whole counts per split summing to n: largest remainder, then at least 1 each when n >= 3."""
    exact = [n * r for r in ratios]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(ratios):
        for i in range(len(ratios)):
            if counts[i] == 0 and ratios[i] > 0:
                donor = max(range(len(ratios)), key=lambda k: (counts[k], -k))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _group(examples: Sequence[Example]) -> list[list[int]]:
    """Indices of examples grouped by normalised input: equal inputs, plus near duplicates of a representative.

    Inputs are taken in file order; each joins the earlier representative it is most similar to, or
    becomes one. A group is its representative and the inputs directly similar to it, never a chain
    of near duplicates of near duplicates (which would merge a whole templated dataset into one group).
    """
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_key[input_key(e)].append(i)
    keys = list(by_key)
    earlier: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for a, b, sim in similar_pairs(keys):
        earlier[b].append((sim, -a))
    representative = list(range(len(keys)))
    for k in range(len(keys)):
        reps = [(sim, neg) for sim, neg in earlier[k] if representative[-neg] == -neg]
        if reps:
            representative[k] = -max(reps)[1]
    groups: dict[int, list[int]] = defaultdict(list)
    for k, key in enumerate(keys):
        groups[representative[k]].extend(by_key[key])
    return sorted(sorted(g) for g in groups.values())


def _label_targets(sizes: dict[str, int], ratios: Sequence[float]) -> dict[str, list[int]]:
    """Per label, its examples per split: each within one of its exact share, together near the overall targets.

    A label's count in a split is its exact share rounded down or up (a label with at least 3 examples
    gets at least one in every split). Which labels round up is chosen across labels, largest
    remainder first, toward the overall targets: ten labels of two examples split 16/2/2, not 20/0/0.
    """
    want = targets(sum(sizes.values()), ratios)
    low: dict[str, list[int]] = {}
    high: dict[str, list[int]] = {}
    for label, n in sizes.items():
        exact = [n * r for r in ratios]
        lo, hi = [math.floor(x) for x in exact], [math.ceil(x) for x in exact]
        if n >= len(ratios):
            for s, r in enumerate(ratios):
                if r > 0 and lo[s] == 0:
                    lo[s] = hi[s] = 1
        while sum(lo) > n:
            lo[max(range(len(ratios)), key=lambda k: (lo[k], -k))] -= 1
        low[label], high[label] = lo, hi
    have = [sum(lo[s] for lo in low.values()) for s in range(len(ratios))]
    counts = {label: list(lo) for label, lo in low.items()}
    for label in sorted(sizes, key=lambda lab: (sum(low[lab]) - sizes[lab], lab)):
        x, exact = counts[label], [sizes[label] * r for r in ratios]
        for _ in range(sizes[label] - sum(x)):
            s = max(
                (k for k in range(len(ratios)) if x[k] < high[label][k]),
                key=lambda k: (want[k] - have[k], exact[k] - x[k], -k),
            )
            x[s] += 1
            have[s] += 1
    return counts


def _allocate(groups: list[list[int]], want: Sequence[int], rng: random.Random) -> list[list[int]]:
    """Assign whole groups to splits, each to the split furthest below its target."""
    order = list(groups)
    rng.shuffle(order)
    order.sort(key=len, reverse=True)
    have = [0] * len(want)
    out: list[list[int]] = [[] for _ in want]
    for g in order:
        # Furthest below target, counted in examples; ties go to the split earliest in SPLITS.
        k = max(range(len(want)), key=lambda s: (want[s] - have[s], -s))
        out[k].extend(g)
        have[k] += len(g)
    return out


def split_examples(
    examples: Sequence[Example], seed: int = 0, ratios: Sequence[float] = DEFAULT_RATIOS
) -> dict[str, list[Example]]:
    """Split into train, val and test (see the module docstring); the same input and seed, the same split."""
    return _split(examples, seed, ratios)[0]


def _split(
    examples: Sequence[Example], seed: int, ratios: Sequence[float]
) -> tuple[dict[str, list[Example]], list[list[int]]]:
    """The splits and the groups of equal or near-duplicate inputs."""
    ratios = _check_ratios(ratios)
    rng = random.Random(seed)
    groups = _group(examples)
    strata: dict[str, list[list[int]]] = defaultdict(list)
    if label_set(examples) is not None:
        for g in groups:
            answers = Counter(examples[i].answer.strip() for i in g)
            label = min(answers, key=lambda a: (-answers[a], a))
            strata[label].append(g)
    else:
        strata[""] = groups
    want = _label_targets({label: sum(map(len, g)) for label, g in strata.items()}, ratios)
    chosen: list[set[int]] = [set() for _ in SPLITS]
    for label in sorted(strata):
        for k, part in enumerate(_allocate(strata[label], want[label], rng)):
            chosen[k].update(part)
    splits = {name: [e for i, e in enumerate(examples) if i in chosen[k]] for k, name in enumerate(SPLITS)}
    return splits, groups


def _empty_split_warnings(
    counts: dict[str, int], ratios: Sequence[float], groups: list[list[int]]
) -> list[str]:
    n, largest = sum(counts.values()), max(map(len, groups), default=0)
    if n < len(SPLITS):
        why = f"{n} example{'' if n == 1 else 's'} cannot fill three splits; add examples"
    else:
        why = (
            f"the {n} examples form {len(groups)} group{'' if len(groups) == 1 else 's'} of equal or "
            f"near-duplicate inputs (the largest holds {largest}), and a group stays in one split; "
            "`lorafleet data audit` lists the near duplicates"
        )
    return [
        f"the {name} split is empty: {why}"
        for name, r in zip(SPLITS, ratios, strict=True)
        if r > 0 and counts[name] == 0
    ]


def split_file(
    path: Path,
    out_dir: Path,
    seed: int = 0,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    force: bool = False,
) -> SplitManifest:
    """Split a valid chat JSONL file into out_dir: train.jsonl, val.jsonl, test.jsonl, manifest.json.

    Refuse a non-empty out_dir unless `force` (then these four files are replaced, nothing else).
    """
    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(
            f"{out_dir} is not empty: splitting there would replace its files",
            hint="name a new or empty folder, or pass --force to replace train/val/test.jsonl and manifest.json",
        )
    ratios = _check_ratios(ratios)
    examples = read_valid(path)
    splits, groups = _split(examples, seed, ratios)
    stratified = label_set(examples) is not None
    counts = {name: len(part) for name, part in splits.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = {
        name: write_atomic(out_dir / f"{name}.jsonl", jsonl_bytes(part)) for name, part in splits.items()
    }
    manifest = SplitManifest(
        source=str(path),
        source_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        seed=seed,
        ratios=dict(zip(SPLITS, ratios, strict=True)),
        stratified=stratified,
        counts=counts,
        sha256=hashes,
        label_counts={
            name: dict(sorted(Counter(e.answer.strip() for e in part).items()))
            for name, part in splits.items()
        }
        if stratified
        else None,
        groups=len(groups),
        largest_group=max(map(len, groups), default=0),
        warnings=_empty_split_warnings(counts, ratios, groups),
    )
    write_atomic(out_dir / MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode())
    return manifest
