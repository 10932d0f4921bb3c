"""The answer log and feedback in one SQLite file: the default on one machine, shared by its workers.

    answers  (completion_id PK, route, version, answer, label, created_at, input, system,
              input_sha256, primary_id)
    feedback (seq PK, completion_id UNIQUE, route, version, answer_label, label, correct, source,
              received_at)

WAL mode lets several processes read while one writes; writers wait on each other (busy timeout).
The schema is versioned (PRAGMA user_version) and migrated on open; a file with tables lorafleet
did not write, or written by a newer lorafleet, is refused and left as it is.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from monitor.errors import StoreSchemaError
from monitor.feedback.store import (
    SHADOW_SOURCE,
    AnswerRecord,
    AnswerRow,
    DriftRow,
    FeedbackRecord,
    FeedbackStore,
    LabelledAnswer,
    check_last_n,
    utc,
)

SCHEMA_VERSION = 3
_MIGRATIONS = {
    1: """
CREATE TABLE answers (
    completion_id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    version TEXT NOT NULL,
    answer TEXT NOT NULL,
    label TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX answers_created ON answers (created_at);
CREATE TABLE feedback (
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
CREATE INDEX feedback_version ON feedback (route, version, seq);
CREATE INDEX feedback_received ON feedback (received_at);
""",
    2: """
ALTER TABLE answers ADD COLUMN input TEXT;
ALTER TABLE answers ADD COLUMN system TEXT;
ALTER TABLE answers ADD COLUMN input_sha256 TEXT;
ALTER TABLE answers ADD COLUMN primary_id TEXT;
CREATE INDEX answers_primary ON answers (primary_id) WHERE primary_id IS NOT NULL;
""",
    3: """
CREATE TABLE drift_windows (
    replica TEXT NOT NULL,
    route TEXT NOT NULL,
    version TEXT NOT NULL,
    feature TEXT NOT NULL,
    bin INTEGER NOT NULL,
    count INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (replica, route, version, feature, bin)
);
CREATE INDEX drift_windows_version ON drift_windows (route, version, updated_at);
""",
}
_ANSWER_COLUMNS = (
    "completion_id, route, version, answer, label, created_at, input, system, input_sha256, primary_id"
)
_FEEDBACK_COLUMNS = "completion_id, route, version, answer_label, label, correct, source, received_at"


def _answer(row: Any) -> AnswerRecord:
    return AnswerRecord(row[0], row[1], row[2], row[3], row[4], utc(row[5]), row[6], row[7], row[8], row[9])


def _feedback(row: Any) -> FeedbackRecord:
    return FeedbackRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], utc(row[7]))


class SqliteFeedbackStore(FeedbackStore):
    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the caller's thread and the flusher, serialised by _db_lock;
        # autocommit mode with explicit transactions.
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db_lock = threading.Lock()
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise
        self._start()

    def describe(self) -> str:
        return str(self.path)

    def _migrate(self) -> None:
        with self._db_lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
                tables = {
                    r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                tables.discard("sqlite_sequence")
                if version == 0 and tables:
                    raise StoreSchemaError(
                        f"{self.path} holds tables lorafleet did not write ({', '.join(sorted(tables))}): refused, untouched",
                        hint="point the gateway at a new file (state_dir), or move this one away",
                    )
                if version > SCHEMA_VERSION:
                    raise StoreSchemaError(
                        f"{self.path} has schema version {version}, newer than this lorafleet's {SCHEMA_VERSION}",
                        hint="upgrade lorafleet, or point it at another file",
                    )
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in filter(str.strip, _MIGRATIONS[step].split(";")):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={step}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _close(self) -> None:
        with self._db_lock:
            self._db.close()

    def _transaction(self, work: Any) -> Any:
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return result

    def _prune(self, cutoff: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            n = db.execute("DELETE FROM answers WHERE created_at < ?", (cutoff,)).rowcount
            n += db.execute("DELETE FROM drift_windows WHERE updated_at < ?", (cutoff,)).rowcount
            return n + db.execute("DELETE FROM feedback WHERE received_at < ?", (cutoff,)).rowcount

        return int(self._transaction(delete))

    def _write(self, rows: list[AnswerRow]) -> None:
        self._transaction(
            lambda db: db.executemany(
                f"INSERT OR IGNORE INTO answers ({_ANSWER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        )

    def _write_drift(self, rows: list[DriftRow]) -> None:
        self._transaction(
            lambda db: db.executemany(
                "INSERT INTO drift_windows (replica, route, version, feature, bin, count, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (replica, route, version, feature, bin)"
                " DO UPDATE SET count = excluded.count, updated_at = excluded.updated_at",
                rows,
            )
        )

    def pooled_drift(self, route: str, version: str, since: float) -> dict[tuple[str, int], int]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT feature, bin, SUM(count) FROM drift_windows WHERE route = ? AND version = ?"
                " AND updated_at >= ? GROUP BY feature, bin",
                (route, version, since),
            ).fetchall()
        return {(r[0], int(r[1])): int(r[2]) for r in rows}

    def _answer(self, completion_id: str) -> AnswerRecord | None:
        with self._db_lock:
            row = self._db.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE completion_id = ?", (completion_id,)
            ).fetchone()
        return None if row is None else _answer(row)

    def _shadows_of(self, completion_id: str) -> list[AnswerRecord]:
        with self._db_lock:
            rows = self._db.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE primary_id = ?", (completion_id,)
            ).fetchall()
        return [_answer(r) for r in rows]

    def _insert_feedback(self, record: FeedbackRecord) -> FeedbackRecord | None:
        def insert(db: sqlite3.Connection) -> FeedbackRecord | None:
            row = db.execute(
                f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE completion_id = ?", (record.completion_id,)
            ).fetchone()
            if row is not None:
                return _feedback(row)
            r = record
            db.execute(
                f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (r.completion_id, r.route, r.version, r.answer_label, r.label, int(r.correct), r.source,
                 r.received_at.timestamp()),
            )  # fmt: skip
            return None

        stored: FeedbackRecord | None = self._transaction(insert)
        return stored

    def feedback(self, completion_id: str) -> FeedbackRecord | None:
        with self._db_lock:
            row = self._db.execute(
                f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE completion_id = ?", (completion_id,)
            ).fetchone()
        return None if row is None else _feedback(row)

    def rolling(self, route: str, version: str, last_n: int) -> tuple[int, int]:
        check_last_n(last_n)
        with self._db_lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(correct), 0), COUNT(*) FROM (SELECT correct FROM feedback"
                " WHERE route = ? AND version = ? ORDER BY seq DESC LIMIT ?)",
                (route, version, last_n),
            ).fetchone()
        return int(row[0]), int(row[1])

    def versions_with_feedback(self) -> list[tuple[str, str]]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT DISTINCT route, version FROM feedback ORDER BY route, version"
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def labelled(
        self,
        route: str | None = None,
        version: str | None = None,
        since: Any = None,
        until: Any = None,
        corrected_only: bool = False,
    ) -> list[LabelledAnswer]:
        self.flush()
        where = ["(f.source IS NULL OR f.source NOT LIKE ?)"]
        args: list[Any] = [SHADOW_SOURCE + "%"]
        for column, value in (("f.route", route), ("f.version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("f.received_at >= ?")
            args.append(since.timestamp())
        if until is not None:
            where.append("f.received_at < ?")
            args.append(until.timestamp())
        if corrected_only:
            where.append("f.correct = 0")
        columns = (
            ", ".join(f"a.{c.strip()}" for c in _ANSWER_COLUMNS.split(","))
            + ", "
            + ", ".join(f"f.{c.strip()}" for c in _FEEDBACK_COLUMNS.split(","))
        )
        with self._db_lock:
            rows = self._db.execute(
                f"SELECT {columns} FROM feedback f JOIN answers a ON a.completion_id = f.completion_id"
                f" WHERE {' AND '.join(where)} ORDER BY f.seq",
                args,
            ).fetchall()
        return [LabelledAnswer(_answer(r[:10]), _feedback(r[10:])) for r in rows]
