"""Evaluation on the held-out test split: the baselines and the tuned adapter, side by side.

Models, in report order:
    base            the base model, same prompt as the adapter sees
    base-few-shot   the base model with K training examples as earlier turns (when asked)
    endpoint:<model>  any OpenAI-compatible endpoint a user names (concurrent requests)
    tuned           the base model with the adapter

Local generation is batched and greedy (training/decoding.py: the prompts' shared prefix computed
once), `max_new_tokens` = the longest label's tokens plus a margin. The base and the tuned model
share one loaded copy of the weights (the adapter is switched off for the base, merged into the
weights for the tuned model). The tuned model's answers also yield each answer's mean top-5 entropy, computed
with the gateway's estimator (lorafleet.textstats) over the tokens vLLM reports logprobs for (the
answer's tokens and the EOS that ends it), for the version's reference statistics.

A label task (the answers are a label set) is scored twice for each local model: by constrained
choice among the labels (greedy decoding that may only write a label, training/choices.py: what
the gateway's `enforce_labels` asks vLLM for) and by free generation, beside it, with the share of
free answers that are a label at all. The constrained score is the headline and the verdict's.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lorafleet import basemodel
from lorafleet.textstats import match_label, mean_entropy
from training.check import read_valid
from training.choices import LabelTrie
from training.config import Precision
from training.dataset import Example, label_set
from training.decoding import Decoded, greedy, greedy_both
from training.endpoints import Endpoint, EndpointUsage, ask
from training.errors import TrainingError
from training.scoring import Scores, normalize, score
from training.significance import Comparison, compare
from training.taskmetrics import JsonScores, TaskKind, TextScores, json_scores, task_kind, text_scores

ENTROPY_TOP_K = 5
ANSWER_MARGIN_TOKENS = 4
PROGRESS_MIN_EXAMPLES = 200  # smaller test splits take seconds: no progress lines
EVAL_FILE = "eval.json"
CONFUSION_PNG = "confusion.png"
LOSS_PNG = "loss.png"


class WrongAnswer(BaseModel):
    input: str
    expected: str
    got: str


class ChoiceResult(BaseModel):
    """A model's answers constrained to the label set."""

    scores: Scores
    answers: list[str]
    seconds: float


class ModelResult(BaseModel):
    kind: str = Field(description="base, few-shot, endpoint or tuned.")
    scores: Scores = Field(description="Free generation.")
    errors: list[WrongAnswer]
    seconds: float
    answers: list[str]
    entropies: list[float | None] | None = Field(
        default=None, description="Mean top-5 token entropy per answer (local tuned model only)."
    )
    choice: ChoiceResult | None = Field(
        default=None, description="Constrained choice among the labels (label tasks, local models)."
    )
    in_label_set: float | None = Field(
        default=None, description="Share of the free answers that are one of the labels (label tasks)."
    )
    usage: EndpointUsage | None = Field(
        default=None, description="An endpoint's reported tokens, its cost and its retries."
    )
    json_scores: JsonScores | None = Field(default=None, description="A task whose answers are JSON objects.")
    text_scores: TextScores | None = Field(default=None, description="A free-text task.")

    def headline(self) -> dict[str, float | int]:
        """What the summary, the card and the verdict use: the constrained score of a label task,
        the whole-object exact match of a JSON task, the normalised match of free text."""
        out = self.main.headline()
        out["accuracy"] = self.accuracy
        if self.choice is not None:
            out["accuracy_free"] = self.scores.accuracy
        if self.in_label_set is not None:
            out["in_label_set"] = self.in_label_set
        if self.json_scores is not None:
            fields = self.json_scores.fields.values()
            out["macro_f1"] = sum(f.accuracy for f in fields) / len(fields) if fields else 0.0
            out["json_validity"] = self.json_scores.validity
        if self.text_scores is not None:
            out["macro_f1"] = self.text_scores.token_f1
        return out

    @property
    def main(self) -> Scores:
        """The label scores that count: constrained choice for a label task, else free generation."""
        return self.choice.scores if self.choice is not None else self.scores

    @property
    def correct(self) -> list[bool]:
        """Per test example: right, by the task's own measure (what paired tests compare)."""
        if self.json_scores is not None:
            return self.json_scores.correct
        if self.text_scores is not None:
            return self.text_scores.correct
        return self.main.correct

    @property
    def accuracy(self) -> float:
        correct = self.correct
        return sum(correct) / len(correct) if correct else 0.0


class EvalReport(BaseModel):
    """eval.json. `summary` is what `lorafleet registry list/show` print."""

    test_file: str
    examples: int
    labels: list[str] | None
    max_new_tokens: int
    summary: dict[str, dict[str, float | int]]
    verdict: str
    comparison: Comparison | None = Field(
        default=None, description="Tuned against the strongest baseline, example by example."
    )
    models: dict[str, ModelResult]
    plots: dict[str, str] = Field(default_factory=dict)

    def render(self, max_errors: int | None = None) -> str:
        return render_report(self, max_errors)


@dataclass
class Generation:
    answers: list[str]
    entropies: list[float | None]
    seconds: float


def few_shot_messages(example: Example, shots: Sequence[Example]) -> list[dict[str, str]]:
    """The example's prompt with `shots` as earlier user/assistant turns, after its system prompt."""
    prompt = example.prompt
    head = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    turns: list[dict[str, str]] = []
    for s in shots:
        turns += [{"role": "user", "content": s.user_text}, {"role": "assistant", "content": s.answer}]
    return [*head, *turns, *prompt[len(head) :]]


def pick_shots(train: Sequence[Example], k: int, seed: int = 0) -> list[Example]:
    """K training examples, taking labels in turn so that the shots cover as many labels as possible."""
    rng = random.Random(seed)
    by_answer: dict[str, list[Example]] = {}
    for e in train:
        by_answer.setdefault(e.answer.strip(), []).append(e)
    pools = [rng.sample(v, len(v)) for _, v in sorted(by_answer.items())]
    rng.shuffle(pools)
    shots: list[Example] = []
    while len(shots) < k and any(pools):
        for pool in pools:
            if pool and len(shots) < k:
                shots.append(pool.pop())
    return shots


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[dict[str, str]]],
    max_new_tokens: int,
    *,
    batch_size: int = 16,
    entropy: bool = False,
    threads: int | None = None,
    choices: LabelTrie | None = None,
    progress: Callable[[int], None] | None = None,
) -> Generation:
    """Greedy answers to chat prompts, `batch_size` at a time, the prompts' shared beginning computed
    once (training/decoding.py); with `choices`, each answer is one of its labels. `progress`: called
    with the number answered after each batch."""
    import torch

    ids = _prompt_ids(model, tokenizer, prompts, threads)
    top_k = ENTROPY_TOP_K if entropy and choices is None else 0  # entropy is a free answer's
    started = time.perf_counter()
    model.eval()
    with torch.no_grad():
        decoded = greedy(
            model,
            ids,
            max_new_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            batch_size=batch_size,
            choices=choices,
            top_k=top_k,
            progress=progress,
        )
    return _generation(tokenizer, decoded, choices, top_k, time.perf_counter() - started)


def generate_both(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[dict[str, str]]],
    max_new_tokens: int,
    choices: LabelTrie,
    *,
    batch_size: int = 16,
    entropy: bool = False,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Generation, Generation]:
    """`generate`'s free answers and its answers under `choices`, each batch prefilled once for
    both. Each one's seconds count the shared prefill: what it would have taken alone."""
    import torch

    ids = _prompt_ids(model, tokenizer, prompts, threads)
    top_k = ENTROPY_TOP_K if entropy else 0
    model.eval()
    with torch.no_grad():
        got = greedy_both(
            model,
            ids,
            max_new_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            choices,
            batch_size=batch_size,
            top_k=top_k,
            progress=progress,
        )
    return (
        _generation(tokenizer, got.free, None, top_k, got.prefill_s + got.free_s),
        _generation(tokenizer, got.constrained, choices, 0, got.prefill_s + got.constrained_s),
    )


def _prompt_ids(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], threads: int | None
) -> list[list[int]]:
    """The chat prompts' token ids up to the assistant header (after pinning the CPU threads)."""
    from training.train import cpu_threads, prompt_text

    if next(model.parameters()).device.type == "cpu":
        cpu_threads(threads)
    return [tokenizer(prompt_text(tokenizer, p), add_special_tokens=False).input_ids for p in prompts]


def _generation(
    tokenizer: Any, decoded: Sequence[Decoded], choices: LabelTrie | None, top_k: int, seconds: float
) -> Generation:
    eos = tokenizer.eos_token_id
    answers: list[str] = []
    entropies: list[float | None] = []
    for d in decoded:
        n = d.ids.index(eos) if eos in d.ids else len(d.ids)
        text = tokenizer.decode(d.ids[:n], skip_special_tokens=True)
        answers.append((choices.label_of(d.ids) or text) if choices is not None else text)
        # vLLM's logprobs include the EOS token that ends the answer: so do these
        entropies.append(mean_entropy(d.top) if top_k else None)
    return Generation(answers, entropies, seconds)


def load_adapter_model(
    adapter_dir: Path, base_model: str | None, precision: Precision, device: str
) -> tuple[Any, Any, Path]:
    """(PEFT model, tokenizer, base folder): the base named in the adapter unless `base_model` is given."""
    from peft import PeftModel

    from training.config import TrainConfig
    from training.train import load_base_model, load_tokenizer, pick_device, pick_dtype

    if not (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter").is_dir():
        adapter_dir = adapter_dir / "adapter"  # a registry version's folder
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise TrainingError(
            f"{adapter_dir} is not an adapter folder: no adapter_config.json",
            hint="pass the --out folder of `lorafleet train`, or a registry version's adapter/",
        )
    if base_model is None:
        named = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
        base_model = named if named and Path(named).is_dir() else None
    base_dir = basemodel.resolve(base_model)
    dev = pick_device(TrainConfig(device=device))
    tokenizer = load_tokenizer(base_dir)
    model = load_base_model(base_dir, pick_dtype(precision, dev, generation=True), dev)
    return PeftModel.from_pretrained(model, adapter_dir), tokenizer, base_dir


@contextmanager
def adapter_merged(model: Any) -> Iterator[None]:
    """The adapter folded into the base weights while inside: the same answers (float rounding
    aside: identical on BANKING77's 128 prompts), and each forward ~16% cheaper on 2 CPU cores
    with LoRA on every projection, which otherwise runs beside each of them."""
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def max_answer_tokens(tokenizer: Any, answers: Sequence[str]) -> int:
    return max(len(tokenizer(a, add_special_tokens=False).input_ids) for a in answers) + ANSWER_MARGIN_TOKENS


def _result(
    kind: str,
    test: Sequence[Example],
    gen: Generation,
    labels: Sequence[str] | None,
    entropy: bool,
    choice: Generation | None = None,
) -> ModelResult:
    expected = [e.answer for e in test]
    task = task_kind(expected, labels)
    scores = score(expected, gen.answers, labels, confusion=task is TaskKind.LABELS)
    chosen = None
    shown, right = gen.answers, scores.correct
    if choice is not None:  # the headline of a label task: constrained choice
        chosen = ChoiceResult(
            scores=score(expected, choice.answers, labels),
            answers=choice.answers,
            seconds=round(choice.seconds, 2),
        )
        shown, right = choice.answers, chosen.scores.correct
    errors = [
        WrongAnswer(input=e.user_text, expected=e.answer, got=got)
        for e, got, ok in zip(test, shown, right, strict=True)
        if not ok
    ]
    in_set = None
    if labels:
        named = sum(match_label(a, labels) is not None for a in gen.answers)
        in_set = named / len(gen.answers) if gen.answers else 0.0
    return ModelResult(
        kind=kind,
        scores=scores,
        json_scores=json_scores(expected, gen.answers) if task is TaskKind.JSON else None,
        text_scores=text_scores(expected, gen.answers) if task is TaskKind.TEXT else None,
        errors=errors,
        seconds=round(gen.seconds, 2),
        answers=gen.answers,
        entropies=gen.entropies if entropy else None,
        choice=chosen,
        in_label_set=in_set,
    )


class Scorer:
    """Runs models on one test split: local generation (free, and constrained for a label task) and
    endpoints, each into a ModelResult."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        test: Sequence[Example],
        train: Sequence[Example],
        *,
        batch_size: int = 16,
        threads: int | None = None,
        constrained: bool = True,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.test, self.train = list(test), list(train)
        labels = label_set(self.train) if self.train else label_set(self.test)
        self.kind = task_kind([e.answer for e in self.test], labels)
        self.labels = labels if self.kind is TaskKind.LABELS else None
        answers_seen = [e.answer for e in self.test] + [e.answer for e in self.train]
        self.max_new = max_answer_tokens(
            tokenizer, [normalize(a) for a in answers_seen] if self.labels else answers_seen
        )
        self.trie = (
            LabelTrie.build(tokenizer, self.labels, tokenizer.eos_token_id)
            if self.labels and constrained
            else None
        )
        self.prompts = [e.prompt for e in self.test]
        self.batch_size, self.threads, self.say = batch_size, threads, log
        log(f"eval: {_METRICS[self.kind]}")

    def local(
        self,
        kind: str,
        name: str,
        messages: Sequence[Sequence[dict[str, str]]] | None = None,
        entropy: bool = False,
    ) -> ModelResult:
        """The loaded model (as it is now: with or without its adapter) on the test split."""
        prompts = messages if messages is not None else self.prompts
        self.say(
            f"eval: {name} on {len(prompts)} examples"
            + (", free and constrained to the labels" if self.trie else "")
        )
        model, tokenizer, n, batch, threads = (
            self.model,
            self.tokenizer,
            self.max_new,
            self.batch_size,
            self.threads,
        )
        choice = None
        if self.trie is None:
            gen = generate(
                model,
                tokenizer,
                prompts,
                n,
                batch_size=batch,
                entropy=entropy,
                threads=threads,
                progress=self._progress(name, len(prompts)),
            )
        else:
            gen, choice = generate_both(
                model,
                tokenizer,
                prompts,
                n,
                self.trie,
                batch_size=batch,
                entropy=entropy,
                threads=threads,
                progress=self._progress(f"{name}, free and constrained", len(prompts)),
            )
        return _result(kind, self.test, gen, self.labels, entropy, choice)

    def _progress(self, what: str, total: int) -> Callable[[int], None] | None:
        """A line at every tenth of a long run (PROGRESS_MIN_EXAMPLES or more), with the time so far."""
        if total < PROGRESS_MIN_EXAMPLES:
            return None
        started, shown = time.perf_counter(), [0]

        def report(done: int) -> None:
            tenth = 10 * done // total
            if tenth > shown[0]:
                shown[0] = tenth
                self.say(
                    f"eval: {what}: {done}/{total} ({done / total:.0%}), {time.perf_counter() - started:.0f} s"
                )

        return report

    def few_shot(self, k: int) -> ModelResult:
        if not self.train:
            raise TrainingError("--few-shot needs the training split to draw the examples from")
        shots = pick_shots(self.train, k)
        return self.local("few-shot", "base-few-shot", [few_shot_messages(e, shots) for e in self.test])

    def endpoint(self, ep: Endpoint) -> ModelResult:
        self.say(f"eval: endpoint {ep.name} ({ep.url}, model {ep.model}) on {len(self.prompts)} examples")
        got = ask(ep, self.prompts, self.max_new)
        result = _result(
            "endpoint",
            self.test,
            Generation(got.answers, [None] * len(got.answers), got.seconds),
            self.labels,
            False,
        )
        result.usage = got.usage
        return result

    def baselines(self, few_shot: int, endpoints: Sequence[Endpoint]) -> dict[str, ModelResult]:
        """The base model zero-shot (and few-shot), and every endpoint: the model must be the base one."""
        results = {"base": self.local("base", "base")}
        if few_shot:
            results["base-few-shot"] = self.few_shot(few_shot)
        for ep in endpoints:
            results[f"endpoint:{ep.name}"] = self.endpoint(ep)  # never mistaken for the local base or tuned
        return results


def evaluate(
    test_path: Path | str,
    adapter_dir: Path | str,
    *,
    train_path: Path | str | None = None,
    few_shot: int = 0,
    endpoints: Sequence[Endpoint] = (),
    skip_baseline: bool = False,
    baselines: Mapping[str, ModelResult] | None = None,
    base_model: str | None = None,
    batch_size: int = 16,
    precision: Precision = Precision.AUTO,
    device: str = "auto",
    threads: int | None = None,
    constrained: bool = True,
    log: Any = None,
) -> EvalReport:
    """Evaluate the baselines and the adapter at `adapter_dir` on the test split at `test_path`.

    `baselines`: results of `baseline()` on the same split, used instead of running them again.
    `constrained`: score a label task by constrained choice too (the headline), beside free generation.
    """
    say = log or (lambda _msg: None)
    test = read_valid(Path(test_path))
    train = read_valid(Path(train_path)) if train_path else []
    if few_shot and not train:
        raise TrainingError("--few-shot needs --train FILE to draw the examples from")
    model, tokenizer, _ = load_adapter_model(Path(adapter_dir), base_model, precision, device)
    scorer = Scorer(
        model,
        tokenizer,
        test,
        train,
        batch_size=batch_size,
        threads=threads,
        constrained=constrained,
        log=say,
    )
    results: dict[str, ModelResult] = dict(baselines or {})
    if not skip_baseline and baselines is None:
        with model.disable_adapter():
            results.update(scorer.baselines(few_shot, endpoints))
    with adapter_merged(model):
        results["tuned"] = scorer.local("tuned", "tuned", entropy=True)
    comparison = versus_strongest(results)
    no_baseline = f"no baseline was evaluated: tuned accuracy {results['tuned'].accuracy:.3f}."
    return EvalReport(
        test_file=str(test_path),
        examples=len(test),
        labels=scorer.labels,
        max_new_tokens=scorer.max_new,
        summary={name: r.headline() for name, r in results.items()},
        verdict=comparison.text() if comparison else no_baseline,
        comparison=comparison,
        models=results,
    )


_METRICS = {
    TaskKind.LABELS: "the answers are a label set: accuracy by constrained choice among the labels (free "
    "generation beside it), macro-F1, per-label precision and recall, the confusion",
    TaskKind.JSON: "the answers are JSON objects: validity, exact match of the whole object, and each field's accuracy",
    TaskKind.TEXT: "the answers are free text: exact match, normalised match (the headline) and token-overlap F1",
}
GOOD_ENOUGH = 0.95  # a baseline this good leaves a tuned model no room for the 5-point gain


class BaselineReport(BaseModel):
    """baseline.json: the base model and the endpoints on the test split, before any training."""

    test_file: str
    examples: int
    labels: list[str] | None
    summary: dict[str, dict[str, float | int]]
    models: dict[str, ModelResult]
    strongest: str
    advice: str

    def render(self) -> str:
        lines = [f"test split: {self.test_file} ({self.examples} examples), before any training", ""]
        rows = []
        for name, r in self.models.items():
            cost = "-" if r.usage is None else f"${r.usage.cost_usd:.4f} ({r.usage.retries} retries)"
            free = f"{r.scores.accuracy:.3f}" if r.choice is not None else "-"
            rows.append([name, f"{r.accuracy:.3f}", f"{r.main.macro_f1:.3f}", free, r.main.examples, cost])
        lines.append(
            format_table(["model", "accuracy", "macro-F1", "accuracy (free)", "examples", "cost"], rows)
        )
        lines += ["", self.advice]
        return "\n".join(lines)


def advise(results: Mapping[str, ModelResult]) -> tuple[str, str]:
    """The strongest baseline, and what it means for fine-tuning, in one sentence."""
    best = max(results, key=lambda name: results[name].accuracy)
    accuracy = results[best].accuracy
    if accuracy >= GOOD_ENOUGH:
        return best, (
            f"{best} already scores {accuracy:.3f}: a tuned model cannot gain the 5 points that count as help, "
            "so fine-tuning is not worth it for this task (unless cost or latency say otherwise)."
        )
    return best, (
        f"the strongest baseline is {best} at {accuracy:.3f}: a tuned version must reach "
        f"{min(1.0, accuracy + 0.05):.3f} here, significantly, to count as help."
    )


def baseline(
    test_path: Path | str,
    *,
    train_path: Path | str | None = None,
    few_shot: int = 0,
    endpoints: Sequence[Endpoint] = (),
    base_model: str | None = None,
    batch_size: int = 16,
    precision: Precision = Precision.AUTO,
    device: str = "auto",
    threads: int | None = None,
    constrained: bool = True,
    log: Any = None,
) -> BaselineReport:
    """The base model zero-shot (and few-shot from the training split) and every endpoint on the
    test split: what fine-tuning has to beat, measured before training."""
    from training.config import TrainConfig
    from training.train import load_base_model, load_tokenizer, pick_device, pick_dtype

    say = log or (lambda _msg: None)
    test = read_valid(Path(test_path))
    train = read_valid(Path(train_path)) if train_path else []
    base_dir = basemodel.resolve(base_model)
    dev = pick_device(TrainConfig(device=device))
    tokenizer = load_tokenizer(base_dir)
    model = load_base_model(base_dir, pick_dtype(precision, dev, generation=True), dev)
    scorer = Scorer(
        model,
        tokenizer,
        test,
        train,
        batch_size=batch_size,
        threads=threads,
        constrained=constrained,
        log=say,
    )
    results = scorer.baselines(few_shot, endpoints)
    strongest, advice = advise(results)
    return BaselineReport(
        test_file=str(test_path),
        examples=len(test),
        labels=scorer.labels,
        summary={name: r.headline() for name, r in results.items()},
        models=results,
        strongest=strongest,
        advice=advice,
    )


def versus_strongest(results: dict[str, ModelResult]) -> Comparison | None:
    """The tuned model against the baseline with the highest accuracy, on the same examples."""
    baselines = {name: r for name, r in results.items() if name != "tuned"}
    if not baselines:
        return None
    best = max(baselines, key=lambda name: baselines[name].accuracy)
    return compare(best, baselines[best].correct, results["tuned"].correct)


def write_report(
    report: EvalReport, out_dir: Path | str, adapter_dir: Path | str | None = None
) -> dict[str, Path]:
    """eval.json, the tuned model's confusion matrix and (if a loss history exists) the loss curves."""
    from training.plots import confusion_png, loss_png
    from training.train import read_history

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tuned = report.models["tuned"]
    shown = tuned.choice.scores if tuned.choice is not None else tuned.scores
    written: dict[str, Path] = {}
    if shown.confusion.labels:  # a label task
        written["confusion"] = confusion_png(shown.confusion, out / CONFUSION_PNG, "tuned")
    history = read_history(adapter_dir) if adapter_dir else None
    if history is not None and history.train:
        written["loss"] = loss_png(history, out / LOSS_PNG)
    report.plots = {k: v.name for k, v in written.items()}
    written["report"] = out / EVAL_FILE
    written["report"].write_text(report.model_dump_json(indent=2) + "\n")
    return written


def _cut(text: str, width: int) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 3] + "..."


def render_report(report: EvalReport, max_errors: int | None = None) -> str:
    """The report as text for people: headline table, per-label scores, confusion, wrong answers."""
    names = list(report.models)
    lines = [f"test split: {report.test_file} ({report.examples} examples)", ""]
    choice = any(r.choice is not None for r in report.models.values())
    headers = ["model", "accuracy", "macro-F1", "exact match", "examples", "seconds"]
    if choice:
        headers[1:3] = ["accuracy (labels)", "macro-F1 (labels)"]
        headers[3:3] = ["accuracy (free)", "free answers in labels"]
    rows = []
    for n, r in report.models.items():
        main = r.choice.scores if r.choice is not None else r.scores
        row: list[Any] = [n, f"{r.accuracy:.3f}", f"{r.headline()['macro_f1']:.3f}"]
        if choice:
            row += [f"{r.scores.accuracy:.3f}", "-" if r.in_label_set is None else f"{r.in_label_set:.0%}"]
        seconds = r.seconds + (r.choice.seconds if r.choice is not None else 0.0)
        row += [f"{r.scores.exact_match:.3f}", main.examples, f"{seconds:.1f}"]
        rows.append(row)
    lines.append(format_table(headers, rows))
    if choice:
        lines.append(
            "(labels: constrained choice among the label set, the headline; free: free generation, "
            "exact match of the free answer)"
        )
    lines += ["", f"verdict: {report.verdict}", ""]

    def shown_scores(name: str) -> Scores:
        r = report.models[name]
        return r.choice.scores if r.choice is not None else r.scores

    tuned = shown_scores("tuned")
    task = report.models["tuned"]
    if task.json_scores is not None:
        field_names = list(task.json_scores.fields)
        rows = [
            [n, f"{r.json_scores.validity:.0%}", f"{r.json_scores.exact_match:.3f}"]
            + [
                f"{r.json_scores.fields[f].accuracy:.3f}" if f in r.json_scores.fields else "-"
                for f in field_names
            ]
            for n, r in report.models.items()
            if r.json_scores is not None
        ]
        lines += ["JSON answers: validity, whole-object exact match, and each field's accuracy:"]
        lines += [format_table(["model", "valid JSON", "exact match", *field_names], rows), ""]
        for f, fs in task.json_scores.fields.items():
            for err in fs.errors[:5]:
                lines.append(f"  tuned, field {f}: expected {err.expected!r}, got {_cut(str(err.got), 60)!r}")
    if task.text_scores is not None:
        rows = [
            [
                n,
                f"{r.text_scores.exact_match:.3f}",
                f"{r.text_scores.normalised_match:.3f}",
                f"{r.text_scores.token_f1:.3f}",
            ]
            for n, r in report.models.items()
            if r.text_scores is not None
        ]
        lines += ["free text: exact, normalised match and token F1:"]
        lines += [format_table(["model", "exact match", "normalised match", "token F1"], rows), ""]
    label_rows = []
    for lab in tuned.per_label:
        label_row: list[Any] = [lab]
        for n in names:
            s = shown_scores(n).per_label[lab]
            label_row += [f"{s.precision:.2f}", f"{s.recall:.2f}"]
        label_row.append(tuned.per_label[lab].support)
        label_rows.append(label_row)
    label_headers = ["label"] + [f"{n} {m}" for n in names for m in ("P", "R")] + ["support"]
    if label_rows:
        lines += ["per-label precision (P) and recall (R):", format_table(label_headers, label_rows), ""]
        conf = tuned.confusion
        short = [f"{i}" for i in range(len(conf.labels))] + ["other"]
        lines.append("tuned confusion (rows: expected, columns: answered, numbered as the rows):")
        lines.append(
            format_table(
                ["#", "expected", *short],
                [[i, lab, *row] for i, (lab, row) in enumerate(zip(conf.labels, conf.matrix, strict=True))],
            )
        )
    for n, r in report.models.items():
        shown = r.errors if max_errors is None else r.errors[:max_errors]
        lines += ["", f"wrong answers of {n}: {len(r.errors)} of {r.scores.examples}"]
        lines += [
            f"  input: {_cut(w.input, 70)!r}  expected: {w.expected!r}  got: {_cut(w.got, 60)!r}"
            for w in shown
        ]
        if len(shown) < len(r.errors):
            lines.append(f"  ... and {len(r.errors) - len(shown)} more (all of them in --json and eval.json)")
    return "\n".join(lines)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
