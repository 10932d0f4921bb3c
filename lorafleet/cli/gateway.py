"""`lorafleet gateway`."""

from __future__ import annotations


def gateway() -> None:
    """Not built yet."""
    raise NotImplementedError
