"""Constrained choice among a label set: the model may only write one of the labels.

    LabelTrie.build(tokenizer, labels, end_id)   the labels' answer tokens exactly as training wrote
                                                 them after the assistant header (`label<|im_end|>`),
                                                 as a trie of Nodes from `trie.root`
    trie.allowed(generated)                      the tokens that may follow what was generated so far
    trie.prefix_allowed_tokens_fn(prompt_width)  the same as transformers' `generate` takes it
    trie.label_of(generated)                     the label those tokens spell, if any

Greedy decoding restricted to the trie picks, token by token, the most likely continuation that
still leads to a label: what vLLM's structured outputs `choice` does on the engine. Local eval
walks the trie's nodes in its own decoder (training/decoding.py), which skips the model where a
node has one child. A label's tokens end with the end-of-turn token, so an answer stops exactly
where a label ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Node:
    children: dict[int, Node] = field(default_factory=dict)
    label: str | None = None  # set on the node reached by a label's last token


@dataclass
class LabelTrie:
    root: Node
    labels: list[str]
    end_id: int

    @classmethod
    def build(cls, tokenizer: Any, labels: Sequence[str], end_id: int) -> LabelTrie:
        """The trie of each label's answer tokens, up to and including `end_id` (the end of turn).

        The tokens are those the chat template puts after the assistant header when the label is
        the answer, cut at the end-of-turn token: the same ids training learned."""
        from training.train import answer_token_ids

        root = Node()
        for label in labels:
            ids = answer_token_ids(tokenizer, label)
            ids = ids[: ids.index(end_id) + 1] if end_id in ids else [*ids, end_id]
            node = root
            for token in ids:
                node = node.children.setdefault(token, Node())
            node.label = label
        return cls(root, list(labels), end_id)

    def _walk(self, generated: Sequence[int]) -> Node | None:
        node: Node | None = self.root
        for token in generated:
            if node is None:
                return None
            node = node.children.get(token)
        return node

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Tokens that may come next; only the end token (or padding) once a label is complete."""
        node = self._walk(generated)
        if node is None or not node.children:
            return [self.end_id]
        return list(node.children)

    def prefix_allowed_tokens_fn(self, prompt_width: int) -> Callable[[int, Any], list[int]]:
        """transformers' `generate(prefix_allowed_tokens_fn=...)` for prompts `prompt_width` tokens
        wide (padding included): each row's tokens after them walk the trie."""

        def allowed(_row: int, seq: Any) -> list[int]:
            return self.allowed(seq[prompt_width:].tolist())

        return allowed

    def label_of(self, generated: Sequence[int]) -> str | None:
        """The label `generated` spells (its end token included or not), else None."""
        ids = list(generated)
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id) + 1]
        node = self._walk(ids)
        if node is not None and node.label is None:
            node = node.children.get(self.end_id)
        return node.label if node is not None else None

    def max_tokens(self) -> int:
        """The most tokens any label takes, its end token included."""

        def depth(node: Node) -> int:
            return 1 + max((depth(c) for c in node.children.values()), default=0) if node.children else 0

        return depth(self.root)
