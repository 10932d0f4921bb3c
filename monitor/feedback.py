"""The answer log and the feedback store: one SQLite file shared by every gateway worker.

    FeedbackStore(path)
      record_answer(...)       every completion the gateway returns; queued in memory and written in
                               batches by a background thread (the request path never touches disk)
      flush()                  write the queued answers now
      answer(id)               an answer (flushes this process's queue first)
      add_feedback(id, ...)    a verdict on an answer: a label (correctness derived) or correct=True/False;
                               -> (the stored record, whether this call created it)
      feedback(id)             the verdict stored for an answer
      rolling(route, version, last_n)  (correct, total) over the last n verdicts of a version
      versions_with_feedback() (route, version) pairs that have verdicts

    answers  (completion_id PK, route, version, answer, label, created_at)
    feedback (seq PK, completion_id UNIQUE, route, version, label, correct, source, received_at)

WAL mode lets several processes read while one writes; writers wait on each other (busy timeout).
Feedback is append-only and idempotent per completion id: the same verdict again returns the stored
record (created False: count it once, even when two workers get it at the same moment), a different
one raises FeedbackConflictError. Rows older than the retention (30 days by
default) are deleted when a store is opened, which bounds the file. Calls block on SQLite: from an
event loop, run add_feedback/rolling in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lorafleet.textstats import match_label
from monitor.errors import FeedbackConflictError, InvalidFeedbackError, UnknownCompletionError

log = logging.getLogger(__name__)

DEFAULT_RETENTION = dt.timedelta(days=30)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    completion_id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    version TEXT NOT NULL,
    answer TEXT NOT NULL,
    label TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_created ON answers (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    completion_id TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL,
    version TEXT NOT NULL,
    answer_label TEXT,
    label TEXT,
    correct INTEGER NOT NULL,
    source TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_version ON feedback (route, version, seq);
CREATE INDEX IF NOT EXISTS feedback_received ON feedback (received_at);
"""


def _epoch(when: dt.datetime | None) -> float:
    return time.time() if when is None else when.timestamp()


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


class FeedbackOutcome(enum.StrEnum):
    """The `outcome` label of lorafleet_feedback_total."""

    CORRECT = "correct"
    INCORRECT = "incorrect"


@dataclass(frozen=True)
class AnswerRecord:
    completion_id: str
    route: str
    version: str
    answer: str
    label: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class FeedbackRecord:
    completion_id: str
    route: str
    version: str
    answer_label: str | None
    label: str | None
    correct: bool
    source: str | None
    received_at: dt.datetime

    @property
    def outcome(self) -> FeedbackOutcome:
        return FeedbackOutcome.CORRECT if self.correct else FeedbackOutcome.INCORRECT


_Row = tuple[str, str, str, str, str | None, float]


class FeedbackStore:
    """The answer log and feedback of every version, in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        retention: dt.timedelta = DEFAULT_RETENTION,
        flush_interval_s: float = 0.2,
        lookup_grace_s: float = 1.0,
        max_answer_chars: int = 4096,
        max_pending: int = 50_000,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self.flush_interval_s = flush_interval_s
        self.lookup_grace_s = lookup_grace_s
        self.max_answer_chars = max_answer_chars
        self.max_pending = max_pending
        self.dropped_answers = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the caller's thread and the flusher, serialised by _db_lock;
        # autocommit mode with explicit transactions.
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db_lock = threading.Lock()
        with self._db_lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.prune()
        self._pending: list[_Row] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_loop, name="lorafleet-feedback-flush", daemon=True
        )
        self._flusher.start()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Write what is queued and close the file. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        self._flusher.join()
        self.flush()
        with self._db_lock:
            self._db.close()

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete answers and feedback older than the retention; return how many rows went."""
        cutoff = _epoch(now) - self.retention.total_seconds()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute("DELETE FROM answers WHERE created_at < ?", (cutoff,)).rowcount
                n += self._db.execute("DELETE FROM feedback WHERE received_at < ?", (cutoff,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    # --- the answer log -------------------------------------------------------------------

    def record_answer(
        self,
        completion_id: str,
        route: str,
        version: str,
        answer: str,
        label: str | None,
        created_at: dt.datetime | None = None,
    ) -> None:
        """Queue one answer (cheap: no I/O). `label` is the label the answer named, if any."""
        row = (completion_id, route, version, answer[: self.max_answer_chars], label, _epoch(created_at))
        with self._pending_lock:
            self._pending.append(row)
            if len(self._pending) > self.max_pending:
                # The disk is failing or far behind: keep memory bounded and say so.
                del self._pending[0]
                self.dropped_answers += 1
            wake = len(self._pending) >= 1000
        if wake:
            self._wake.set()

    def flush(self) -> None:
        """Write every queued answer in one transaction (a completion id already stored is kept).

        Returns only once the answers queued before the call are on disk, even if the flusher
        thread took them first.
        """
        with self._flush_lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
            if not rows:
                return
            try:
                with self._db_lock:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)", rows)
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
            except BaseException:
                with self._pending_lock:
                    self._pending[:0] = rows
                raise

    def _flush_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except sqlite3.Error:
                log.exception("writing the answer log to %s failed; will retry", self.path)

    def _answer(self, completion_id: str) -> AnswerRecord | None:
        with self._db_lock:
            row = self._db.execute(
                "SELECT completion_id, route, version, answer, label, created_at FROM answers WHERE completion_id = ?",
                (completion_id,),
            ).fetchone()
        if row is None:
            return None
        return AnswerRecord(row[0], row[1], row[2], row[3], row[4], _utc(row[5]))

    def answer(self, completion_id: str) -> AnswerRecord | None:
        """The logged answer with this id, or None. Flushes this process's queue first."""
        self.flush()
        return self._answer(completion_id)

    def _await_answer(self, completion_id: str) -> AnswerRecord:
        found = self.answer(completion_id)
        # Another worker may still hold the answer in its queue: give it a flush or two.
        deadline = time.monotonic() + self.lookup_grace_s
        while found is None and time.monotonic() < deadline:
            time.sleep(min(0.05, self.lookup_grace_s))
            found = self._answer(completion_id)
        if found is None:
            raise UnknownCompletionError(completion_id)
        return found

    # --- feedback -------------------------------------------------------------------------

    def add_feedback(
        self,
        completion_id: str,
        *,
        label: str | None = None,
        correct: bool | None = None,
        source: str | None = None,
    ) -> tuple[FeedbackRecord, bool]:
        """Record a verdict on an answer: the right `label` (correctness is derived) or `correct`.

        Returns the stored record and whether this call created it (False: an earlier call stored
        the same verdict). Both are decided inside one write transaction, so of several concurrent
        calls for one completion id, in any number of processes, exactly one creates it.
        """
        if (label is None) == (correct is None):
            raise InvalidFeedbackError(
                "give exactly one of `label` (the right answer) or `correct` (true/false)",
                hint='for example {"label": "card_arrival"} or {"correct": false}',
            )
        answer = self._await_answer(completion_id)
        if label is not None:
            said = answer.label if answer.label is not None else answer.answer
            verdict = match_label(said, [label]) is not None
        else:
            verdict = bool(correct)
        now = time.time()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                stored = self._feedback(completion_id)
                if stored is None:
                    self._db.execute(
                        "INSERT INTO feedback (completion_id, route, version, answer_label, label, correct, source,"
                        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            completion_id,
                            answer.route,
                            answer.version,
                            answer.label,
                            label,
                            int(verdict),
                            source,
                            now,
                        ),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if stored is None:
            record = FeedbackRecord(
                completion_id, answer.route, answer.version, answer.label, label, verdict, source, _utc(now)
            )
            return record, True
        same_labels = label is None or stored.label is None or match_label(label, [stored.label]) is not None
        if stored.correct != verdict or not same_labels:
            raise FeedbackConflictError(
                completion_id, _describe(stored.label, stored.correct), _describe(label, verdict)
            )
        return stored, False

    def _feedback(self, completion_id: str) -> FeedbackRecord | None:
        row = self._db.execute(
            "SELECT completion_id, route, version, answer_label, label, correct, source, received_at"
            " FROM feedback WHERE completion_id = ?",
            (completion_id,),
        ).fetchone()
        if row is None:
            return None
        return FeedbackRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], _utc(row[7]))

    def feedback(self, completion_id: str) -> FeedbackRecord | None:
        with self._db_lock:
            return self._feedback(completion_id)

    def rolling(self, route: str, version: str, last_n: int) -> tuple[int, int]:
        """(correct, total) over the last `last_n` verdicts received for a version."""
        if last_n < 1:
            raise ValueError(f"`last_n` should be at least 1, got {last_n}")
        with self._db_lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(correct), 0), COUNT(*) FROM (SELECT correct FROM feedback"
                " WHERE route = ? AND version = ? ORDER BY seq DESC LIMIT ?)",
                (route, version, last_n),
            ).fetchone()
        return int(row[0]), int(row[1])

    def versions_with_feedback(self) -> list[tuple[str, str]]:
        """Every (route, version) with at least one verdict, sorted."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT DISTINCT route, version FROM feedback ORDER BY route, version"
            ).fetchall()
        return [(r[0], r[1]) for r in rows]


def _describe(label: str | None, correct: bool) -> str:
    verdict = "correct" if correct else "incorrect"
    return f"label '{label}', {verdict}" if label is not None else verdict
