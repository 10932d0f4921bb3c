"""Greedy decoding of a test split's chat prompts, batched, their shared beginning computed once.

    greedy(model, prompt_ids, max_new_tokens, end_id, pad_id)           free answers
    greedy(model, prompt_ids, 0, end_id, pad_id, choices=trie)          answers that are labels
    greedy(..., top_k=5)                                                 and each step's top logprobs

A test split's prompts begin alike (the chat template's header and the system prompt: 25 of the 44
tokens of a BANKING77 prompt), so that prefix runs through the model once and every batch starts
from a copy of its keys and values; each prompt's own tokens follow it, left padded (the padding
masked, positions counted without it). Under `choices` an answer may only spell a label: where the
trie leaves one token possible it is taken without asking the model, and the tokens forced in a
row are fed in one forward, so a label costs one forward per branching point, not per token.

The answers are those of transformers' `generate(do_sample=False)` (with `prefix_allowed_tokens_fn`
for choices; ties go to the lower token id in both) up to float rounding: bench/eval_speed.py
counts the identical ones.
"""

from __future__ import annotations

import copy
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
    import torch

    if choices is not None and top_k:
        raise ValueError("top logprobs are measured on free answers, not on constrained choice")
    device = next(model.parameters()).device
    shared = common_prefix(prompt_ids)
    prefix_cache = None
    if shared:
        prefix = torch.tensor([list(prompt_ids[0][:shared])], device=device)
        prefix_cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[Decoded | None] = [None] * len(prompt_ids)
    for start in range(0, len(order), batch_size):
        rows = [
            _Row(i, len(prompt_ids[i]), choices.root if choices else None)
            for i in order[start : start + batch_size]
        ]
        cache = copy.deepcopy(prefix_cache) if prefix_cache is not None else None
        if cache is not None and len(rows) > 1:
            cache.batch_repeat_interleave(len(rows))
        for row in _decode_batch(
            model, rows, prompt_ids, shared, cache, max_new_tokens, end_id, pad_id, top_k
        ):
            out[row.index] = Decoded(row.ids, row.top)
        if progress is not None:
            progress(min(start + batch_size, len(order)))
    return [d for d in out if d is not None]


def _decode_batch(
    model: Any,
    rows: list[_Row],
    prompt_ids: Sequence[Sequence[int]],
    shared: int,
    cache: Any,
    max_new_tokens: int,
    end_id: int,
    pad_id: int,
    top_k: int,
) -> Iterator[_Row]:
    import torch

    device = next(model.parameters()).device
    mask = torch.ones((len(rows), shared), dtype=torch.long, device=device)
    chunks = [list(prompt_ids[r.index][shared:]) for r in rows]
    starts = [shared] * len(rows)
    while True:
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
        cache, logits = result.past_key_values, result.logits[:, -1, :].float()
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
            picked = torch.tensor(keep, device=device)
            cache.batch_select_indices(picked)
            mask = mask[picked]
            rows = [rows[k] for k in keep]
        starts = [row.next_position for row in rows]
        chunks = [row.pending for row in rows]
        for row in rows:
            row.next_position += len(row.pending)
