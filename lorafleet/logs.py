"""One log format for lorafleet's services, in their own process and in the workers they spawn."""

from __future__ import annotations

import logging
import os

LEVEL_ENV = "LORAFLEET_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _apply(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def configure(level: str) -> None:
    """Log at `level` (debug, info, warning...); worker processes started later inherit it."""
    os.environ[LEVEL_ENV] = level.upper()
    _apply(level.upper())


def configure_from_environment() -> None:
    """In a worker process: the logging its parent configured, if it did."""
    level = os.environ.get(LEVEL_ENV)
    if level:
        _apply(level)
