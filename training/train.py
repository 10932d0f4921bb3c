"""LoRA training: chat JSONL in, a PEFT adapter folder out (vLLM loads it unchanged).

    out/
      adapter_config.json         PEFT's; base_model_name_or_path is the base model folder
      adapter_model.safetensors   the LoRA weights (fp32)
      train_config.json           TrainConfig, as run
      loss_history.json           LossHistory: train loss per step, validation loss per epoch

Why it is faster than a plain Trainer loop on a CPU (bench/train_throughput.py measures it):
- the frozen base runs in bf16 where the hardware has it; the LoRA weights, their optimiser state and
  the loss stay fp32 (PEFT's autocast_adapter_dtype keeps the adapters fp32);
- the output layer (49k x 576) runs only at the positions that predict answer tokens, the only ones
  with a loss;
- batches group examples of similar length (sorted within shuffled pools, batches then shuffled), so
  little is spent on padding, and right padding with causal attention needs no mask at all;
- the prompt prefix a batch shares (the system prompt, which lists the labels and dominates short
  classification prompts) runs once per batch and its keys/values are broadcast to every example.
  Gradients still flow through it, so the result is the same as running each example whole.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lorafleet import basemodel
from training.check import read_valid
from training.config import Balance, Keep, Precision, TooLong, TrainConfig
from training.dataset import Example, label_set
from training.errors import OutputExistsError, TrainingError
from training.outputs import check_output_dir
from training.stopping import best_epoch, kept_epoch, should_stop, still_falling
from training.tokens import model_context

HISTORY_FILE = "loss_history.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a separate forward pass
_POOL_BATCHES = 16  # length grouping sorts pools of this many batches
_THREADS_EVERY = 10  # steps between two looks at the machine's load (see cpu_threads)


class LossPoint(BaseModel):
    step: int
    epoch: float
    loss: float


class LossHistory(BaseModel):
    """loss_history.json: what the loss plot draws."""

    train: list[LossPoint] = Field(default_factory=list, description="Mean answer-token loss per step.")
    val: list[LossPoint] = Field(
        default_factory=list, description="Validation loss before and after each epoch."
    )
    tokens: int = Field(default=0, description="Example tokens (prompt + answer, no padding) trained on.")
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    best_epoch: float | None = Field(
        default=None,
        description="The epoch whose adapter was kept: the lowest validation loss's, the latest "
        "within keep_within of it, or the last (keep=last).",
    )
    stopped_at_epoch: float | None = Field(
        default=None, description="Where early stopping ended training, if it did."
    )
    notes: list[str] = Field(
        default_factory=list, description="Defaults chosen from the data, and warnings about the run."
    )


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: the prompt (up to the assistant header) and the answer to learn."""

    prompt: list[int]
    answer: list[int]
    label: str

    def __len__(self) -> int:
        return len(self.prompt) + len(self.answer)


@dataclass
class TrainResult:
    out_dir: Path
    config: TrainConfig  # as run: every field chosen
    history: LossHistory
    base_model: Path
    examples: int
    labels: list[str] | None

    @property
    def notes(self) -> list[str]:
        return self.history.notes


def pick_device(config: TrainConfig) -> Any:
    """The torch device of `config.device`; a TrainingError when this machine does not have it."""
    import torch

    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(config.device)
    hint = "use --device cpu, or --device auto (CUDA when present)"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = (
                "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            )
            raise TrainingError(f"--device {config.device}: CUDA is not available ({why})", hint=hint)
        if (device.index or 0) >= count:
            raise TrainingError(
                f"--device {config.device}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                f"(cuda:0 to cuda:{count - 1})",
                hint=hint,
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(
            f"--device {config.device}: Apple MPS is not available on this machine", hint=hint
        )
    return device


def linear_layers(base_dir: Path) -> list[str]:
    """The names of the layers LoRA can adapt in the base model (each name once, its last part).

    Builds the model's skeleton without weights (meta device), so it costs seconds, not a load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    names = [n for n, m in model.named_modules() if n and isinstance(m, torch.nn.Linear | torch.nn.Embedding)]
    return list(dict.fromkeys(names))


def check_target_modules(base_dir: Path, targets: Sequence[str] | None) -> None:
    """Raise TrainingError naming every target that is not a layer LoRA can adapt in the base model.

    A target matches a layer's name or a dotted tail of it, as PEFT matches them. None (chosen from
    the data) is always valid."""
    if targets is None:
        return
    names = linear_layers(base_dir)
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        valid = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
        raise TrainingError(
            f"--target-modules: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a layer of "
            f"{base_dir.name}; its layers LoRA can adapt are: {valid}",
            hint="for example --target-modules q_proj,v_proj, or leave it out (every projection)",
        )


def resolve_config(
    config: TrainConfig, base_dir: Path, examples: int, labels: Sequence[str] | None
) -> tuple[TrainConfig, list[str]]:
    """`config` with every field the user left unset chosen from the data (training/defaults.py)."""
    from training.defaults import DataShape, choose

    layers = [n.rsplit(".", 1)[-1] for n in linear_layers(base_dir)] if config.target_modules is None else []
    shape = DataShape(examples=examples, labels=len(labels) if labels else None, batch_size=config.batch_size)
    return choose(config, shape, layers)


def cpu_threads(requested: int | None = None, own: int = 0) -> int:
    """Set and return torch's CPU threads: `requested`, else the cores other processes leave idle.

    `own` is how many threads this process is running now (counted in the load average). Measured
    on 2 shared cores: with another process busy, 2 threads fell to 26-120 tokens/s (every parallel
    op waits for a descheduled thread) while 1 thread kept ~520; idle, 2 threads ran ~650-900.
    """
    import torch

    if requested is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        others = max(0.0, os.getloadavg()[0] - own) if hasattr(os, "getloadavg") else 0.0
        requested = max(1, cores - math.floor(others + 0.5))
    if requested != torch.get_num_threads():
        torch.set_num_threads(requested)
    return requested


def bf16_supported(device: Any) -> bool:
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    # Native bf16 matmuls (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than fp32.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(precision: Precision, device: Any, *, generation: bool = False) -> Any:
    """The base weights' dtype. AUTO: bf16 where native, except CPU generation, which is fp32.

    Measured on an AVX512-BF16 CPU without AMX (2 cores): a training step (forward + backward) ran
    ~1.45x faster with the base in bf16, but greedy generation ran 3-10x slower (bf16 attention with a
    padding mask, and casts around the fp32 LoRA weights at every decoding step).
    """
    import torch

    if precision == Precision.FP32:
        return torch.float32
    if precision == Precision.BF16:
        return torch.bfloat16
    if not bf16_supported(device) or (generation and device.type == "cpu"):
        return torch.float32
    return torch.bfloat16


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(folder: Path, dtype: Any, device: Any) -> Any:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.to(device)


def prompt_text(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False))


def _answer_text(tokenizer: Any, prompt_messages: Sequence[dict[str, str]], prompt: str, answer: str) -> str:
    """The text the chat template puts after the prompt when `answer` is the assistant's turn."""
    full = str(
        tokenizer.apply_chat_template(
            [*prompt_messages, {"role": "assistant", "content": answer}], tokenize=False
        )
    )
    if not full.startswith(prompt):  # a template that rewrites earlier turns: end the answer with EOS
        return answer + str(tokenizer.eos_token)
    return full[len(prompt) :]


def answer_token_ids(tokenizer: Any, answer: str) -> list[int]:
    """The token ids training learns for `answer` (as `encode` makes them, e.g. `label<|im_end|>\\n`)."""
    messages = [{"role": "user", "content": "?"}]
    prompt = prompt_text(tokenizer, messages)
    return list(
        tokenizer(_answer_text(tokenizer, messages, prompt, answer), add_special_tokens=False).input_ids
    )


def encode(tokenizer: Any, example: Example, max_length: int) -> Encoded:
    """Token ids of the prompt and of the answer as the chat template ends it (`label<|im_end|>\\n`)."""
    prompt = prompt_text(tokenizer, example.prompt)
    answer_text = _answer_text(tokenizer, example.prompt, prompt, example.answer)
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    a = tokenizer(answer_text, add_special_tokens=False).input_ids
    a = a[:max_length]
    if len(p) + len(a) > max_length:
        p = p[len(p) + len(a) - max_length :]
    return Encoded(list(p), list(a), example.answer.strip())


def fit_length(
    tokenizer: Any, examples: Sequence[Example], limit: int, too_long: TooLong, path: Path
) -> tuple[list[Example], list[str]]:
    """The examples within `limit` tokens, as `too_long` says; notes on what was cut or dropped.

    With `too_long: error` (the default), a TrainingError names each example over the limit: the
    same count as `lorafleet data check` makes, through the same chat template, so what passed the
    check is never cut without a word."""
    from training.tokens import count_tokens_batch

    counts = count_tokens_batch(tokenizer, examples)
    over = [(e, n) for e, n in zip(examples, counts, strict=True) if n > limit]
    if not over:
        return list(examples), []
    where = ", ".join(f"{path}:{e.line} ({n} tokens)" for e, n in over[:10])
    more = f" and {len(over) - 10} more" if len(over) > 10 else ""
    if too_long is TooLong.ERROR:
        raise TrainingError(
            f"{len(over)} example{'s are' if len(over) > 1 else ' is'} longer than max_length {limit} tokens: "
            f"{where}{more}",
            hint="shorten them, raise --max-length (up to the model's context), or choose "
            "--too-long cut (the start of the prompt is cut) or --too-long drop",
        )
    if too_long is TooLong.DROP:
        kept = [e for e, n in zip(examples, counts, strict=True) if n <= limit]
        return kept, [f"dropped {len(over)} example(s) over {limit} tokens: {where}{more}"]
    return list(examples), [
        f"cut the start of the prompt of {len(over)} example(s) over {limit} tokens: {where}{more}"
    ]


def length_grouped_batches(
    lengths: Sequence[int], indices: Sequence[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Batches of similar length: shuffle, sort pools of `_POOL_BATCHES` batches, cut, shuffle batches."""
    order = list(indices)
    rng.shuffle(order)
    pool = batch_size * _POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def epoch_indices(labels: Sequence[str], balance: Balance, rng: random.Random) -> list[int]:
    """The examples of one epoch; with upsampling, rare labels are drawn again until all are equal."""
    indices = list(range(len(labels)))
    if balance != Balance.UPSAMPLE:
        return indices
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    most = max(len(v) for v in by_label.values())
    for members in by_label.values():
        indices += [rng.choice(members) for _ in range(most - len(members))]
    return indices


def class_weights(labels: Sequence[str]) -> dict[str, float]:
    """Inverse label frequency, scaled so that the mean weight over the examples is 1."""
    counts = Counter(labels)
    return {lab: len(labels) / (len(counts) * c) for lab, c in counts.items()}


class LossComputer:
    """Summed answer-token cross-entropy of a batch, with the optimisations in the module docstring."""

    def __init__(self, model: Any, pad_id: int, device: Any, share_prefix: bool) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.lm_head = base.get_output_embeddings()
        self.pad_id = pad_id
        self.device = device
        self.share_prefix = share_prefix

    def shared_prefix(self, batch: Sequence[Encoded]) -> int:
        if not self.share_prefix or len(batch) < 2:
            return 0
        first = batch[0].prompt
        n = min(len(e.prompt) for e in batch) - 1  # keep at least one prompt token per example
        for e in batch[1:]:
            p = e.prompt
            i = 0
            while i < n and p[i] == first[i]:
                i += 1
            n = i
        return n if n >= _MIN_SHARED_PREFIX else 0

    def __call__(self, batch: Sequence[Encoded], weights: Sequence[float] | None = None) -> tuple[Any, float]:
        """(sum of weight x token loss, sum of weight x answer tokens) over the batch."""
        import torch
        import torch.nn.functional as F

        shared = self.shared_prefix(batch)
        rows = [(e.prompt + e.answer)[shared:] for e in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        ids = ids.to(self.device)
        # Right padding under a causal mask: real tokens never attend to the pads after them.
        if shared:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.decoder.config)
            prefix = torch.tensor([batch[0].prompt[:shared]], device=self.device)
            self.decoder(input_ids=prefix, past_key_values=cache, use_cache=True)
            for layer in cache.layers:
                layer.keys = layer.keys.expand(len(rows), -1, -1, -1)
                layer.values = layer.values.expand(len(rows), -1, -1, -1)
            positions = torch.arange(shared, shared + width, device=self.device).unsqueeze(0)
            hidden = self.decoder(
                input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True
            ).last_hidden_state
        else:
            hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
        rows_idx: list[int] = []
        cols_idx: list[int] = []
        targets: list[int] = []
        token_w: list[float] = []
        for i, e in enumerate(batch):
            start = len(e.prompt) - shared - 1
            rows_idx += [i] * len(e.answer)
            cols_idx += range(start, start + len(e.answer))
            targets += e.answer
            token_w += [1.0 if weights is None else weights[i]] * len(e.answer)
        picked = hidden[
            torch.tensor(rows_idx, device=self.device), torch.tensor(cols_idx, device=self.device)
        ]
        logits = self.lm_head(picked).float()
        losses = F.cross_entropy(logits, torch.tensor(targets, device=self.device), reduction="none")
        w = torch.tensor(token_w, device=self.device)
        return (losses * w).sum(), float(w.sum())


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc="train", unit="step", file=sys.stderr, disable=not enabled, dynamic_ncols=True
    )


def validation_loss(compute: LossComputer, model: Any, data: Sequence[Encoded], batch_size: int) -> float:
    """Mean answer-token loss over `data` (no dropout, no gradients)."""
    import torch

    model.eval()
    total, count = 0.0, 0.0
    order = sorted(range(len(data)), key=lambda i: len(data[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            loss, n = compute([data[i] for i in order[start : start + batch_size]])
            total += float(loss)
            count += n
    model.train()
    return total / max(count, 1.0)


def train(
    config: TrainConfig,
    train_path: Path | str,
    val_path: Path | str | None,
    out_dir: Path | str,
    *,
    progress: bool = True,
    force: bool = False,
) -> TrainResult:
    """Train a LoRA adapter on `train_path`; write the adapter, config and loss history to `out_dir`.

    An `out_dir` that already holds an adapter is refused unless `force`.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    out = check_output_dir(out_dir, "--out")
    if (out / ADAPTER_FILES[0]).exists() and not force:
        raise OutputExistsError(
            f"{out} already holds an adapter", hint="name a new folder, or pass --force to replace it"
        )
    train_examples = read_valid(Path(train_path))
    val_examples = read_valid(Path(val_path)) if val_path else []
    base_dir = basemodel.resolve(config.base_model)
    device = pick_device(config)
    check_target_modules(base_dir, config.target_modules)
    labels = label_set(train_examples)
    config, notes = resolve_config(config, base_dir, len(train_examples), labels)
    assert config.rank and config.alpha and config.target_modules and config.epochs and config.learning_rate
    dtype = pick_dtype(config.precision, device)
    threads = cpu_threads(config.threads) if device.type == "cpu" else None
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    tokenizer = load_tokenizer(base_dir)
    limit = config.max_length or model_context(base_dir)
    train_examples, cut_notes = fit_length(
        tokenizer, train_examples, limit, config.too_long, Path(train_path)
    )
    val_examples, val_notes = fit_length(
        tokenizer, val_examples, limit, config.too_long, Path(val_path or ".")
    )
    notes += cut_notes + val_notes
    train_data = [encode(tokenizer, e, limit) for e in train_examples]
    val_data = [encode(tokenizer, e, limit) for e in val_examples]
    example_labels = [d.label for d in train_data]
    weights_by_label = class_weights(example_labels) if labels and config.balance == Balance.WEIGHTS else None
    balance = config.balance if labels else Balance.NONE

    model = load_base_model(base_dir, dtype, device)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    model = get_peft_model(model, lora)  # adapters are created in fp32 whatever the base dtype
    model.train()
    compute = LossComputer(model, int(tokenizer.pad_token_id), device, config.share_prefix)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    whole_epochs = math.ceil(config.epochs)
    plans: list[list[list[int]]] = []
    lengths = [len(d) for d in train_data]
    for _ in range(whole_epochs):
        idx = epoch_indices(example_labels, balance, rng)
        plans.append(length_grouped_batches(lengths, idx, config.batch_size, rng))
    steps_per_epoch = len(plans[0])
    total_steps = max(1, round(steps_per_epoch * config.epochs))
    warmup = max(1, round(total_steps * config.warmup_ratio)) if config.warmup_ratio else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total_steps, warmup))

    history = LossHistory(notes=[f"chosen from the data: {n}" for n in notes])
    best: dict[str, Any] | None = None  # the LoRA weights of the best epoch so far
    keep_last = config.keep is Keep.LAST
    if val_data:
        history.val.append(LossPoint(step=0, epoch=0.0, loss=validation_loss(compute, model, val_data, 16)))
    step, tokens, seconds = 0, 0, 0.0
    bar = _progress(total_steps, progress)
    try:
        for epoch, plan in enumerate(plans):
            for batch_idx in plan:
                if step >= total_steps:
                    break
                if threads is not None and config.threads is None and step % _THREADS_EVERY == 0:
                    threads = cpu_threads(None, own=threads)
                batch = [train_data[i] for i in batch_idx]
                w = [weights_by_label[d.label] for d in batch] if weights_by_label else None
                started = time.perf_counter()
                loss_sum, count = compute(batch, w)
                loss = loss_sum / count
                loss.backward()
                loss_value = float(loss.detach())
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                seconds += time.perf_counter() - started
                tokens += sum(len(d) for d in batch)
                step += 1
                history.train.append(
                    LossPoint(step=step, epoch=round(step / steps_per_epoch, 4), loss=loss_value)
                )
                bar.set_postfix(
                    threads=threads or "-",
                    epoch=f"{step / steps_per_epoch:.2f}",
                    loss=f"{loss_value:.3f}",
                    tok_s=f"{tokens / seconds:.0f}",
                )
                bar.update(1)
            if val_data and (epoch + 1 < len(plans) or step == total_steps):
                vl = validation_loss(compute, model, val_data, 16)
                history.val.append(LossPoint(step=step, epoch=round(step / steps_per_epoch, 4), loss=vl))
                bar.write(f"epoch {step / steps_per_epoch:.2f}: validation loss {vl:.4f}", file=sys.stderr)
                losses = [p.loss for p in history.val]
                if not keep_last and kept_epoch(losses, config.keep_within) == len(losses) - 1:
                    best = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
                if step < total_steps and should_stop(losses, config.early_stopping_patience):
                    history.stopped_at_epoch = history.val[-1].epoch
                    bar.write(
                        f"early stopping: no better validation loss for {config.early_stopping_patience} epochs",
                        file=sys.stderr,
                    )
                    break
    finally:
        bar.close()
    history.tokens, history.seconds = tokens, round(seconds, 3)
    history.tokens_per_s = round(tokens / seconds, 1) if seconds else 0.0
    if history.val:
        losses = [p.loss for p in history.val]
        kept = history.val[kept_epoch(losses, config.keep_within, last=keep_last)]
        first_lowest = history.val[best_epoch(losses)]
        lowest = first_lowest.loss
        history.best_epoch = kept.epoch
        if best is not None and kept is not history.val[-1]:
            with torch.no_grad():
                for name, value in model.named_parameters():
                    if name in best:
                        value.copy_(best[name])
        if kept is not history.val[-1] or kept.loss > lowest:
            if kept.loss <= lowest:
                why = "the lowest"
            elif keep_last:
                why = f"the last; the lowest, {lowest:.4f}, was epoch {first_lowest.epoch:g}'s"
            else:
                why = f"within {config.keep_within * 100:g}% of the lowest, {lowest:.4f}"
            history.notes.append(
                f"kept the adapter of epoch {kept.epoch:g} (validation loss {kept.loss:.4f}, {why})"
            )
        if still_falling(losses):
            history.notes.append(
                f"warning: the validation loss was still falling at the end ({losses[-2]:.4f} -> "
                f"{losses[-1]:.4f} over the last epoch): more epochs may help (--epochs, with keep: last "
                "to keep their decayed end), or not: compare the two on the test split"
            )

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's template card; the registry writes the real one
    config.save(out)
    (out / HISTORY_FILE).write_text(history.model_dump_json(indent=2) + "\n")
    return TrainResult(out, config, history, base_dir, len(train_data), labels)


def read_history(adapter_dir: Path | str) -> LossHistory | None:
    f = Path(adapter_dir) / HISTORY_FILE
    return LossHistory.model_validate(json.loads(f.read_text())) if f.is_file() else None
