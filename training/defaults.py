"""Training defaults chosen from the data: what `lorafleet train` and `finetune` use for a field the
user did not set (a flag, or a field of --config / train.yaml beside the data).

    choose(config, shape, layers) -> (config with every field set, the reasons, one per field chosen)

Pure: the numbers of the data (`DataShape`) and the base model's layer names in, a TrainConfig out.
Why these numbers (docs/training.md has the measurements):
- LoRA on every linear projection of attention and MLP, rank 16, alpha 32, learning rate 5e-4: on
  BANKING77 with SmolLM2-135M, q/v only at r 8 and lr 2e-4 was still far from converged after 3
  epochs (10 intents: ~0.85 where all projections reached ~0.94; 77 intents from 10 examples each:
  0.07 with the old defaults); at rank 64 on 36 of the 77 intents, 3e-4 lost 1.7 points (p = 0.02)
  and on all 77 1e-3 lost 2.9, while dropout 0.15 (not 0.05) and weight decay 0.1 (not 0) moved
  accuracy by less than the noise;
- enough optimizer steps for the label count: a label needs a number of updates to be learned, not
  a number of epochs, so the steps are 12 per label (at least 300, at most 3,000), as epochs of the
  data at hand, at least 2 and at most 20; early stopping on the validation loss (patience 2
  epochs, the best epoch kept) makes a generous maximum cheap (twice the steps on 36 intents:
  stopped at epoch 9, the same epoch kept, +0.5 points, p = 0.53);
- rank 64 for a label set of more than 32 labels: on BANKING77's 77 intents from 10 examples each,
  rank 16 scored 0.736, rank 32 0.785 and rank 64 0.795 (two seeds: 0.795, 0.794; 5.9 points over
  rank 16, McNemar p < 1e-20); on 48 and 36 of the intents rank 64 gained 1.8 and 2.9 points
  (p = 0.017, 0.0008), on 24 and 12 of them 0.6 and 1.7 (p = 0.50, 0.13: within the noise, for 4
  times the adapter's size), and the demo's 10 intents reach 0.95 at rank 16: the threshold lies
  between 24 and 36;
- a task that is not a label set (free text, JSON) gets 3 epochs, with the same early stopping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from training.config import TrainConfig

# Llama-style names (SmolLM2, Llama 3, Mistral): the attention and MLP projections.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK = 16
MANY_LABELS, MANY_LABELS_RANK = 32, 64  # more than this many labels: this rank
ALPHA = 32.0  # at RANK: alpha is twice the rank
LEARNING_RATE = 5e-4
STEPS_PER_LABEL = 12
MIN_STEPS, MAX_STEPS = 300, 3000
MIN_EPOCHS, MAX_EPOCHS = 2, 20
FREE_TEXT_EPOCHS = 3.0
_NOT_ADAPTED = ("lm_head", "embed_tokens")  # the output layer and embeddings stay frozen


@dataclass(frozen=True)
class DataShape:
    """What the defaults depend on: training examples, labels (None: not a label task), batch size."""

    examples: int
    labels: int | None
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.examples / self.batch_size))


def target_steps(labels: int) -> int:
    """Optimizer steps a label task of `labels` labels is trained for at most."""
    return min(MAX_STEPS, max(MIN_STEPS, STEPS_PER_LABEL * labels))


def rank_for(labels: int | None) -> int:
    """The LoRA rank: more for a label set of many labels."""
    return MANY_LABELS_RANK if labels is not None and labels > MANY_LABELS else RANK


def epochs_for(shape: DataShape) -> float:
    """At most this many epochs; early stopping usually ends sooner."""
    if shape.labels is None:
        return FREE_TEXT_EPOCHS
    wanted = math.ceil(target_steps(shape.labels) / shape.steps_per_epoch)
    return float(min(MAX_EPOCHS, max(MIN_EPOCHS, wanted)))


def adapted_layers(layers: Sequence[str]) -> list[str]:
    """The projections LoRA adapts among a model's linear layer names (their last name part)."""
    present = [name for name in PROJECTIONS if name in layers]
    if present:
        return present
    return sorted({name for name in layers if name not in _NOT_ADAPTED})


def choose(config: TrainConfig, shape: DataShape, layers: Sequence[str]) -> tuple[TrainConfig, list[str]]:
    """`config` with each unset field (None) chosen from the data; and why, one line per field."""
    chosen: dict[str, object] = {}
    why: list[str] = []
    if config.target_modules is None:
        targets = adapted_layers(layers)
        chosen["target_modules"] = targets
        why.append(f"target_modules: every attention and MLP projection ({', '.join(targets)})")
    rank = config.rank or rank_for(shape.labels)
    if config.rank is None:
        chosen["rank"] = rank
        many = f" ({shape.labels} labels, more than {MANY_LABELS})" if rank == MANY_LABELS_RANK else ""
        why.append(f"rank: {rank}{many}")
    if config.alpha is None:
        chosen["alpha"] = ALPHA * rank / RANK
        why.append(f"alpha: {chosen['alpha']:g} (twice the rank)")
    if config.learning_rate is None:
        chosen["learning_rate"] = LEARNING_RATE
        why.append(f"learning_rate: {LEARNING_RATE:g}")
    if config.epochs is None:
        chosen["epochs"] = epochs = epochs_for(shape)
        if shape.labels is None:
            why.append(f"epochs: at most {epochs:g} (not a label task)")
        else:
            why.append(
                f"epochs: at most {epochs:g}, {shape.steps_per_epoch} steps each "
                f"({STEPS_PER_LABEL} steps for each of {shape.labels} labels, {MIN_STEPS}-{MAX_STEPS} steps, "
                f"{MIN_EPOCHS}-{MAX_EPOCHS} epochs of {shape.examples} examples)"
            )
    return config.model_copy(update=chosen), why
