"""Training and evaluation speed of lorafleet against plain Hugging Face, measured in one run.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--batch-size 8] [--eval-examples 40]

Training: lorafleet's trainer against `transformers.Trainer` + PEFT in its defaults (fp32, the padding
collator `DataCollatorForSeq2Seq`, labels -100 over the prompt): same base model, LoRA config
(r=8, alpha=32, q_proj/v_proj, dropout 0.05), learning rate, batch size, examples and steps (one pass
over steps x batch-size examples). Throughput is example tokens (prompt + answer, no padding) per
second of the training loop (model loading excluded for both). Both adapters are then scored on the
same held-out examples with the same evaluation code.

Evaluation: the tuned model answering the held-out prompts with batched generation against one
request at a time, as a ratio.

The data is the BANKING77 demo subset, imported with a system prompt listing the labels and split
as `lorafleet finetune` does. On a shared machine the numbers move from run to run: compare the two
sides of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lorafleet import basemodel  # noqa: E402
from training.check import read_valid  # noqa: E402
from training.config import Precision, TrainConfig, load_config  # noqa: E402
from training.csvimport import import_csv  # noqa: E402
from training.dataset import Example, write_jsonl  # noqa: E402
from training.evaluate import evaluate, generate, load_adapter_model, max_answer_tokens  # noqa: E402
from training.split import split_examples  # noqa: E402
from training.train import cpu_threads, encode, load_tokenizer, train  # noqa: E402


def hf_trainer_baseline(cfg: TrainConfig, examples: list[Example], out: Path) -> tuple[float, int]:
    """Train with transformers.Trainer + PEFT (fp32, padding collator); return (seconds, tokens)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    base = basemodel.resolve(cfg.base_model)
    tok = load_tokenizer(base)
    rows = []
    for e in examples:
        enc = encode(tok, e, cfg.max_length)
        ids = enc.prompt + enc.answer
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [-100] * len(enc.prompt) + enc.answer,
            }
        )
    tokens = sum(len(r["input_ids"]) for r in rows)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        ),
    )

    class Clock(TrainerCallback):  # type: ignore[misc]
        seconds = 0.0
        started = 0.0

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            Clock.started = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            Clock.seconds = time.perf_counter() - Clock.started

    args = TrainingArguments(
        output_dir=str(out / "hf-trainer-run"),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=1,
        learning_rate=cfg.learning_rate,
        warmup_steps=max(1, round(math.ceil(len(rows) / cfg.batch_size) * cfg.warmup_ratio)),
        lr_scheduler_type="linear",
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=10_000,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,  # a list is a map-style dataset
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
        callbacks=[Clock()],
    )
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    trainer.train()
    model.save_pretrained(out)
    return Clock.seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO / "data" / "banking77" / "demo.csv")
    parser.add_argument(
        "--steps", type=int, default=20, help="Optimiser steps (one pass over steps x batch-size examples)."
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--examples", type=int, default=None, help="Training examples (default: steps x batch-size)."
    )
    parser.add_argument("--eval-examples", type=int, default=40, help="Held-out examples scored and timed.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for both sides (default: the idle cores, once).",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="A training config file for both sides (default: the train defaults).",
    )
    parser.add_argument("--json", action="store_true", help="Print the results as JSON too.")
    opts = parser.parse_args()

    # Both sides run with the same, fixed thread count: lorafleet's trainer adapts its threads to the
    # machine's load, which on a shared machine would compare the adaptation, not the training.
    threads = cpu_threads(opts.threads)
    cfg = load_config(opts.config, {"batch_size": opts.batch_size, "epochs": 1, "threads": threads})
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-") as tmp:
        work = Path(tmp)
        jsonl = work / "all.jsonl"
        import_csv(opts.data, jsonl, system_from_labels=True)
        splits = split_examples(read_valid(jsonl), seed=0)
        n = opts.examples or opts.steps * opts.batch_size
        train_examples = splits["train"][:n]
        test_examples = (splits["test"] + splits["val"])[: opts.eval_examples]
        write_jsonl(work / "train.jsonl", train_examples)
        write_jsonl(work / "test.jsonl", test_examples)
        print(
            f"data: {len(train_examples)} training examples, {len(test_examples)} held out", file=sys.stderr
        )

        print("lorafleet trainer ...", file=sys.stderr)
        ours = train(cfg, work / "train.jsonl", None, work / "ours", progress=False)
        print("transformers.Trainer + PEFT ...", file=sys.stderr)
        hf_seconds, hf_tokens = hf_trainer_baseline(cfg, train_examples, work / "hf")

        print("scoring both adapters ...", file=sys.stderr)
        acc_ours = evaluate(work / "test.jsonl", work / "ours", skip_baseline=True, threads=threads).summary[
            "tuned"
        ]["accuracy"]
        acc_hf = evaluate(work / "test.jsonl", work / "hf", skip_baseline=True, threads=threads).summary[
            "tuned"
        ]["accuracy"]

        print("generation: batched vs one at a time ...", file=sys.stderr)
        model, tok, _ = load_adapter_model(work / "ours", None, Precision.AUTO, "auto")
        prompts = [e.prompt for e in test_examples]
        max_new = max_answer_tokens(tok, [e.answer for e in test_examples])
        generate(model, tok, prompts[:2], max_new, batch_size=2, threads=threads)  # warm-up
        batched = generate(model, tok, prompts, max_new, batch_size=16, threads=threads)
        single = generate(model, tok, prompts, max_new, batch_size=1, threads=threads)

    result = {
        "threads": threads,
        "config": cfg.model_dump(mode="json"),
        "train_examples": len(train_examples),
        "steps": len(ours.history.train),
        "lorafleet_tokens_per_s": round(ours.history.tokens_per_s, 1),
        "hf_trainer_tokens_per_s": round(hf_tokens / hf_seconds, 1),
        "train_speedup": round(ours.history.tokens_per_s / (hf_tokens / hf_seconds), 2),
        "lorafleet_accuracy": acc_ours,
        "hf_trainer_accuracy": acc_hf,
        "eval_examples": len(test_examples),
        "generation_batched_s": round(batched.seconds, 2),
        "generation_one_at_a_time_s": round(single.seconds, 2),
        "generation_speedup": round(single.seconds / batched.seconds, 2),
        "same_answers": sum(a == b for a, b in zip(batched.answers, single.answers, strict=True)),
    }
    print(
        f"LoRA r={cfg.rank} alpha={cfg.alpha:g} on {','.join(cfg.target_modules)}, lr {cfg.learning_rate:g}"
    )
    print(
        f"training: lorafleet {result['lorafleet_tokens_per_s']:.0f} tokens/s vs Trainer+PEFT "
        f"{result['hf_trainer_tokens_per_s']:.0f} tokens/s: {result['train_speedup']:.2f}x "
        f"({result['steps']} steps of {opts.batch_size}, {threads} CPU threads)"
    )
    print(
        f"held-out accuracy after those steps: lorafleet {acc_ours:.3f}, Trainer+PEFT {acc_hf:.3f} "
        f"({len(test_examples)} examples)"
    )
    print(
        f"generation: batched {batched.seconds:.1f} s vs one at a time {single.seconds:.1f} s: "
        f"{result['generation_speedup']:.2f}x ({result['same_answers']}/{len(prompts)} identical answers)"
    )
    if opts.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
