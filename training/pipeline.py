"""`lorafleet finetune`: the whole loop in one call, stopping at the first stage that fails.

    import    a .csv becomes chat JSONL (system prompt listing the labels)
    check     every problem of the file (StageFailedError listing them)
    audit     duplicates, conflicts, balance, tokens, cost (reported; warnings do not stop the run)
    split     stratified train/val/test with a manifest of hashes
    baseline  the base model (zero-shot, few-shot) and any endpoints on the test split, before any
              training: what fine-tuning has to beat, and whether it is worth it at all
    train     the LoRA adapter
    eval      tuned against those baselines on the test split (paired: McNemar, bootstrap)
    register  a new immutable registry version <task>-v<N>-<YYYYMMDD>

Every stage runs in a work folder (temporary unless one is named); only `register` writes to the
registry, in one atomic step (lorafleet.registry). What can be checked before the first stage is
(the device, the target modules, the registry and work folders), so that a typo does not surface
after training. A failure inside a stage becomes one StageFailedError naming it, whatever raised it;
LORAFLEET_DEBUG=1 lets errors that are not lorafleet's surface as they are, with their traceback.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from lorafleet import basemodel
from lorafleet.errors import LorafleetError
from lorafleet.registry import SPLITS_DIR, NewVersion, Registry, validate_task
from lorafleet.textstats import reference_stats
from training.config import TRAIN_CONFIG_FILE, TrainConfig
from training.endpoints import Endpoint
from training.errors import StageFailedError, describe_exception
from training.evaluate import EvalReport
from training.outputs import check_output_dir
from training.train import ADAPTER_FILES, HISTORY_FILE, check_target_modules, pick_device

CONFIG_BESIDE_DATA = "train.yaml"
SPLIT_MANIFEST_FILE = "split_manifest.json"


class Stage(StrEnum):
    IMPORT = "import"
    CHECK = "check"
    AUDIT = "audit"
    SPLIT = "split"
    BASELINE = "baseline"
    TRAIN = "train"
    EVAL = "eval"
    REGISTER = "register"


@dataclass
class FinetuneResult:
    version: str
    path: Path
    report: EvalReport
    seconds: dict[str, float] = field(default_factory=dict)


def list_labels_in_prompt(data: Path, out: Path) -> int:
    """Write `data` to `out` with a system prompt listing its labels on every example; the count."""
    from training.check import read_valid
    from training.csvimport import labels_system_prompt
    from training.dataset import Example, Message, label_set, write_jsonl

    examples = read_valid(data)
    labels = label_set(examples)
    if labels is None:
        raise StageFailedError(
            Stage.IMPORT,
            f"--list-labels: the answers of {data} are not a label set (free text, or too few repeats)",
            hint="drop --list-labels for a free-text task",
        )
    system = Message("system", labels_system_prompt(labels))
    rewritten = [
        Example((system, *(m for m in e.messages if m.role != "system")), e.line, e.source, e.extra)
        for e in examples
    ]
    write_jsonl(out, rewritten)
    return len(labels)


def config_beside(data: Path) -> Path | None:
    """The dataset's own training preset: `train.yaml` in the data file's folder, if there is one."""
    candidate = data.parent / CONFIG_BESIDE_DATA
    return candidate if candidate.is_file() else None


@contextlib.contextmanager
def _stage(stage: Stage, seconds: dict[str, float], log: Callable[[str], None]) -> Iterator[None]:
    log(f"[{stage}] ...")
    started = time.perf_counter()
    try:
        yield
    except StageFailedError:
        raise
    except LorafleetError as exc:
        raise StageFailedError(stage, exc.message, exc.hint) from exc
    except Exception as exc:
        if os.environ.get("LORAFLEET_DEBUG") == "1":
            raise
        raise StageFailedError(
            stage, describe_exception(exc), hint="run again with LORAFLEET_DEBUG=1 for the traceback"
        ) from exc
    seconds[stage] = round(time.perf_counter() - started, 1)
    log(f"[{stage}] done in {seconds[stage]:.1f} s")


def finetune(
    data: Path | str,
    task: str,
    registry: Registry,
    config: TrainConfig,
    *,
    seed: int = 0,
    few_shot: int = 0,
    skip_baseline: bool = False,
    endpoints: Sequence[Endpoint] = (),
    work_dir: Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    system: str | None = None,
    list_labels: bool | None = None,
    log: Callable[[str], None] = lambda _m: None,
    progress: bool = True,
) -> FinetuneResult:
    """Check, audit, split, train, evaluate and register `data` as a new version of `task`.

    A CSV `data` is imported first from `text_column` and `label_column`, with `system` as the system
    prompt, or without one given, a system prompt listing the labels. `list_labels`: put a system
    prompt listing the labels on every example of a label task (None: yes for such a CSV, no for
    JSONL, whose prompts are kept).
    """
    from training.audit import audit_file
    from training.check import check_file
    from training.csvimport import import_csv
    from training.evaluate import baseline, evaluate, write_report
    from training.split import split_file
    from training.train import train

    validate_task(task)
    data = Path(data)
    if work_dir is not None:
        check_output_dir(work_dir, "--work-dir")
    registry.check_writable()
    pick_device(config)
    base_dir = basemodel.resolve(config.base_model)
    check_target_modules(base_dir, config.target_modules)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lorafleet-finetune-")))
        else:
            work = work_dir
            work.mkdir(parents=True, exist_ok=True)

        jsonl = data
        if data.suffix.lower() == ".csv":
            with _stage(Stage.IMPORT, seconds, log):
                jsonl = work / f"{data.stem}.jsonl"
                n = import_csv(
                    data,
                    jsonl,
                    text_column=text_column,
                    label_column=label_column,
                    system=system,
                    system_from_labels=system is None if list_labels is None else list_labels,
                    force=True,
                )
                listed = system is None if list_labels is None else list_labels
                prompt = "a system prompt listing the labels" if listed else "the given system prompt"
                log(f"[import] {n} examples from {data}, with {prompt}")
        elif list_labels:
            with _stage(Stage.IMPORT, seconds, log):
                jsonl = work / f"{data.stem}.labelled.jsonl"
                n_labels = list_labels_in_prompt(data, jsonl)
                log(f"[import] {data}: a system prompt listing its {n_labels} labels on every example")

        with _stage(Stage.CHECK, seconds, log):
            problems = check_file(jsonl, tokenizer_dir=base_dir, max_tokens=config.max_length)
            if problems:
                listing = "\n".join(f"  {p}" for p in problems[:50])
                more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
                raise StageFailedError(
                    Stage.CHECK,
                    f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {data}:\n{listing}{more}",
                    hint=f"fix them (`lorafleet data check {jsonl}` lists them all) and run finetune again",
                )
            log(f"[check] {data}: no problems")

        with _stage(Stage.AUDIT, seconds, log):
            epochs = math.ceil(config.epochs) if config.epochs else 3  # chosen from the data later
            audit = audit_file(
                jsonl, tokenizer_dir=base_dir, epochs=max(1, epochs), max_tokens=config.max_length
            )
            log("\n".join(f"  {line}" for line in audit.render().splitlines()))

        with _stage(Stage.SPLIT, seconds, log):
            split_dir = work / "split"
            manifest = split_file(jsonl, split_dir, seed=seed, force=True)
            log(f"[split] {manifest.counts} (seed {seed})")
            if not manifest.counts["train"] or not manifest.counts["test"]:
                raise StageFailedError(
                    Stage.SPLIT,
                    "; ".join(w for w in manifest.warnings if not w.startswith("the val ")),
                    hint="training needs a train and a test split: add examples, or distinct inputs",
                )
            for warning in manifest.warnings:
                log(f"[split] warning: {warning} (training runs without validation loss)")

        baselines = None
        if not skip_baseline:
            with _stage(Stage.BASELINE, seconds, log):
                before = baseline(
                    split_dir / "test.jsonl",
                    train_path=split_dir / "train.jsonl",
                    few_shot=few_shot,
                    endpoints=endpoints,
                    base_model=str(base_dir),
                    device=config.device,
                    threads=config.threads,
                    log=log,
                )
                (work / "baseline.json").write_text(before.model_dump_json(indent=2) + "\n")
                for name, r in before.models.items():
                    log(f"[baseline] {name}: accuracy {r.accuracy:.3f}")
                log(f"[baseline] {before.advice}")
                baselines = before.models

        with _stage(Stage.TRAIN, seconds, log):
            adapter_dir = work / "adapter"
            val = split_dir / "val.jsonl" if manifest.counts.get("val") else None
            result = train(config, split_dir / "train.jsonl", val, adapter_dir, progress=progress, force=True)
            h = result.history
            log(f"[train] {h.tokens} tokens in {h.seconds:.0f} s ({h.tokens_per_s:.0f} tokens/s)")
            for note in h.notes:
                log(f"[train] {note}")

        with _stage(Stage.EVAL, seconds, log):
            report = evaluate(
                split_dir / "test.jsonl",
                adapter_dir,
                train_path=split_dir / "train.jsonl",
                skip_baseline=True,
                baselines=baselines,
                base_model=str(base_dir),
                device=config.device,
                threads=config.threads,
                log=log,
            )
            eval_dir = work / "eval"
            written = write_report(report, eval_dir, adapter_dir)

        with _stage(Stage.REGISTER, seconds, log):
            from training.check import read_valid

            train_examples = read_valid(split_dir / "train.jsonl")
            systems = {e.system for e in train_examples}
            tuned = report.models["tuned"]
            reference = reference_stats(
                inputs=[e.user_text for e in train_examples],
                answers=[e.answer for e in train_examples],
                labels=report.labels,
                entropies=[x for x in tuned.entropies or [] if x is not None],
                system_prompt=systems.pop() if len(systems) == 1 else None,
            )
            hashes = {"source": manifest.source_sha256, **manifest.sha256}
            extra = {name: adapter_dir / name for name in (TRAIN_CONFIG_FILE, HISTORY_FILE)}
            extra |= {path.name: path for kind, path in written.items() if kind != "report"}
            extra[SPLIT_MANIFEST_FILE] = split_dir / "manifest.json"
            for part in ("train", "val", "test"):  # what `feedback export` checks leakage against
                if (split_dir / f"{part}.jsonl").is_file():
                    extra[f"{SPLITS_DIR}/{part}.jsonl"] = split_dir / f"{part}.jsonl"
            version = registry.register(
                task,
                NewVersion(
                    adapter_dir=adapter_dir,
                    adapter_files=ADAPTER_FILES,
                    base_model=str(base_dir),
                    labels=report.labels,
                    reference=reference,
                    eval_report=report.model_dump(mode="json"),
                    datasets=[data.name],
                    dataset_sha256=hashes,
                    hyperparameters=result.config.model_dump(
                        mode="json", exclude={"base_model", "device", "threads"}
                    ),
                    metrics={name: r.headline() for name, r in report.models.items()},
                    verdict=report.verdict,
                    helped=None if report.comparison is None else report.comparison.helped,
                    notes=" ".join(
                        [
                            f"Trained on {manifest.counts['train']} examples, tested on {manifest.counts['test']} "
                            f"held-out examples (split seed {seed}).",
                            *(f"{note[0].upper()}{note[1:]}." for note in result.notes),
                        ]
                    ),
                    tags={"data": data.name, "seed": str(seed)},
                    files=extra,
                ),
            )
            name = version.name
            log(f"[register] {name} in {registry.root}")
    seconds["total"] = round(time.perf_counter() - started, 1)
    return FinetuneResult(name, registry.root / name, report, seconds)
