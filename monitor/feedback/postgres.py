"""The answer log and feedback in PostgreSQL: one store for every gateway replica of a fleet.

    LORAFLEET_ROUTER_FEEDBACK__URL=postgresql://USER:PASSWORD@HOST:5432/DB

The same tables as the SQLite backend (monitor/feedback/sqlite.py), and `lorafleet_schema`, which
records the migrations applied: they run at start-up, under an advisory lock, so replicas starting
together apply each once. A database with tables named like ours that `lorafleet_schema` does not
account for, or a newer schema, is refused and left as it is.

Driver: psycopg 3, measured against asyncpg on the answer log's batched inserts (2026-12-03, this
machine, PostgreSQL 15 on loopback, 1,000-row batches): asyncpg's executemany ~50,000 rows/s,
psycopg's ~20,000; both several times what one gateway replica answers (at most ~5,000 requests/s
on a core), and psycopg keeps the same model as the SQLite backend: blocking calls from the
flusher thread and from `asyncio.to_thread`, one connection under a lock. A connection that broke
(the database restarted) is replaced on the next call; while the database is down, calls raise
StoreUnavailableError and the answers wait in the queue (store.py).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from monitor.errors import StoreSchemaError, StoreUnavailableError
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

SCHEMA_VERSION = 2
_LOCK_KEY = 0x6C6F7261  # "lora": the advisory lock of migrations
_MIGRATIONS = {
    1: [
        """CREATE TABLE answers (
            completion_id TEXT PRIMARY KEY,
            route TEXT NOT NULL,
            version TEXT NOT NULL,
            answer TEXT NOT NULL,
            label TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            input TEXT,
            system TEXT,
            input_sha256 TEXT,
            primary_id TEXT
        )""",
        "CREATE INDEX answers_created ON answers (created_at)",
        "CREATE INDEX answers_primary ON answers (primary_id) WHERE primary_id IS NOT NULL",
        """CREATE TABLE feedback (
            seq BIGSERIAL PRIMARY KEY,
            completion_id TEXT NOT NULL UNIQUE,
            route TEXT NOT NULL,
            version TEXT NOT NULL,
            answer_label TEXT,
            label TEXT,
            correct BOOLEAN NOT NULL,
            source TEXT,
            received_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX feedback_version ON feedback (route, version, seq)",
        "CREATE INDEX feedback_received ON feedback (received_at)",
    ],
    2: [
        """CREATE TABLE drift_windows (
            replica TEXT NOT NULL,
            route TEXT NOT NULL,
            version TEXT NOT NULL,
            feature TEXT NOT NULL,
            bin INTEGER NOT NULL,
            count BIGINT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (replica, route, version, feature, bin)
        )""",
        "CREATE INDEX drift_windows_version ON drift_windows (route, version, updated_at)",
    ],
}
_OURS = {"answers", "feedback", "drift_windows"}
_ANSWER_COLUMNS = (
    "completion_id, route, version, answer, label, created_at, input, system, input_sha256, primary_id"
)
_FEEDBACK_COLUMNS = "completion_id, route, version, answer_label, label, correct, source, received_at"


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _answer(row: Any) -> AnswerRecord:
    return AnswerRecord(row[0], row[1], row[2], row[3], row[4], utc(row[5]), row[6], row[7], row[8], row[9])


def _feedback(row: Any) -> FeedbackRecord:
    return FeedbackRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], utc(row[7]))


class PostgresFeedbackStore(FeedbackStore):
    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None
        with self._lock:
            self._connect()
            self._migrate()
        self._start()

    def describe(self) -> str:
        return redact(self.url)

    # --- connection --------------------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        try:
            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s))
            )
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot connect to the feedback database {self.describe()}: {str(exc).strip().splitlines()[0]}",
                hint="check LORAFLEET_ROUTER_FEEDBACK__URL (postgresql://USER:PASSWORD@HOST:PORT/DB) and that "
                "the database is up and reachable",
            ) from None
        return self._conn

    def _run(self, work: Any) -> Any:
        """`work(connection)` under the lock, reconnecting once if the connection broke."""
        import psycopg

        with self._lock:
            for attempt in (0, 1):
                conn = self._conn if self._conn is not None and not self._conn.closed else self._connect()
                try:
                    return work(conn)
                except psycopg.OperationalError as exc:
                    self._conn = None
                    with_context = (
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    )
                    if attempt:
                        raise StoreUnavailableError(
                            f"the feedback database {self.describe()} failed: {with_context}",
                            hint="it is retried on the next call; answers wait in the queue meanwhile",
                        ) from None
            raise AssertionError("unreachable")

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _migrate(self) -> None:
        conn = self._conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                )
            }
            if "lorafleet_schema" not in tables:
                foreign = sorted(tables & _OURS)
                if foreign:
                    raise StoreSchemaError(
                        f"{self.describe()} already has tables named {', '.join(foreign)} that lorafleet did not "
                        "create (no lorafleet_schema table): refused, untouched",
                        hint="give lorafleet its own database, or its own schema (?options=-csearch_path%3DNAME)",
                    )
                conn.execute(
                    "CREATE TABLE lorafleet_schema (version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
            version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM lorafleet_schema").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreSchemaError(
                    f"{self.describe()} has schema version {version}, newer than this lorafleet's {SCHEMA_VERSION}",
                    hint="upgrade lorafleet, or point it at another database",
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
                conn.execute("INSERT INTO lorafleet_schema (version) VALUES (%s)", (step,))

    # --- the store ---------------------------------------------------------------------------

    def _prune(self, cutoff: float) -> int:
        def delete(conn: Any) -> int:
            with conn.transaction():
                n = conn.execute("DELETE FROM answers WHERE created_at < %s", (cutoff,)).rowcount
                return int(
                    n + conn.execute("DELETE FROM feedback WHERE received_at < %s", (cutoff,)).rowcount
                )

        return int(self._run(delete))

    def _write(self, rows: list[AnswerRow]) -> None:
        import psycopg

        def copy(conn: Any) -> None:
            # COPY: the rows go in one stream, encoded in C; several times cheaper in the gateway's
            # CPU than an INSERT per row (bench/feedback_store.py).
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY answers ({_ANSWER_COLUMNS}) FROM STDIN") as out,
            ):
                for row in rows:
                    out.write_row(row)

        def insert(conn: Any) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO answers ({_ANSWER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (completion_id) DO NOTHING",
                    rows,
                )

        try:
            self._run(copy)
        except psycopg.errors.UniqueViolation:
            # A batch written before whose commit's answer was lost (the connection broke): again,
            # skipping the rows that are there.
            self._run(insert)

    def _write_drift(self, rows: list[DriftRow]) -> None:
        def upsert(conn: Any) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO drift_windows (replica, route, version, feature, bin, count, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (replica, route, version, feature, bin)"
                    " DO UPDATE SET count = excluded.count, updated_at = excluded.updated_at",
                    rows,
                )

        self._run(upsert)

    def pooled_drift(self, route: str, version: str, since: float) -> dict[tuple[str, int], int]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT feature, bin, SUM(count) FROM drift_windows WHERE route = %s AND version = %s"
                " AND updated_at >= %s GROUP BY feature, bin",
                (route, version, since),
            ).fetchall()
        )
        return {(r[0], int(r[1])): int(r[2]) for r in rows}

    def _answer(self, completion_id: str) -> AnswerRecord | None:
        row = self._run(
            lambda conn: conn.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE completion_id = %s", (completion_id,)
            ).fetchone()
        )
        return None if row is None else _answer(row)

    def _shadows_of(self, completion_id: str) -> list[AnswerRecord]:
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE primary_id = %s", (completion_id,)
            ).fetchall()
        )
        return [_answer(r) for r in rows]

    def _insert_feedback(self, record: FeedbackRecord) -> FeedbackRecord | None:
        r = record

        def insert(conn: Any) -> Any:
            with conn.transaction():
                created = conn.execute(
                    f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (completion_id) DO NOTHING RETURNING seq",
                    (r.completion_id, r.route, r.version, r.answer_label, r.label, r.correct, r.source,
                     r.received_at.timestamp()),
                ).fetchone()  # fmt: skip
                if created is not None:
                    return None
                return conn.execute(
                    f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE completion_id = %s", (r.completion_id,)
                ).fetchone()

        row = self._run(insert)
        return None if row is None else _feedback(row)

    def feedback(self, completion_id: str) -> FeedbackRecord | None:
        row = self._run(
            lambda conn: conn.execute(
                f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE completion_id = %s", (completion_id,)
            ).fetchone()
        )
        return None if row is None else _feedback(row)

    def rolling(self, route: str, version: str, last_n: int) -> tuple[int, int]:
        check_last_n(last_n)
        row = self._run(
            lambda conn: conn.execute(
                "SELECT COALESCE(SUM(CASE WHEN correct THEN 1 ELSE 0 END), 0), COUNT(*) FROM (SELECT correct"
                " FROM feedback WHERE route = %s AND version = %s ORDER BY seq DESC LIMIT %s) AS last",
                (route, version, last_n),
            ).fetchone()
        )
        return int(row[0]), int(row[1])

    def versions_with_feedback(self) -> list[tuple[str, str]]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT DISTINCT route, version FROM feedback ORDER BY route, version"
            ).fetchall()
        )
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
        where = ["(f.source IS NULL OR f.source NOT LIKE %s)"]
        args: list[Any] = [SHADOW_SOURCE + "%"]
        for column, value in (("f.route", route), ("f.version", version)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        if since is not None:
            where.append("f.received_at >= %s")
            args.append(since.timestamp())
        if until is not None:
            where.append("f.received_at < %s")
            args.append(until.timestamp())
        if corrected_only:
            where.append("NOT f.correct")
        columns = (
            ", ".join(f"a.{c.strip()}" for c in _ANSWER_COLUMNS.split(","))
            + ", "
            + ", ".join(f"f.{c.strip()}" for c in _FEEDBACK_COLUMNS.split(","))
        )
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {columns} FROM feedback f JOIN answers a ON a.completion_id = f.completion_id"
                f" WHERE {' AND '.join(where)} ORDER BY f.seq",
                args,
            ).fetchall()
        )
        return [LabelledAnswer(_answer(r[:10]), _feedback(r[10:])) for r in rows]
