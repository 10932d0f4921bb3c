"""Greedy decoding of a test split's chat prompts, batched, their shared beginning computed once.

    greedy(model, prompt_ids, max_new_tokens, end_id, pad_id)           free answers
    greedy(model, prompt_ids, 0, end_id, pad_id, choices=trie)          answers that are labels
    greedy(..., top_k=5)                                                 and each step's top logprobs
    greedy_both(model, prompt_ids, max_new_tokens, end_id, pad_id, trie)  both answers, one prefill

A test split's prompts begin alike (the chat template's header and the system prompt: 25 of the 44
tokens of a BANKING77 prompt), so that prefix runs through the model once and every batch starts
from a copy of its keys and values; each prompt's own tokens follow it, left padded (the padding
masked, positions counted without it). Under `choices` an answer may only spell a label: where the
trie leaves one token possible it is taken without asking the model, and the tokens forced in a
row are fed in one forward, so a label costs one forward per branching point, not per token.
`greedy_both` prefills each batch once and decodes both ways from copies of its cache (a label
task's eval wants both answers, and the prefill is most of a constrained decode).

The answers are those of transformers' `generate(do_sample=False)` (with `prefix_allowed_tokens_fn`
for choices; ties go to the lower token id in both) up to float rounding: bench/eval_speed.py
counts the identical ones.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.choices import LabelTrie, Node


@dataclass
class Decoded:
    """One prompt's answer: its token ids (ending with `end_id` when the model ended it) and, when
    asked, the top logprobs of each step at which the model chose a token."""

    ids: list[int]
    top: list[list[float]] = field(default_factory=list)


@dataclass
class _Row:
    index: int  # in the prompts
    next_position: int
    node: Node | None
    ids: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # chosen, not yet seen by the model
    top: list[list[float]] = field(default_factory=list)
    done: bool = False

    def take(self, token: int) -> None:
        self.ids.append(token)
        self.pending.append(token)
        if self.node is not None:
            self.node = self.node.children[token]

    def follow_forced(self) -> None:
        """Take every token the trie leaves no choice about; done at a label's end."""
        assert self.node is not None
        while len(self.node.children) == 1:
            self.take(next(iter(self.node.children)))
        self.done = not self.node.children


def common_prefix(prompt_ids: Sequence[Sequence[int]]) -> int:
    """The number of leading tokens every prompt shares, leaving each at least one of its own."""
    if not prompt_ids:
        return 0
    first, n = prompt_ids[0], min(len(p) for p in prompt_ids) - 1
    for ids in prompt_ids[1:]:
        i = 0
        while i < n and ids[i] == first[i]:
            i += 1
        n = i
    return max(0, n)


@dataclass(frozen=True)
class _Branch:
    """One way of answering: free (up to `max_new_tokens`, with top logprobs when `top_k`), or
    spelling one of `choices`' labels."""

    choices: LabelTrie | None
    max_new_tokens: int
    top_k: int


@dataclass
class Decodes:
    """Free and constrained answers to the same prompts (`greedy_both`), in the prompts' order, and
    the seconds of each part: the prompts' prefill (shared), then each decode."""

    free: list[Decoded]
    constrained: list[Decoded]
    prefill_s: float
    free_s: float
    constrained_s: float


def greedy(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    end_id: int,
    pad_id: int,
    *,
    batch_size: int = 16,
    choices: LabelTrie | None = None,
    top_k: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[Decoded]:
    """Greedy answers to `prompt_ids` (token ids of chat prompts up to the assistant header), in
    their order. Free answers stop at `end_id` or after `max_new_tokens`; under `choices` an answer
    is a label's tokens, its end token included, whatever `max_new_tokens` says. `progress` is
    called with the number of prompts answered after each batch."""
    if choices is not None and top_k:
        raise ValueError("top logprobs are measured on free answers, not on constrained choice")
    answers, _, _ = _run(
        model, prompt_ids, end_id, pad_id, [_Branch(choices, max_new_tokens, top_k)], batch_size, progress
    )
    return answers[0]


def greedy_both(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    end_id: int,
    pad_id: int,
    choices: LabelTrie,
    *,
    batch_size: int = 16,
    top_k: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Decodes:
    """`greedy`'s free answers (with top logprobs when `top_k`) and its answers under `choices`,
    each batch's prompts prefilled once for both: the decodes start from copies of one cache."""
    branches = [_Branch(None, max_new_tokens, top_k), _Branch(choices, max_new_tokens, 0)]
    answers, prefill_s, decode_s = _run(model, prompt_ids, end_id, pad_id, branches, batch_size, progress)
    return Decodes(answers[0], answers[1], prefill_s, decode_s[0], decode_s[1])


def _run(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    end_id: int,
    pad_id: int,
    branches: Sequence[_Branch],
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> tuple[list[list[Decoded]], float, list[float]]:
    """Each branch's answers in the prompts' order, the prefill's seconds and each decode's."""
    import torch

    started = time.perf_counter()
    device = next(model.parameters()).device
    shared = common_prefix(prompt_ids)
    prefix_cache = None
    if shared:
        prefix = torch.tensor([list(prompt_ids[0][:shared])], device=device)
        prefix_cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
    prefill_s = time.perf_counter() - started
    decode_s = [0.0] * len(branches)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[list[Decoded | None]] = [[None] * len(prompt_ids) for _ in branches]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        began = time.perf_counter()
        cache = copy.deepcopy(prefix_cache) if prefix_cache is not None else None
        if cache is not None and len(batch) > 1:
            cache.batch_repeat_interleave(len(batch))
        mask = torch.ones((len(batch), shared), dtype=torch.long, device=device)
        own = [list(prompt_ids[i][shared:]) for i in batch]
        cache, mask, logits = _forward(model, own, [shared] * len(batch), cache, mask, pad_id)
        prefill_s += time.perf_counter() - began
        for b, branch in enumerate(branches):
            began = time.perf_counter()
            rows = [
                _Row(i, len(prompt_ids[i]), branch.choices.root if branch.choices else None) for i in batch
            ]
            forked = cache if b == len(branches) - 1 else copy.deepcopy(cache)
            for row in _decode(model, rows, forked, mask, logits, branch, end_id, pad_id):
                out[b][row.index] = Decoded(row.ids, row.top)
            decode_s[b] += time.perf_counter() - began
        if progress is not None:
            progress(min(start + batch_size, len(order)))
    return [[d for d in answers if d is not None] for answers in out], prefill_s, decode_s


def _forward(
    model: Any, chunks: list[list[int]], starts: list[int], cache: Any, mask: Any, pad_id: int
) -> tuple[Any, Any, Any]:
    """Feed each row its `chunks` tokens (left padded, positions from `starts`) after the cache;
    return the cache, the attention mask so far and each row's last logits."""
    import torch

    device = mask.device
    width = max(len(c) for c in chunks)
    tokens = [[pad_id] * (width - len(c)) + c for c in chunks]
    real = [[0] * (width - len(c)) + [1] * len(c) for c in chunks]
    positions = [
        [0] * (width - len(c)) + list(range(s, s + len(c))) for c, s in zip(chunks, starts, strict=True)
    ]
    mask = torch.cat([mask, torch.tensor(real, device=device)], dim=1)
    result = model(
        input_ids=torch.tensor(tokens, device=device),
        attention_mask=mask,
        position_ids=torch.tensor(positions, device=device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return result.past_key_values, mask, result.logits[:, -1, :].float()


def _decode(
    model: Any,
    rows: list[_Row],
    cache: Any,
    mask: Any,
    logits: Any,
    branch: _Branch,
    end_id: int,
    pad_id: int,
) -> Iterator[_Row]:
    """Decode `rows` from their prefilled cache and first logits; yield each row when it is done."""
    import torch

    top_k, max_new_tokens = branch.top_k, branch.max_new_tokens
    while True:
        best = logits.argmax(dim=-1).tolist()  # one transfer per step, not one per row
        tops = torch.log_softmax(logits, dim=-1).topk(top_k).values.tolist() if top_k else None
        for k, row in enumerate(rows):
            row.pending = []
            if row.node is not None:
                allowed = sorted(row.node.children)
                row.take(allowed[int(logits[k, allowed].argmax())])
                row.follow_forced()
                continue
            if tops is not None:
                row.top.append(tops[k])
            row.take(best[k])
            row.done = row.ids[-1] == end_id or len(row.ids) >= max_new_tokens
        for row in rows:
            if row.done:
                yield row
        keep = [k for k, row in enumerate(rows) if not row.done]
        if not keep:
            return
        if len(keep) < len(rows):
            picked = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(picked)
            mask = mask[picked]
            rows = [rows[k] for k in keep]
        starts = [row.next_position for row in rows]
        chunks = [row.pending for row in rows]
        for row in rows:
            row.next_position += len(row.pending)
        cache, mask, logits = _forward(model, chunks, starts, cache, mask, pad_id)
