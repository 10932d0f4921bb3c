"""The shared-prefix greedy decoder gives transformers' `generate` answers, free and constrained."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from training.choices import LabelTrie
from training.decoding import common_prefix, greedy, greedy_both

SYSTEM = "You classify online banking customer questions by intent. Answer with the intent's name only."
QUESTIONS = [
    "Where is my card?",
    "I was charged twice for the same coffee, can you look into it please?",
    "How do I change my PIN?",
    "What is the exchange rate for dollars today and is there a fee when I pay abroad?",
    "My card got stolen",
    "Can I top up by bank transfer?",
    "Why was my transfer declined?",
]
LABELS = ["card_arrival", "card_payment_fee_charged", "change_pin", "exchange_rate", "lost_or_stolen_card",
          "top_up_by_bank_transfer_charge", "declined_transfer"]  # fmt: skip


def test_the_common_prefix_leaves_every_prompt_a_token_of_its_own() -> None:
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts keep their last token
    assert common_prefix([[1, 2], [7, 2]]) == 0
    assert common_prefix([[4]]) == 0
    assert common_prefix([]) == 0


@pytest.fixture(scope="module")
def model_and_tokenizer(base_model_dir: Path) -> tuple[Any, Any]:
    import torch

    from training.train import load_base_model, load_tokenizer

    return load_base_model(base_model_dir, torch.float32, torch.device("cpu")), load_tokenizer(base_model_dir)


def _prompt_ids(tokenizer: Any) -> list[list[int]]:
    from training.train import prompt_text

    texts = [prompt_text(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
             for q in QUESTIONS]  # fmt: skip
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def _reference(model: Any, tokenizer: Any, ids: Sequence[Sequence[int]], new: int, trie: LabelTrie | None) -> list[list[int]]:  # fmt: skip
    """transformers' generate, one prompt at a time (no padding at all)."""
    import torch

    out = []
    for prompt in ids:
        x = torch.tensor([list(prompt)])
        with torch.no_grad():
            got = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=new if trie is None else trie.max_tokens(),
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(len(prompt)) if trie else None,
            )
        answer = got[0, len(prompt) :].tolist()
        end = tokenizer.eos_token_id
        out.append(answer[: answer.index(end) + 1] if end in answer else answer)
    return out


def test_free_answers_are_those_of_generate_in_any_batch(model_and_tokenizer: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = model_and_tokenizer
    ids = _prompt_ids(tokenizer)
    assert common_prefix(ids) > 20  # the template's header and the system prompt run once
    expected = _reference(model, tokenizer, ids, 10, None)
    for batch_size in (1, 3, 16):
        answered: list[int] = []
        with torch.no_grad():
            got = greedy(model, ids, 10, tokenizer.eos_token_id, tokenizer.pad_token_id, batch_size=batch_size, top_k=5, progress=answered.append)  # fmt: skip
        assert [d.ids for d in got] == expected, batch_size
        assert answered == [min(n, len(ids)) for n in range(batch_size, len(ids) + batch_size, batch_size)]
        for d in got:  # one step's top logprobs for each token chosen, the end token included
            assert len(d.top) == len(d.ids) and all(
                len(t) == 5 and t == sorted(t, reverse=True) for t in d.top
            )


def test_constrained_answers_are_labels_and_those_of_generate(model_and_tokenizer: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = model_and_tokenizer
    ids = _prompt_ids(tokenizer)
    trie = LabelTrie.build(tokenizer, LABELS, tokenizer.eos_token_id)
    expected = _reference(model, tokenizer, ids, 0, trie)
    calls = 0
    forward = model.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return forward(*args, **kwargs)

    model.forward = counted
    try:
        with torch.no_grad():
            got = greedy(model, ids, 0, tokenizer.eos_token_id, tokenizer.pad_token_id, batch_size=len(ids), choices=trie)  # fmt: skip
    finally:
        del model.forward
    assert [d.ids for d in got] == expected
    assert all(trie.label_of(d.ids) in LABELS for d in got)
    # Forced tokens are taken without asking the model: fewer forwards than the longest label's tokens.
    assert calls < 1 + trie.max_tokens()
    with pytest.raises(ValueError, match="free answers"):
        greedy(model, ids, 0, 2, 2, choices=trie, top_k=5)


def test_both_answers_from_one_prefill_are_those_of_each_alone(model_and_tokenizer: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = model_and_tokenizer
    ids = _prompt_ids(tokenizer)
    trie = LabelTrie.build(tokenizer, LABELS, tokenizer.eos_token_id)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    answered: list[int] = []
    with torch.no_grad():
        both = greedy_both(model, ids, 10, eos, pad, trie, batch_size=3, top_k=5, progress=answered.append)
        free = greedy(model, ids, 10, eos, pad, batch_size=3, top_k=5)
        constrained = greedy(model, ids, 0, eos, pad, batch_size=3, choices=trie)
    assert [d.ids for d in both.free] == [d.ids for d in free]
    assert [d.ids for d in both.constrained] == [d.ids for d in constrained]
    for a, b in zip(both.free, free, strict=True):
        assert len(a.top) == len(b.top)
        assert [x for t in a.top for x in t] == pytest.approx([x for t in b.top for x in t], abs=1e-4)
    assert all(d.top == [] for d in both.constrained)
    assert answered == [3, 6, 7]  # once per batch, for both
    assert min(both.prefill_s, both.free_s, both.constrained_s) > 0
