"""Early stopping on the validation loss, as pure functions of the losses recorded so far.

`losses[0]` is the validation loss before training, `losses[i]` the one after epoch i. Training
stops when `patience` epochs in a row did not beat the best loss, and the adapter of the best epoch
is the one kept, or of the latest epoch within a share of its loss, or simply the last
(`kept_epoch`). `still_falling` says when the last epoch was still the best by a clear margin: more
epochs may help. Only may: on BANKING77's full training set a third epoch kept its epoch 2
(mid-schedule, the learning rate not yet decayed) at the same validation loss as the two-epoch
run's end, and scored 2 points less on the test split; the same run's decayed end (keep=last)
scored 2.6 more than its epoch 2, 0.6 more than the two-epoch run (docs/training.md).
"""

from __future__ import annotations

from collections.abc import Sequence

STILL_FALLING_RATIO = 0.02  # the last epoch cut the loss by more than this share: still learning


def best_epoch(losses: Sequence[float]) -> int:
    """The epoch with the lowest validation loss (the earliest of equal ones)."""
    return min(range(len(losses)), key=lambda i: (losses[i], i))


def kept_epoch(losses: Sequence[float], within: float = 0.0, *, last: bool = False) -> int:
    """The epoch whose adapter is kept: the last one if `last`, else the latest whose loss is within
    `within` (a share) of the lowest, so that a later epoch no worse than the best by more than the
    loss's noise wins."""
    if last:
        return len(losses) - 1
    best = best_epoch(losses)
    if within <= 0:
        return best
    limit = losses[best] * (1 + within)
    return max(i for i, loss in enumerate(losses) if loss <= limit)


def should_stop(losses: Sequence[float], patience: int) -> bool:
    """True when the last `patience` epochs all failed to beat the best loss before them."""
    if patience <= 0 or len(losses) <= patience:
        return False
    return best_epoch(losses) <= len(losses) - 1 - patience


def still_falling(losses: Sequence[float], ratio: float = STILL_FALLING_RATIO) -> bool:
    """The last epoch is the best and cut the loss by more than `ratio` of the epoch before it."""
    if len(losses) < 2 or best_epoch(losses) != len(losses) - 1:
        return False
    before, last = losses[-2], losses[-1]
    return before > 0 and (before - last) / before > ratio
