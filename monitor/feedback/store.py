"""What every backend of the answer log and feedback store shares: the queue, the verdicts, the API.

    FeedbackStore                     one interface, two backends (monitor/feedback/sqlite.py,
                                      monitor/feedback/postgres.py); open_store(url_or_path) picks one
      record_answer(...)              every completion the gateway returns; queued in memory and
                                      written in batches by a background thread: the request path
                                      never waits on the database, and a database that is down or
                                      slow never fails a request (the queue holds up to `max_pending`
                                      answers, then the oldest are dropped and counted)
      flush()                         write the queued answers now (on shutdown: every one)
      answer(id)                      an answer (flushes this process's queue first)
      add_feedback(id, ...)           a verdict on an answer: a label (correctness derived) or
                                      correct=True/False -> (the stored record, created now?); the
                                      same verdict on the shadow's answer to that request, when the
                                      label is given
      feedback(id), rolling(route, version, last_n), versions_with_feedback()
      labelled(...)                   the answers with feedback, for `lorafleet feedback export`
      record_drift_window(...), pooled_drift(route, version, since)
                                      each process's drift window (its last N requests' bin counts),
                                      written with the answers; every replica reads the sum of every
                                      replica's window (router/observe.py scores it)

Inputs (the last user turn, or the prompt, and the system prompt as served) are kept with each
answer for the retention (14 days by default), unless `log_inputs=False`, which keeps only their
SHA-256 (a privacy choice: docs/monitoring.md). Feedback is append-only and idempotent per
completion id: the same verdict again returns the stored record (created False: count it once),
a different one raises FeedbackConflictError. Calls other than record_answer block on the
database: from an event loop, run them in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import abc
import collections
import datetime as dt
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from lorafleet.textstats import match_label
from monitor.errors import FeedbackConflictError, InvalidFeedbackError, UnknownCompletionError

log = logging.getLogger("lorafleet.monitor")

DEFAULT_RETENTION = dt.timedelta(days=14)
SHADOW_SOURCE = "shadow-of:"  # feedback derived for a shadow's answer: source = SHADOW_SOURCE + primary id


def _epoch(when: dt.datetime | None) -> float:
    return time.time() if when is None else when.timestamp()


def utc(epoch: float) -> dt.datetime:
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
    input: str | None = None
    system: str | None = None
    input_sha256: str | None = None
    primary_id: str | None = None  # a shadow's answer: the completion id of the request it mirrored


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


@dataclass(frozen=True)
class LabelledAnswer:
    """An answer with its verdict: what `lorafleet feedback export` writes."""

    answer: AnswerRecord
    feedback: FeedbackRecord


# completion_id, route, version, answer, label, created_at, input, system, input_sha256, primary_id
AnswerRow = tuple[str, str, str, str, str | None, float, str | None, str | None, str | None, str | None]
# replica, route, version, feature, bin, count, updated_at (epoch seconds)
DriftRow = tuple[str, str, str, str, int, int, float]


class FeedbackStore(abc.ABC):
    """The answer log and feedback of every version (see the module docstring)."""

    def __init__(
        self,
        *,
        retention: dt.timedelta = DEFAULT_RETENTION,
        flush_interval_s: float = 0.2,
        lookup_grace_s: float = 1.0,
        max_answer_chars: int = 4096,
        max_pending: int = 50_000,
        log_inputs: bool = True,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.retention = retention
        self.flush_interval_s = flush_interval_s
        self.lookup_grace_s = lookup_grace_s
        self.max_answer_chars = max_answer_chars
        self.max_pending = max_pending
        self.log_inputs = log_inputs
        self.dropped_answers = 0
        self._on_drop = on_drop
        self._pending: collections.deque[AnswerRow] = collections.deque()
        self._pending_drift: dict[tuple[str, str, str], tuple[dict[tuple[str, int], int], float]] = {}
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._failing: str | None = None  # the flusher's last error, logged once while it lasts
        self._flusher: threading.Thread | None = None

    def _start(self) -> None:
        """Prune, then start the flusher: once the backend is connected and its schema checked."""
        self.prune()
        self._flusher = threading.Thread(target=self._flush_loop, name="lorafleet-answer-log", daemon=True)
        self._flusher.start()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages (a URL without its password, or a path)."""

    def close(self) -> None:
        """Write what is queued (as far as the database takes it) and disconnect. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            self.flush()
        except Exception as exc:  # the database is down at shutdown: say what is lost
            lost = len(self._pending)
            log.error(
                "answer log %s: %d queued answers not written at shutdown: %s", self.describe(), lost, exc
            )
        self._close()

    @abc.abstractmethod
    def _close(self) -> None: ...

    # --- retention -------------------------------------------------------------------------

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete answers and feedback older than the retention; return how many rows went."""
        return self._prune(_epoch(now) - self.retention.total_seconds())

    @abc.abstractmethod
    def _prune(self, cutoff: float) -> int: ...

    # --- the answer log ----------------------------------------------------------------------

    def record_answer(
        self,
        completion_id: str,
        route: str,
        version: str,
        answer: str,
        label: str | None,
        created_at: dt.datetime | None = None,
        *,
        input_text: str | None = None,
        system: str | None = None,
        primary_id: str | None = None,
    ) -> None:
        """Queue one answer (cheap: no I/O). `label` is the label the answer named, if any."""
        digest = None
        if input_text is not None:
            digest = hashlib.sha256(((system or "") + "\0" + input_text).encode()).hexdigest()
            if not self.log_inputs:
                input_text = system = None
        limit = self.max_answer_chars
        row: AnswerRow = (
            completion_id,
            route,
            version,
            answer[:limit],
            label,
            _epoch(created_at),
            None if input_text is None else input_text[:limit],
            None if system is None else system[:limit],
            digest,
            primary_id,
        )
        dropped = 0
        with self._pending_lock:
            self._pending.append(row)
            if len(self._pending) > self.max_pending:
                # The database is down or far behind: keep memory bounded and say so.
                self._pending.popleft()
                dropped = 1
                self.dropped_answers += 1
            wake = len(self._pending) >= 1000
        if dropped:
            if self._on_drop is not None:
                self._on_drop(dropped)
            if self.dropped_answers == dropped or self.dropped_answers % 10_000 < dropped:
                log.error(
                    "answer log %s: queue full (%d answers), dropping the oldest; %d dropped so far",
                    self.describe(),
                    self.max_pending,
                    self.dropped_answers,
                )
        if wake:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record_drift_window(
        self, replica: str, route: str, version: str, counts: Mapping[tuple[str, int], int], at: float
    ) -> None:
        """Queue the current counts of one process's drift window (cheap: no I/O; a newer one
        replaces one not yet written)."""
        with self._pending_lock:
            self._pending_drift[(replica, route, version)] = (dict(counts), at)

    def flush(self) -> None:
        """Write every queued answer (a completion id already stored is kept) and drift count.

        Returns only once what was queued before the call is written, even if the flusher thread
        took it first. On a failure it goes back to the front of the queue.
        """
        with self._flush_lock:
            with self._pending_lock:
                rows, self._pending = list(self._pending), collections.deque()
                drift, self._pending_drift = self._pending_drift, {}
            if not rows and not drift:
                return
            try:
                if drift:
                    self._write_drift(
                        [
                            (*key, f, b, n, at)
                            for key, (counts, at) in drift.items()
                            for (f, b), n in counts.items()
                        ]
                    )
                    drift = {}
                if rows:
                    self._write(rows)
            except BaseException:
                with self._pending_lock:
                    for key, value in drift.items():
                        self._pending_drift.setdefault(key, value)  # unless a newer one came
                    # Back in front, the oldest dropped past max_pending: O(rows), not O(queue).
                    overflow = max(0, len(self._pending) + len(rows) - self.max_pending)
                    self._pending.extendleft(reversed(rows[overflow:]))
                    if overflow > len(rows):
                        for _ in range(overflow - len(rows)):
                            self._pending.popleft()
                    self.dropped_answers += overflow
                if overflow > 0 and self._on_drop is not None:
                    self._on_drop(overflow)
                raise

    @abc.abstractmethod
    def _write(self, rows: list[AnswerRow]) -> None: ...

    @abc.abstractmethod
    def _write_drift(self, rows: list[DriftRow]) -> None:
        """Set each row's count for its (replica, route, version, feature, bin)."""

    @abc.abstractmethod
    def pooled_drift(self, route: str, version: str, since: float) -> dict[tuple[str, int], int]:
        """(feature, bin) -> the sum of every replica's window updated since `since` (epoch seconds)."""

    def _flush_loop(self) -> None:
        delay = self.flush_interval_s
        while not self._closed.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}".strip()
                if message != self._failing:
                    log.error(
                        "answer log %s: writing failed, %d answers queued (kept up to %d): %s",
                        self.describe(),
                        len(self._pending),
                        self.max_pending,
                        message,
                    )
                self._failing = message
                delay = min(5.0, max(delay * 2, self.flush_interval_s))  # back off while it is down
                continue
            if self._failing is not None:
                log.info("answer log %s: writing again; the queue is written", self.describe())
                self._failing = None
            delay = self.flush_interval_s

    @abc.abstractmethod
    def _answer(self, completion_id: str) -> AnswerRecord | None: ...

    @abc.abstractmethod
    def _shadows_of(self, completion_id: str) -> list[AnswerRecord]: ...

    def answer(self, completion_id: str) -> AnswerRecord | None:
        """The logged answer with this id, or None. Flushes this process's queue first."""
        self.flush()
        return self._answer(completion_id)

    def _await_answer(self, completion_id: str) -> AnswerRecord:
        found = self.answer(completion_id)
        # Another worker or replica may still hold the answer in its queue: give it a flush or two.
        deadline = time.monotonic() + self.lookup_grace_s
        while found is None and time.monotonic() < deadline:
            time.sleep(min(0.05, self.lookup_grace_s))
            found = self._answer(completion_id)
        if found is None:
            raise UnknownCompletionError(completion_id)
        return found

    # --- feedback ----------------------------------------------------------------------------

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
        calls for one completion id, in any number of processes, exactly one creates it. With a
        label, the shadow's answers to the same request get their verdict too.
        """
        if (label is None) == (correct is None):
            raise InvalidFeedbackError(
                "give exactly one of `label` (the right answer) or `correct` (true/false)",
                hint='for example {"label": "card_arrival"} or {"correct": false}',
            )
        answer = self._await_answer(completion_id)
        verdict = _verdict(answer, label) if label is not None else bool(correct)
        record = FeedbackRecord(
            completion_id,
            answer.route,
            answer.version,
            answer.label,
            label,
            verdict,
            source,
            utc(time.time()),
        )
        stored = self._insert_feedback(record)
        if stored is None:
            if label is not None:
                for shadow in self._shadows_of(completion_id):
                    self._insert_feedback(
                        FeedbackRecord(
                            shadow.completion_id,
                            shadow.route,
                            shadow.version,
                            shadow.label,
                            label,
                            _verdict(shadow, label),
                            SHADOW_SOURCE + completion_id,
                            record.received_at,
                        )
                    )
            return record, True
        same_labels = label is None or stored.label is None or match_label(label, [stored.label]) is not None
        if stored.correct != verdict or not same_labels:
            raise FeedbackConflictError(
                completion_id, _describe(stored.label, stored.correct), _describe(label, verdict)
            )
        return stored, False

    @abc.abstractmethod
    def _insert_feedback(self, record: FeedbackRecord) -> FeedbackRecord | None:
        """Insert `record` unless its completion id has feedback: then return the stored one."""

    @abc.abstractmethod
    def feedback(self, completion_id: str) -> FeedbackRecord | None: ...

    @abc.abstractmethod
    def rolling(self, route: str, version: str, last_n: int) -> tuple[int, int]:
        """(correct, total) over the last `last_n` verdicts received for a version."""

    @abc.abstractmethod
    def versions_with_feedback(self) -> list[tuple[str, str]]:
        """Every (route, version) with at least one verdict, sorted."""

    @abc.abstractmethod
    def labelled(
        self,
        route: str | None = None,
        version: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        corrected_only: bool = False,
    ) -> list[LabelledAnswer]:
        """The answers with feedback (shadows' derived verdicts aside), oldest verdict first;
        `corrected_only`: only those judged wrong."""


def _verdict(answer: AnswerRecord, label: str) -> bool:
    said = answer.label if answer.label is not None else answer.answer
    return match_label(said, [label]) is not None


def _describe(label: str | None, correct: bool) -> str:
    verdict = "correct" if correct else "incorrect"
    return f"label '{label}', {verdict}" if label is not None else verdict


def check_last_n(last_n: int) -> None:
    if last_n < 1:
        raise ValueError(f"`last_n` should be at least 1, got {last_n}")
