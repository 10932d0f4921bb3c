"""`lorafleet cost`."""

from __future__ import annotations


def cost() -> None:
    """Not built yet."""
    raise NotImplementedError
