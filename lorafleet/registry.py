"""The adapter registry: immutable, date-versioned adapter versions on disk.

This is the only hand-off between training and serving. Training writes versions; serve, router
and monitor read them without importing torch.

    <root>/
      banking-v3-20261124/            one version, named <task>-v<N>-<YYYYMMDD>
        adapter/                      the PEFT folder vLLM loads
        README.md                     the model card (Hugging Face front matter; see modelcard.py)
        version.json                  VersionInfo
        eval.json                     the evaluation report (base vs tuned)
        reference.json                ReferenceStats: what monitoring compares live traffic against
        splits/                       the train, val and test splits it was trained and tested on
        ...                           anything else training adds (config, plots)
      .claims/banking-v3              N is claimed by mkdir before the version is written: never reused
      .staging/<random>/              versions being written; renamed into place whole, or never

Writes are atomic: a version is built in .staging and renamed to its name, so a reader sees it whole
or not at all. Two concurrent registrations of one task claim different N because mkdir is atomic.
`Registry.register(task, NewVersion(...))` writes a whole version (adapter, card, version.json,
reference statistics, evaluation report, extra files); `new_version` is the draft it fills.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from lorafleet.baseid import BaseIdentity, identify_model_folder
from lorafleet.errors import (
    AdapterNotFoundError,
    InvalidVersionNameError,
    RegistryError,
)

TASK_PATTERN = r"[a-z0-9](?:[a-z0-9_-]{0,46}[a-z0-9])?"
_VERSION_RE = re.compile(rf"^(?P<task>{TASK_PATTERN})-v(?P<number>[1-9][0-9]*)-(?P<date>[0-9]{{8}})$")
_TASK_RE = re.compile(rf"^{TASK_PATTERN}$")

ADAPTER_DIR = "adapter"
SPLITS_DIR = "splits"
CARD_FILE = "README.md"
INFO_FILE = "version.json"
EVAL_FILE = "eval.json"
REFERENCE_FILE = "reference.json"


def validate_task(task: str) -> str:
    """Return `task` if it is a valid task name, else raise InvalidVersionNameError."""
    if not _TASK_RE.match(task) or re.search(r"-v[0-9]+-[0-9]{8}$", task):
        raise InvalidVersionNameError(
            f"invalid task name '{task}': use 1-48 lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit",
            hint="for example --task banking",
        )
    return task


@dataclass(frozen=True, order=True)
class AdapterRef:
    """A version name: `<task>-v<N>-<YYYYMMDD>`. The only place that builds or parses one."""

    task: str
    number: int
    date: dt.date

    @classmethod
    def parse(cls, name: str) -> AdapterRef:
        m = _VERSION_RE.match(name)
        if not m:
            raise InvalidVersionNameError(
                f"'{name}' is not a version name; expected <task>-v<N>-<YYYYMMDD>, e.g. banking-v3-20261124"
            )
        try:
            date = dt.datetime.strptime(m["date"], "%Y%m%d").date()
        except ValueError:
            raise InvalidVersionNameError(f"'{name}' has an invalid date '{m['date']}'") from None
        return cls(m["task"], int(m["number"]), date)

    @classmethod
    def is_version_name(cls, name: str) -> bool:
        try:
            cls.parse(name)
        except InvalidVersionNameError:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.task}-v{self.number}-{self.date:%Y%m%d}"


class LabelStats(BaseModel):
    """The label set of a classification task and how often each label occurs in training."""

    labels: list[str]
    distribution: dict[str, float] = Field(
        description="Share of each label in the training data (sums to 1)."
    )


class Histogram(BaseModel):
    """Counts over bins: `edges` has one more element than `counts`; the last bin is open-ended."""

    edges: list[float]
    counts: list[int]


class ReferenceStats(BaseModel):
    """What live traffic is compared against: statistics of the data a version was trained and tested on."""

    examples: int = Field(ge=0)
    labels: LabelStats | None = Field(default=None, description="None when the answers are not a label set.")
    input_words: Histogram = Field(
        description="Words per user input (whitespace split) in the training data."
    )
    vocabulary: dict[str, float] = Field(
        description="Share of the most frequent lowercase input words; the rest is under '<other>'."
    )
    entropy_nats: Histogram | None = Field(
        default=None, description="Mean token entropy of the tuned model's answers on the test split."
    )
    system_prompt: str | None = Field(default=None, description="The system prompt training used, if any.")


class VersionInfo(BaseModel):
    """version.json: identity and provenance of one version."""

    name: str
    task: str
    number: int
    created_at: dt.datetime
    base_model: str = Field(description="The base model's name or local folder.")
    base: BaseIdentity | None = Field(
        default=None,
        description="The base model's name and fingerprint (lorafleet.baseid): engines of another base "
        "never get this adapter. None: registered before fingerprints, or from a folder that is not a model.",
    )
    adapter_sha256: str = Field(description="SHA-256 over the adapter folder's files, in name order.")
    lora_rank: int
    labels: list[str] | None = Field(
        default=None, description="The label set of a classification task; None for other tasks."
    )
    helped: bool | None = Field(
        default=None,
        description="The evaluation's verdict: fine-tuning beat the strongest baseline (by 5 points, "
        "significantly); False: it did not, and routes refuse it without --force; None: not judged.",
    )
    verdict: str = Field(default="", description="The verdict in words.")
    dataset_sha256: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class Version:
    """One registered version, as read from disk."""

    ref: AdapterRef
    path: Path

    @property
    def name(self) -> str:
        return str(self.ref)

    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER_DIR

    def info(self) -> VersionInfo:
        return VersionInfo.model_validate_json((self.path / INFO_FILE).read_text())

    def reference(self) -> ReferenceStats | None:
        f = self.path / REFERENCE_FILE
        return ReferenceStats.model_validate_json(f.read_text()) if f.exists() else None

    def split(self, name: str) -> Path | None:
        """The version's `train`, `val` or `test` split (chat JSONL), if it was registered with it."""
        f = self.path / SPLITS_DIR / f"{name}.jsonl"
        return f if f.is_file() else None

    def eval_report(self) -> dict[str, Any] | None:
        f = self.path / EVAL_FILE
        return json.loads(f.read_text()) if f.exists() else None


class Draft:
    """A version being written: fill `path`, then the registry renames it into place."""

    def __init__(self, ref: AdapterRef, path: Path) -> None:
        self.ref = ref
        self.path = path

    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER_DIR

    def write_json(self, name: str, model: BaseModel | dict[str, Any]) -> Path:
        data = (
            model.model_dump_json(indent=2) if isinstance(model, BaseModel) else json.dumps(model, indent=2)
        )
        target = self.path / name
        target.write_text(data + "\n")
        return target


@dataclass(frozen=True)
class NewVersion:
    """What `Registry.register` writes as a version: the adapter and everything known about it."""

    adapter_dir: Path  # a PEFT folder: adapter_config.json and the weights
    base_model: str
    base: BaseIdentity | None = None  # None: identified from `base_model` when that is a model folder
    labels: list[str] | None = None
    reference: ReferenceStats | None = None
    eval_report: Mapping[str, Any] | None = None
    datasets: Sequence[str] = ()
    dataset_sha256: Mapping[str, str] = field(default_factory=dict)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # model -> SplitMetrics (or its fields)
    verdict: str = ""
    helped: bool | None = None
    notes: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    adapter_files: Sequence[str] | None = None  # the files of adapter_dir to copy; None: all of them
    files: Mapping[str, Path] = field(default_factory=dict)  # name in the version folder -> file


def adapter_digest(folder: Path) -> str:
    """SHA-256 over every file of a folder (relative names and contents, in name order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*"), reverse=True):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_read_only(folder: Path) -> None:
    for p in folder.rglob("*"):
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _remove_tree(folder: Path) -> None:
    """Remove a draft, made read-only or not (a read-only folder's files cannot be unlinked)."""
    for p in [folder, *folder.rglob("*")]:
        with contextlib.suppress(OSError):
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
    shutil.rmtree(folder, ignore_errors=True)


def _problem(folder: Path) -> str | None:
    """What keeps `folder` from being a complete version, or None."""
    for name in (INFO_FILE, CARD_FILE, f"{ADAPTER_DIR}/adapter_config.json"):
        if not (folder / name).is_file():
            return f"no {name}"
    try:
        VersionInfo.model_validate_json((folder / INFO_FILE).read_text())
    except OSError as exc:
        return f"{INFO_FILE} cannot be read: {exc.strerror}"
    except ValidationError as exc:
        return f"{INFO_FILE} is not valid: {exc.errors()[0]['msg']}"
    config = f"{ADAPTER_DIR}/adapter_config.json"
    try:
        if not isinstance(json.loads((folder / config).read_text()), dict):
            return f"{config} is not a JSON object"
    except (OSError, ValueError) as exc:  # else only the engine would say so, without the file's name
        return f"{config} cannot be read: {exc}"
    try:
        if (folder / EVAL_FILE).exists():
            json.loads((folder / EVAL_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"{EVAL_FILE} cannot be read: {exc}"
    return None


class Registry:
    """A folder of immutable adapter versions."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    def check_writable(self) -> None:
        """Raise RegistryError unless new versions can be written here (the folder is made if missing)."""
        hint = "name a registry folder you can write to with --registry DIR or LORAFLEET_REGISTRY"
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"the registry {self.root} is a file, not a folder", hint=hint)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(
                f"cannot create the registry {self.root}: {exc.strerror}", hint=hint
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise RegistryError(f"cannot write to the registry {self.root}: permission denied", hint=hint)

    def _folders(self, task: str | None = None) -> list[Version]:
        """Every folder named like a version (of one task, if given), complete or not, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                ref = AdapterRef.parse(entry.name)
            except InvalidVersionNameError:
                continue
            if task is None or ref.task == task:
                found.append(Version(ref, entry))
        return sorted(found, key=lambda v: (v.ref.task, v.ref.number))

    def versions(self, task: str | None = None) -> list[Version]:
        """Every complete version (of one task, if given), oldest first; `broken()` names the others."""
        return [v for v in self._folders(task) if _problem(v.path) is None]

    def broken(self, task: str | None = None) -> list[tuple[Version, str]]:
        """Folders named like versions that are not complete ones (copied by hand, edited), and why."""
        found = [(v, _problem(v.path)) for v in self._folders(task)]
        return [(v, problem) for v, problem in found if problem is not None]

    def check(self, version: Version) -> Version:
        """`version`, or a RegistryError naming its folder and what is wrong with it."""
        problem = _problem(version.path)
        if problem is not None:
            raise RegistryError(
                f"{version.path} is not a complete version: {problem}",
                hint="lorafleet never writes a version like this: it was copied or edited by hand; "
                "move it out of the registry or restore it",
            )
        return version

    def tasks(self) -> list[str]:
        return sorted({v.ref.task for v in self.versions()})

    def get(self, name: str) -> Version:
        """The version called `name` (a full version name)."""
        ref = AdapterRef.parse(name)
        path = self.root / str(ref)
        if not path.is_dir():
            raise AdapterNotFoundError(name, self.root)
        if not (path / INFO_FILE).is_file():
            return self.check(Version(ref, path))
        return Version(ref, path)

    def resolve(self, task_or_version: str) -> Version:
        """A version by its name, or the newest version of a task."""
        if AdapterRef.is_version_name(task_or_version):
            return self.get(task_or_version)
        versions = self.versions(task_or_version)
        if not versions:
            broken = self.broken(task_or_version)
            if broken:
                self.check(broken[-1][0])
            raise AdapterNotFoundError(task_or_version, self.root)
        return versions[-1]

    def _claim(self, task: str, date: dt.date) -> AdapterRef:
        claims = self.root / ".claims"
        claims.mkdir(parents=True, exist_ok=True)
        taken = [v.ref.number for v in self._folders(task)]
        prefix = f"{task}-v"
        for entry in claims.iterdir():
            if entry.name.startswith(prefix) and entry.name[len(prefix) :].isdigit():
                taken.append(int(entry.name[len(prefix) :]))
        number = max(taken, default=0) + 1
        while True:
            try:
                (claims / f"{task}-v{number}").mkdir()
            except FileExistsError:
                number += 1
                continue
            return AdapterRef(task, number, date)

    @contextlib.contextmanager
    def new_version(self, task: str, date: dt.date | None = None) -> Iterator[Draft]:
        """Claim the next version number of `task` and yield a draft to fill.

        On a clean exit the draft is checked and renamed into place; on an error (or a kill) it is
        never visible, and its number stays claimed so that no name is ever reused.
        """
        validate_task(task)
        ref = self._claim(task, date or dt.date.today())
        staging = self.root / ".staging" / f"{ref}.{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        draft = Draft(ref, staging)
        try:
            yield draft
            problem = _problem(staging)
            if problem is not None:
                raise RegistryError(f"version {ref} is incomplete: {problem}")
            _fsync_tree(staging)
            _make_read_only(staging)
            final = self.root / str(ref)
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise RegistryError(f"version {ref} already exists in {self.root}") from exc
                raise
            final.chmod(final.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            _fsync_dir(self.root)
        except BaseException:
            _remove_tree(staging)
            raise

    def register(self, task: str, new: NewVersion, now: dt.datetime | None = None) -> Version:
        """Write `new` as the next version of `task`, atomically; return it."""
        from lorafleet.modelcard import ModelCard, SplitMetrics

        now = now or dt.datetime.now(dt.UTC)
        config_file = new.adapter_dir / "adapter_config.json"
        try:
            rank = int(json.loads(config_file.read_text())["r"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(
                f"{config_file} is not a PEFT adapter config with a rank 'r': {exc}"
            ) from None
        base = new.base or identify_model_folder(new.base_model)
        with self.new_version(task, now.date()) as draft:
            draft.adapter_path.mkdir()
            names = new.adapter_files or sorted(
                p.name for p in new.adapter_dir.iterdir() if p.is_file() and p.name != CARD_FILE
            )
            for name in names:
                shutil.copy2(new.adapter_dir / name, draft.adapter_path / name)
            for name, source in new.files.items():
                (draft.path / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, draft.path / name)
            if new.eval_report is not None:
                draft.write_json(EVAL_FILE, dict(new.eval_report))
            if new.reference is not None:
                draft.write_json(REFERENCE_FILE, new.reference)
            card = ModelCard(
                version=str(draft.ref),
                task=task,
                created_at=now,
                base_model=new.base_model,
                base=base,
                datasets=list(new.datasets),
                dataset_sha256=dict(new.dataset_sha256),
                hyperparameters=dict(new.hyperparameters),
                metrics={k: SplitMetrics.model_validate(v) for k, v in new.metrics.items()},
                labels=new.labels,
                verdict=new.verdict,
                notes=new.notes,
            )
            (draft.path / CARD_FILE).write_text(card.render())
            draft.write_json(
                INFO_FILE,
                VersionInfo(
                    name=str(draft.ref),
                    task=task,
                    number=draft.ref.number,
                    created_at=now,
                    base_model=new.base_model,
                    base=base,
                    adapter_sha256=adapter_digest(draft.adapter_path),
                    lora_rank=rank,
                    labels=new.labels,
                    helped=new.helped,
                    verdict=new.verdict,
                    dataset_sha256=dict(new.dataset_sha256),
                    tags=dict(new.tags),
                ),
            )
        return self.get(str(draft.ref))

    def clean_staging(self) -> list[Path]:
        """Remove drafts left behind by killed registrations; return what was removed."""
        staging = self.root / ".staging"
        removed = []
        if staging.is_dir():
            for entry in staging.iterdir():
                _remove_tree(entry)
                removed.append(entry)
        return removed

    def summary(self, version: Version) -> dict[str, Any]:
        """What `registry list/show --json` print for one version."""
        info = version.info()
        report = version.eval_report() or {}
        return {
            "name": version.name,
            "task": info.task,
            "number": info.number,
            "created_at": info.created_at.isoformat(),
            "base_model": info.base_model,
            "path": str(version.path),
            "adapter_path": str(version.adapter_path),
            "lora_rank": info.lora_rank,
            "adapter_sha256": info.adapter_sha256,
            "metrics": report.get("summary", {}),
        }
