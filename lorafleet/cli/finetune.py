"""`lorafleet finetune`."""

from __future__ import annotations


def finetune() -> None:
    """Not built yet."""
    raise NotImplementedError
