"""`lorafleet eval`."""

from __future__ import annotations


def evaluate() -> None:
    """Not built yet."""
    raise NotImplementedError
