"""`lorafleet controller`."""

from __future__ import annotations


def controller() -> None:
    """Not built yet."""
    raise NotImplementedError
