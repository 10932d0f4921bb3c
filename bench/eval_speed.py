"""Issue 18: is the test split scored in batches, and what does that buy against one at a time?

    python bench/eval_speed.py                  about 5 minutes on 2 CPU cores

The demo's label task (data/banking77/demo.csv, 10 intents, the labels listed in the system prompt),
the embedded base model, greedy answers, 80 test prompts:

    local     `lorafleet eval`'s generation (training/evaluate.py: transformers, left padding):
              16 prompts per batch against 1 at a time, free generation and constrained choice
              among the labels (training/choices.py); the answers must be identical both ways
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
    from training.evaluate import generate, max_answer_tokens
    from training.train import load_base_model, load_tokenizer

    base = basemodel.resolve(None)
    tok = load_tokenizer(base)
    import torch

    model = load_base_model(base, torch.float32, torch.device("cpu"))
    prompts = [e.prompt for e in examples]
    n = max_answer_tokens(tok, labels)
    trie = LabelTrie.build(tok, labels, tok.eos_token_id)
    generate(model, tok, prompts[:4], n, batch_size=4)  # warm-up
    for kind, choices in (("free", None), ("constrained", trie)):
        batched = generate(model, tok, prompts, n, batch_size=args.batch_size, choices=choices)
        single = generate(model, tok, prompts, n, batch_size=1, choices=choices)
        same = sum(a == b for a, b in zip(batched.answers, single.answers, strict=True))
        out(
            f"local {kind:11s}: batch {args.batch_size} {batched.seconds:6.1f} s, one at a time "
            f"{single.seconds:6.1f} s: {single.seconds / batched.seconds:.2f}x; identical answers "
            f"{same} of {len(prompts)}"
        )


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
