"""Evaluation on the held-out test split: the baselines and the tuned adapter, side by side.

Models, in report order:
    base            the base model, same prompt as the adapter sees
    base-few-shot   the base model with K training examples as earlier turns (when asked)
    endpoint:<model>  any OpenAI-compatible endpoint a user names (concurrent requests)
    tuned           the base model with the adapter

Local generation is batched: left padding, greedy, `max_new_tokens` = the longest label's tokens plus
a margin. The base and the tuned model share one loaded copy of the weights (the adapter is switched
off for the base). The tuned model's answers also yield each answer's mean top-5 entropy, computed
with the gateway's estimator (lorafleet.textstats) over the tokens vLLM reports logprobs for (the
answer's tokens and the EOS that ends it), for the version's reference statistics.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lorafleet import basemodel
from lorafleet.textstats import mean_entropy
from training.check import read_valid
from training.config import Precision
from training.dataset import Example, label_set
from training.errors import TrainingError
from training.scoring import Scores, normalize, score, verdict

ENTROPY_TOP_K = 5
ANSWER_MARGIN_TOKENS = 4
EVAL_FILE = "eval.json"
CONFUSION_PNG = "confusion.png"
LOSS_PNG = "loss.png"


class WrongAnswer(BaseModel):
    input: str
    expected: str
    got: str


class ModelResult(BaseModel):
    kind: str = Field(description="base, few-shot, endpoint or tuned.")
    scores: Scores
    errors: list[WrongAnswer]
    seconds: float
    answers: list[str]
    entropies: list[float | None] | None = Field(
        default=None, description="Mean top-5 token entropy per answer (local tuned model only)."
    )


class EvalReport(BaseModel):
    """eval.json. `summary` is what `lorafleet registry list/show` print."""

    test_file: str
    examples: int
    labels: list[str] | None
    max_new_tokens: int
    summary: dict[str, dict[str, float | int]]
    verdict: str
    models: dict[str, ModelResult]
    plots: dict[str, str] = Field(default_factory=dict)

    def render(self, max_errors: int | None = None) -> str:
        return render_report(self, max_errors)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat endpoint to use as one more baseline."""

    url: str
    model: str
    api_key: str | None = None

    def chat_url(self) -> str:
        url = self.url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


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
) -> Generation:
    """Greedy answers to chat prompts, generated `batch_size` at a time (left padded)."""
    import torch

    from training.train import cpu_threads, prompt_text

    if next(model.parameters()).device.type == "cpu":
        cpu_threads(threads)
    texts = [prompt_text(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    entropies: list[float | None] = [None] * len(texts)
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    started = time.perf_counter()
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            )
            out = model.generate(
                **enc.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                return_dict_in_generate=True,
                output_logits=entropy,
            )
            new = out.sequences[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                n = ids.index(eos) if eos in ids else len(ids)
                answers[i] = tokenizer.decode(ids[:n], skip_special_tokens=True)
                if entropy:
                    top = [
                        torch.log_softmax(out.logits[t][row].float(), dim=-1)
                        .topk(ENTROPY_TOP_K)
                        .values.tolist()
                        # vLLM's logprobs include the EOS token that ends the answer: so does this
                        for t in range(min(n + 1, len(ids)))
                    ]
                    entropies[i] = mean_entropy(top)
    return Generation(answers, entropies, time.perf_counter() - started)


async def _ask_endpoint(
    endpoint: Endpoint, prompts: Sequence[Sequence[dict[str, str]]], max_tokens: int, concurrency: int
) -> list[str]:
    import httpx

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    limit = asyncio.Semaphore(concurrency)
    timeout = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=120.0)

    async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:

        async def one(messages: Sequence[dict[str, str]]) -> str:
            body = {
                "model": endpoint.model,
                "messages": list(messages),
                "temperature": 0,
                "max_tokens": max_tokens,
            }
            async with limit:
                try:
                    r = await client.post(endpoint.chat_url(), json=body)
                except httpx.HTTPError as exc:
                    raise TrainingError(
                        f"endpoint {endpoint.url} (model {endpoint.model}) cannot be reached: {exc}",
                        hint="check --endpoint and that the server is up",
                    ) from exc
            if r.status_code != 200:
                raise TrainingError(
                    f"endpoint {endpoint.url} answered {r.status_code} for model {endpoint.model}: {r.text[:300]}",
                    hint="check --endpoint-model and --endpoint-key-env",
                )
            content = r.json()["choices"][0]["message"].get("content")
            return str(content or "")

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def ask_endpoint(
    endpoint: Endpoint, prompts: Sequence[Sequence[dict[str, str]]], max_tokens: int, concurrency: int = 8
) -> Generation:
    started = time.perf_counter()
    answers = asyncio.run(_ask_endpoint(endpoint, prompts, max_tokens, concurrency))
    return Generation(answers, [None] * len(answers), time.perf_counter() - started)


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


def max_answer_tokens(tokenizer: Any, answers: Sequence[str]) -> int:
    return max(len(tokenizer(a, add_special_tokens=False).input_ids) for a in answers) + ANSWER_MARGIN_TOKENS


def _result(
    kind: str, test: Sequence[Example], gen: Generation, labels: Sequence[str] | None, entropy: bool
) -> ModelResult:
    expected = [e.answer for e in test]
    errors = [
        WrongAnswer(input=e.user_text, expected=e.answer, got=got)
        for e, got in zip(test, gen.answers, strict=True)
        if normalize(got) != normalize(e.answer)
    ]
    return ModelResult(
        kind=kind,
        scores=score(expected, gen.answers, labels),
        errors=errors,
        seconds=round(gen.seconds, 2),
        answers=gen.answers,
        entropies=gen.entropies if entropy else None,
    )


def evaluate(
    test_path: Path | str,
    adapter_dir: Path | str,
    *,
    train_path: Path | str | None = None,
    few_shot: int = 0,
    endpoints: Sequence[Endpoint] = (),
    skip_baseline: bool = False,
    base_model: str | None = None,
    batch_size: int = 16,
    precision: Precision = Precision.AUTO,
    device: str = "auto",
    threads: int | None = None,
    log: Any = None,
) -> EvalReport:
    """Evaluate the baselines and the adapter at `adapter_dir` on the test split at `test_path`."""
    say = log or (lambda _msg: None)
    test = read_valid(Path(test_path))
    train = read_valid(Path(train_path)) if train_path else []
    if few_shot and not train:
        raise TrainingError("--few-shot needs --train FILE to draw the examples from")
    labels = label_set(train) if train else label_set(test)
    model, tokenizer, _ = load_adapter_model(Path(adapter_dir), base_model, precision, device)
    answers_seen = [e.answer for e in test] + [e.answer for e in train]
    max_new = max_answer_tokens(tokenizer, [normalize(a) for a in answers_seen] if labels else answers_seen)
    prompts = [e.prompt for e in test]
    results: dict[str, ModelResult] = {}

    if not skip_baseline:
        say(f"eval: base model on {len(test)} examples")
        with model.disable_adapter():
            gen = generate(model, tokenizer, prompts, max_new, batch_size=batch_size, threads=threads)
        results["base"] = _result("base", test, gen, labels, False)
        if few_shot:
            shots = pick_shots(train, few_shot)
            say(f"eval: base model with {len(shots)} examples in the prompt")
            with model.disable_adapter():
                gen = generate(
                    model,
                    tokenizer,
                    [few_shot_messages(e, shots) for e in test],
                    max_new,
                    batch_size=batch_size,
                    threads=threads,
                )
            results["base-few-shot"] = _result("few-shot", test, gen, labels, False)
    for ep in endpoints:
        say(f"eval: endpoint {ep.url} model {ep.model}")
        gen = ask_endpoint(ep, prompts, max_new)
        name = f"endpoint:{ep.model}"  # never mistaken for the local base or tuned model
        results[name if name not in results else f"{name}@{ep.url}"] = _result(
            "endpoint", test, gen, labels, False
        )
    say(f"eval: tuned adapter on {len(test)} examples")
    gen = generate(model, tokenizer, prompts, max_new, batch_size=batch_size, entropy=True, threads=threads)
    results["tuned"] = _result("tuned", test, gen, labels, True)

    baselines = {name: r.scores.accuracy for name, r in results.items() if name != "tuned"}
    return EvalReport(
        test_file=str(test_path),
        examples=len(test),
        labels=labels,
        max_new_tokens=max_new,
        summary={name: r.scores.headline() for name, r in results.items()},
        verdict=verdict(results["tuned"].scores.accuracy, baselines),
        models=results,
    )


def write_report(
    report: EvalReport, out_dir: Path | str, adapter_dir: Path | str | None = None
) -> dict[str, Path]:
    """eval.json, the tuned model's confusion matrix and (if a loss history exists) the loss curves."""
    from training.plots import confusion_png, loss_png
    from training.train import read_history

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "confusion": confusion_png(report.models["tuned"].scores.confusion, out / CONFUSION_PNG, "tuned")
    }
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
    lines.append(
        format_table(
            ["model", "accuracy", "macro-F1", "exact match", "examples", "seconds"],
            [
                [
                    n,
                    f"{r.scores.accuracy:.3f}",
                    f"{r.scores.macro_f1:.3f}",
                    f"{r.scores.exact_match:.3f}",
                    r.scores.examples,
                    f"{r.seconds:.1f}",
                ]
                for n, r in report.models.items()
            ],
        )
    )
    lines += ["", f"verdict: {report.verdict}", ""]
    label_rows = []
    for lab in report.models["tuned"].scores.per_label:
        row: list[Any] = [lab]
        for n in names:
            s = report.models[n].scores.per_label[lab]
            row += [f"{s.precision:.2f}", f"{s.recall:.2f}"]
        row.append(report.models["tuned"].scores.per_label[lab].support)
        label_rows.append(row)
    headers = ["label"] + [f"{n} {m}" for n in names for m in ("P", "R")] + ["support"]
    lines += ["per-label precision (P) and recall (R):", format_table(headers, label_rows), ""]
    conf = report.models["tuned"].scores.confusion
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


def api_key_from_env(var: str | None) -> str | None:
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise TrainingError(f"the environment variable {var} (named by --endpoint-key-env) is not set")
    return value


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
