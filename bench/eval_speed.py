"""Issue 18: is the test split scored in batches, and what does that buy against one at a time?

    python bench/eval_speed.py                  about 5 minutes on 2 CPU cores

The demo's label task (data/banking77/demo.csv, 10 intents, the labels listed in the system prompt),
the embedded base model, greedy answers, 80 test prompts:

    local     `lorafleet eval`'s generation (training/evaluate.py over training/decoding.py: the
              prompts' shared beginning computed once, forced label tokens taken without a
              forward): 16 prompts per batch against 1 at a time, free generation and constrained
              choice among the labels (training/choices.py); the answers must be identical both
              ways. Beside it, the path it replaced: transformers' `generate` on left-padded
              batches of 16 (`prefix_allowed_tokens_fn` for the choice), same prompts, same run;
              and both answers from one prefill of each batch (what eval runs on a label task)
              against the two decodes alone
    engine    the same prompts against a real vLLM engine (what `--endpoint` and the gateway use),
              with vLLM's structured outputs `choice`: 16 requests in flight against 1 at a time

Prints the seconds and the ratio of each; the goal is >= 5x.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
import httpx

from training.dataset import Example


def demo_examples(n: int) -> tuple[list[Example], list[str]]:
    import csv

    from training.csvimport import labels_system_prompt

    with (Path(__file__).resolve().parents[1] / "data" / "banking77" / "demo.csv").open(newline="") as fh:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(fh)]
    labels = sorted({label for _, label in rows})
    system = labels_system_prompt(labels)
    step = max(1, len(rows) // n)
    return [Example.from_turns(t, lab, system) for t, lab in rows[::step][:n]], labels


def local(args: argparse.Namespace, out: fakes.Tee, examples: list[Example], labels: list[str]) -> None:
    from lorafleet import basemodel
    from training.choices import LabelTrie
    from training.evaluate import generate, generate_both, max_answer_tokens
    from training.train import load_base_model, load_tokenizer

    base = basemodel.resolve(None)
    tok = load_tokenizer(base)
    import torch

    model = load_base_model(base, torch.float32, torch.device("cpu"))
    prompts = [e.prompt for e in examples]
    n = max_answer_tokens(tok, labels)
    trie = LabelTrie.build(tok, labels, tok.eos_token_id)
    generate(model, tok, prompts[:4], n, batch_size=4)  # warm-up
    alone = {}
    for kind, choices in (("free", None), ("constrained", trie)):
        batched = alone[kind] = generate(model, tok, prompts, n, batch_size=args.batch_size, choices=choices)
        single = generate(model, tok, prompts, n, batch_size=1, choices=choices)
        before = transformers_generate(model, tok, prompts, n, args.batch_size, choices)
        same = sum(a == b for a, b in zip(batched.answers, single.answers, strict=True))
        same_before = sum(a == b for a, b in zip(batched.answers, before[0], strict=True))
        out(
            f"local {kind:11s}: batch {args.batch_size} {batched.seconds:6.1f} s, one at a time "
            f"{single.seconds:6.1f} s: {single.seconds / batched.seconds:.2f}x; identical answers "
            f"{same} of {len(prompts)}"
        )
        out(
            f"  transformers' generate, batch {args.batch_size}: {before[1]:6.1f} s: the decoder is "
            f"{before[1] / batched.seconds:.2f}x faster; identical answers {same_before} of {len(prompts)}"
        )
    # What `lorafleet eval` runs on a label task: both answers, each batch prefilled once for both.
    t = time.perf_counter()
    free, constrained = generate_both(model, tok, prompts, n, trie, batch_size=args.batch_size)
    both_s = time.perf_counter() - t
    each_s = alone["free"].seconds + alone["constrained"].seconds
    same_free = sum(a == b for a, b in zip(free.answers, alone["free"].answers, strict=True))
    same_choice = sum(a == b for a, b in zip(constrained.answers, alone["constrained"].answers, strict=True))
    out(
        f"local both       : free and constrained from one prefill {both_s:6.1f} s, each alone "
        f"{each_s:6.1f} s: {each_s / both_s:.2f}x; identical answers {same_free} and {same_choice} of {len(prompts)}"
    )


def transformers_generate(
    model: Any, tok: Any, prompts: list[list[dict[str, str]]], n: int, batch_size: int, trie: Any
) -> tuple[list[str], float]:
    """The path training/decoding.py replaced: `generate` on left-padded batches, greedy, the whole
    prompt computed for each (and `prefix_allowed_tokens_fn` walking the label trie)."""
    import torch

    from training.train import prompt_text

    texts = [prompt_text(tok, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers = [""] * len(texts)
    tok.padding_side = "left"
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            width = enc["input_ids"].shape[1]
            got = model.generate(
                **enc,
                max_new_tokens=n if trie is None else trie.max_tokens(),
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(width) if trie is not None else None,
            )
            for row, i in enumerate(idx):
                ids = got[row, width:].tolist()
                end = ids.index(tok.eos_token_id) if tok.eos_token_id in ids else len(ids)
                label = trie.label_of(ids) if trie is not None else None
                answers[i] = label or tok.decode(ids[:end], skip_special_tokens=True)
    return answers, time.perf_counter() - started


async def engine(
    args: argparse.Namespace, out: fakes.Tee, examples: list[Example], labels: list[str]
) -> None:
    log = Path(tempfile.mkdtemp(prefix="lorafleet-bench-eval-")) / "engine.log"
    async with fakes.real_engine(log) as url, httpx.AsyncClient(timeout=300) as http:

        async def ask(e: Example) -> str:
            r = await http.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": fakes.BASE_NAME,
                    "messages": e.prompt,
                    "max_tokens": 16,
                    "temperature": 0,
                    "structured_outputs": {"choice": labels},
                },
            )
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"])

        await asyncio.gather(*(ask(e) for e in examples[:4]))  # warm-up: the grammar compiles once
        t = time.perf_counter()
        one = [await ask(e) for e in examples]
        single_s = time.perf_counter() - t
        sem = asyncio.Semaphore(args.batch_size)

        async def bounded(e: Example) -> str:
            async with sem:
                return await ask(e)

        t = time.perf_counter()
        many = await asyncio.gather(*(bounded(e) for e in examples))
        batched_s = time.perf_counter() - t
        same = sum(a == b for a, b in zip(many, one, strict=True))
        out(
            f"engine constrained: {args.batch_size} in flight {batched_s:6.1f} s, one at a time {single_s:6.1f} s: "
            f"{single_s / batched_s:.2f}x; identical answers {same} of {len(examples)}; "
            f"in the label set {sum(a in labels for a in many)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-engine", dest="engine", action="store_false")
    parser.add_argument("--no-save", dest="save", action="store_false", help="Do not write bench/results/.")
    args = parser.parse_args()
    out = fakes.Tee()
    out(fakes.machine_header("eval speed: batched against one at a time (issue 18)"))
    examples, labels = demo_examples(args.examples)
    out(f"{len(examples)} demo test prompts, {len(labels)} labels listed in the system prompt, greedy")
    local(args, out, examples, labels)
    if args.engine:
        asyncio.run(engine(args, out, examples, labels))
    if args.save:
        print(f"saved {out.save('eval_speed')}", file=sys.stderr)


if __name__ == "__main__":
    main()
