"""The answer log and feedback: one interface (store.py), two backends.

open_store(target, **options)   a PostgreSQL URL (postgresql://...): PostgresFeedbackStore, every
                                replica of a fleet sharing it; else a file path:
                                SqliteFeedbackStore, the default on one machine
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.feedback.sqlite import SqliteFeedbackStore
from monitor.feedback.store import (
    DEFAULT_RETENTION,
    SHADOW_SOURCE,
    AnswerRecord,
    FeedbackOutcome,
    FeedbackRecord,
    FeedbackStore,
    LabelledAnswer,
)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(POSTGRES_SCHEMES)


def open_store(target: str | Path, **options: Any) -> FeedbackStore:
    """The store at `target`: a PostgreSQL URL, or the path of a SQLite file."""
    if is_postgres(target):
        from monitor.feedback.postgres import PostgresFeedbackStore

        return PostgresFeedbackStore(str(target), **options)
    return SqliteFeedbackStore(Path(target), **options)


__all__ = [
    "DEFAULT_RETENTION",
    "SHADOW_SOURCE",
    "AnswerRecord",
    "FeedbackOutcome",
    "FeedbackRecord",
    "FeedbackStore",
    "LabelledAnswer",
    "SqliteFeedbackStore",
    "is_postgres",
    "open_store",
]
