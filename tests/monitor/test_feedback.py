"""The answer log and feedback store on both backends, a real SQLite file and a real PostgreSQL
server, across restarts and processes."""

import datetime as dt
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.accuracy import restore_live_accuracy
from monitor.errors import FeedbackConflictError, InvalidFeedbackError, UnknownCompletionError
from monitor.feedback import FeedbackOutcome, FeedbackStore, open_store
from monitor.metrics import build_metrics
from tests.support import PostgresServer, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
LORAFLEET = Path(sys.executable).parent / "lorafleet"
V1 = "banking-v1-20261124"
V2 = "banking-v2-20261201"


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a new SQLite file, or a new database of the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.sqlite3")
    return str(request.getfixturevalue("postgres").new_database())


@pytest.fixture
def store(target: str) -> Iterator[FeedbackStore]:
    with open_store(target, lookup_grace_s=0) as s:
        yield s


def test_feedback_right_after_the_answer(store: FeedbackStore) -> None:
    store.record_answer("chatcmpl-1", "banking", V1, "card_arrival", "card_arrival")
    # No flush and no wait: the lookup writes this process's queue first.
    record, created = store.add_feedback("chatcmpl-1", label="Card_Arrival", source="agent")
    assert created is True
    assert record.correct is True
    assert record.outcome is FeedbackOutcome.CORRECT
    assert (record.route, record.version, record.answer_label, record.source) == (
        "banking",
        V1,
        "card_arrival",
        "agent",
    )


def test_correctness_is_derived_from_the_label(store: FeedbackStore) -> None:
    store.record_answer("a", "banking", V1, "card_arrival", "card_arrival")
    store.record_answer("b", "banking", V1, "I think you want to change your PIN.", None)
    store.record_answer("c", "banking", V1, " change_pin. ", "change_pin")
    assert store.add_feedback("a", label="change_pin")[0].correct is False
    assert store.add_feedback("b", label="change_pin")[0].correct is False  # a sentence is not the label
    assert store.add_feedback("c", label="change_pin")[0].correct is True
    assert store.add_feedback("c", correct=True)[0].label == "change_pin"  # consistent: the stored record


def test_verdicts_without_label(store: FeedbackStore) -> None:
    store.record_answer("summary-1", "summaries", V1, "A long summary.", None)
    record, _ = store.add_feedback("summary-1", correct=False, source="thumbs")
    assert (record.correct, record.label, record.outcome) == (False, None, FeedbackOutcome.INCORRECT)


def test_feedback_is_idempotent_and_append_only(store: FeedbackStore) -> None:
    store.record_answer("x", "banking", V1, "card_arrival", "card_arrival")
    first, created = store.add_feedback("x", label="card_arrival")
    assert created
    assert store.add_feedback("x", label="card_arrival ") == (first, False)
    assert store.add_feedback("x", correct=True) == (first, False)
    with pytest.raises(FeedbackConflictError, match="already has feedback"):
        store.add_feedback("x", label="change_pin")
    with pytest.raises(FeedbackConflictError):
        store.add_feedback("x", correct=False)
    assert store.feedback("x") == first


def test_bad_feedback_is_refused(store: FeedbackStore) -> None:
    with pytest.raises(UnknownCompletionError, match="nope"):
        store.add_feedback("nope", correct=True)
    store.record_answer("y", "banking", V1, "card_arrival", "card_arrival")
    with pytest.raises(InvalidFeedbackError):
        store.add_feedback("y")
    with pytest.raises(InvalidFeedbackError):
        store.add_feedback("y", label="card_arrival", correct=True)
    assert store.feedback("y") is None


def test_rolling_counts_the_last_verdicts_of_a_version(store: FeedbackStore) -> None:
    verdicts = [True, False, True, True, False]
    for i, ok in enumerate(verdicts):
        store.record_answer(f"v1-{i}", "banking", V1, "card_arrival", "card_arrival")
        store.add_feedback(f"v1-{i}", correct=ok)
    store.record_answer("v2-0", "banking", V2, "card_arrival", "card_arrival")
    store.add_feedback("v2-0", label="card_arrival")
    assert store.rolling("banking", V1, last_n=100) == (3, 5)
    assert store.rolling("banking", V1, last_n=3) == (2, 3)  # True, True, False
    assert store.rolling("banking", V2, last_n=10) == (1, 1)
    assert store.rolling("other", V1, last_n=10) == (0, 0)
    assert store.versions_with_feedback() == [("banking", V1), ("banking", V2)]


def test_everything_survives_a_restart(target: str) -> None:
    path = target
    with open_store(path) as first:
        first.record_answer("p", "banking", V1, "card_arrival", "card_arrival")
        first.record_answer("q", "banking", V1, "change_pin", "change_pin")  # never looked up: queued only
        stored, _ = first.add_feedback("p", label="card_arrival")
    with open_store(path, lookup_grace_s=0) as second:
        assert second.feedback("p") == stored
        answer = second.answer("q")
        assert answer is not None and answer.label == "change_pin"
        assert second.add_feedback("q", label="cancel_transfer")[0].correct is False
        assert second.rolling("banking", V1, 10) == (1, 2)


def test_the_background_thread_writes_the_queue(target: str, caplog: pytest.LogCaptureFixture) -> None:
    path = target
    with (
        open_store(path, flush_interval_s=0.05) as writer,
        open_store(path, lookup_grace_s=0) as reader,
    ):
        for request_id in ("bg0", "bg1", "bg2"):  # batch after batch: the writer never backs off
            writer.record_answer(request_id, "banking", V1, "card_arrival", "card_arrival")

            def written(request_id: str = request_id) -> bool:
                return reader.answer(request_id) is not None

            wait_until(written, 10, f"answer {request_id} to be written")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_old_rows_are_pruned_on_open(target: str) -> None:
    path = target
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)  # past the default 14 days
    with open_store(path) as s:
        s.record_answer("old", "banking", V1, "card_arrival", "card_arrival", created_at=old)
        s.record_answer("new", "banking", V1, "card_arrival", "card_arrival")
    with open_store(path, lookup_grace_s=0) as s:
        assert s.answer("old") is None
        assert s.answer("new") is not None
        with pytest.raises(UnknownCompletionError):
            s.add_feedback("old", correct=True)
    with open_store(path, retention=dt.timedelta(days=30)) as s:
        s.record_answer("old2", "banking", V1, "x", None, created_at=old)
    with open_store(path, retention=dt.timedelta(days=30)) as s:
        assert s.answer("old2") is not None


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from monitor.feedback import open_store

    store = open_store(sys.argv[1], flush_interval_s=0.1)
    store.record_answer("worker-1", "banking", "{version}", "card_arrival", "card_arrival")
    print("recorded", flush=True)
    sys.stdin.readline()  # stay open, answer still queued or written by the flusher, until told
    store.close()
    """
)


def test_two_gateway_workers_share_one_store(target: str) -> None:
    """An answer logged by one worker process takes feedback in another, while both are open."""
    path = target
    with open_store(path, lookup_grace_s=10) as here:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER.format(version=V1), str(path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert worker.stdout is not None and worker.stdin is not None
            assert worker.stdout.readline().strip() == "recorded"
            record, _ = here.add_feedback("worker-1", label="card_arrival", source="worker-test")
            assert record.correct and record.version == V1
            worker.stdin.write("\n")
            worker.stdin.flush()
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    with open_store(path) as again:
        assert again.rolling("banking", V1, 10) == (1, 1)


CONCURRENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from monitor.feedback import open_store

    with open_store(sys.argv[1], lookup_grace_s=10) as store:
        print("ready", flush=True)
        sys.stdin.readline()  # all start together
        record, created = store.add_feedback("dup", correct=True, source=sys.argv[2])
        print(created, flush=True)
    """
)


def test_concurrent_duplicate_feedback_is_created_once(target: str) -> None:
    """Several gateway workers get the same verdict at once: exactly one of them counts it."""
    path = target
    with open_store(path) as store:
        store.record_answer("dup", "banking", V1, "card_arrival", "card_arrival")
        store.flush()
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", CONCURRENT, str(path), f"worker-{i}"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        try:
            for w in workers:
                assert w.stdout is not None and w.stdout.readline().strip() == "ready"
            for w in workers:
                assert w.stdin is not None
                w.stdin.write("\n")
                w.stdin.flush()
            created = [w.communicate(timeout=60)[0].strip() for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        assert [w.returncode for w in workers] == [0, 0, 0, 0]
        assert sorted(created) == ["False", "False", "False", "True"]
        assert store.rolling("banking", V1, 10) == (1, 1)


def test_live_accuracy_gauges_are_restored_from_the_store(target: str) -> None:
    path = target
    with open_store(path, lookup_grace_s=0) as first:
        for i, ok in enumerate([True, True, False, True]):
            first.record_answer(f"v1-{i}", "banking", V1, "card_arrival", "card_arrival")
            first.add_feedback(f"v1-{i}", correct=ok)
        first.record_answer("v2-0", "banking", V2, "card_arrival", "card_arrival")
        first.add_feedback("v2-0", correct=False)
    # A restarted gateway: fresh gauges, the same file. V2 is no longer live; v3 has no feedback.
    registry = CollectorRegistry()
    metrics = build_metrics(registry)
    with open_store(path) as second:
        live = [("banking", V1), ("banking", "banking-v3-20261215")]
        restored = restore_live_accuracy(second, metrics, live, last_n=500)
        assert restored == {("banking", V1): (3, 4)}
        assert restore_live_accuracy(second, build_metrics(CollectorRegistry()), live, last_n=2) == {
            ("banking", V1): (1, 2)  # the last two verdicts: False, True
        }

    def gauge(name: str, version: str) -> float | None:
        return registry.get_sample_value(name, {"route": "banking", "version": version})

    # 3 of 4: Wilson 95% interval by hand, z = 1.96, z^2 = 3.8416:
    #   centre = (0.75 + 3.8416 / 8) / (1 + 3.8416 / 4) = 1.2302 / 1.9604 = 0.62753
    #   half   = 1.96 / 1.9604 * sqrt(0.75 * 0.25 / 4 + 3.8416 / 64) = 0.99980 * 0.32696 = 0.32689
    assert gauge("lorafleet_live_accuracy_ratio", V1) == 0.75
    assert gauge("lorafleet_live_accuracy_lower_ratio", V1) == pytest.approx(0.30064, abs=1e-4)
    assert gauge("lorafleet_live_accuracy_upper_ratio", V1) == pytest.approx(0.95442, abs=1e-4)
    assert gauge("lorafleet_live_accuracy_ratio", V2) is None
    assert gauge("lorafleet_live_accuracy_ratio", "banking-v3-20261215") is None


def test_inputs_are_kept_or_only_hashed_and_exported_with_their_verdict(target: str) -> None:
    with open_store(target, lookup_grace_s=0) as kept:
        kept.record_answer(
            "k", "banking", V1, "card_arrival", "card_arrival", input_text="Where is my card?", system="S"
        )
        kept.add_feedback("k", label="card_arrival")
    with open_store(target, lookup_grace_s=0, log_inputs=False) as hashed:
        hashed.record_answer(
            "h", "banking", V1, "change_pin", "change_pin", input_text="New PIN please", system="S"
        )
        hashed.add_feedback("h", label="cancel_transfer")
        rows = {r.answer.completion_id: r for r in hashed.labelled(route="banking")}
    assert (rows["k"].answer.input, rows["k"].answer.system) == ("Where is my card?", "S")
    assert rows["h"].answer.input is None and rows["h"].answer.system is None
    assert rows["h"].answer.input_sha256 is not None and len(rows["h"].answer.input_sha256) == 64
    assert rows["h"].feedback.correct is False and rows["h"].feedback.label == "cancel_transfer"
    with open_store(target) as again:
        assert [r.answer.completion_id for r in again.labelled(corrected_only=True)] == ["h"]


def test_feedback_with_a_label_also_scores_the_shadow_answer(store: FeedbackStore) -> None:
    store.record_answer("p", "banking", V1, "card_arrival", "card_arrival")
    store.record_answer("s", "banking", V2, "change_pin", "change_pin", primary_id="p")
    store.add_feedback("p", label="change_pin")
    shadow = store.feedback("s")
    assert shadow is not None and shadow.correct is True and shadow.source == "shadow-of:p"
    assert store.rolling("banking", V2, 10) == (1, 1) and store.rolling("banking", V1, 10) == (0, 1)
    assert [r.answer.completion_id for r in store.labelled()] == ["p"]  # derived verdicts are not exported


def test_a_foreign_or_newer_schema_is_refused_and_left_as_it_is(target: str) -> None:
    from monitor.errors import StoreSchemaError

    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("CREATE TABLE feedback (id INTEGER)")
            conn.execute("INSERT INTO feedback VALUES (42)")
        with pytest.raises(StoreSchemaError, match="feedback that lorafleet did not create"):
            open_store(target)
        with psycopg.connect(target, autocommit=True) as conn:
            assert conn.execute("SELECT id FROM feedback").fetchall() == [(42,)]
    else:
        import sqlite3

        with sqlite3.connect(target) as db:
            db.execute("CREATE TABLE notes (text TEXT)")
        with pytest.raises(StoreSchemaError, match="tables lorafleet did not write"):
            open_store(target)
        newer = target + ".newer"
        with sqlite3.connect(newer) as db:
            db.execute("PRAGMA user_version=99")
        with pytest.raises(StoreSchemaError, match="schema version 99"):
            open_store(newer)


def test_a_wrong_or_unreachable_database_url_stops_the_gateway_in_one_line(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """`lorafleet gateway` on a database URL that cannot work: one `error:` line naming the URL
    without its password, a `hint:` with the fix, exit 1, and the password nowhere in the output."""
    nobody = free_port()
    cases = {
        f"postgresql://lorafleet:s3cret@127.0.0.1:{nobody}/feedback": (
            f"postgresql://lorafleet:***@127.0.0.1:{nobody}/feedback"
        ),
        # the server is up, the database is not there
        f"postgresql://lorafleet:s3cret@127.0.0.1:{postgres.port}/no_such_db": (
            f"postgresql://lorafleet:***@127.0.0.1:{postgres.port}/no_such_db"
        ),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env["LORAFLEET_HOME"] = str(tmp_path)
    for url, shown in cases.items():
        env["LORAFLEET_ROUTER_FEEDBACK__URL"] = url
        proc = subprocess.run(
            [LORAFLEET, "gateway", "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        errors = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "hint:"))]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert errors[0].startswith(f"error: cannot connect to the feedback database {shown}: "), proc.stderr
        assert errors[1].startswith("hint: check LORAFLEET_ROUTER_FEEDBACK__URL"), proc.stderr
        assert "s3cret" not in proc.stderr + proc.stdout


def test_a_full_queue_drops_the_oldest_answers_and_a_failed_write_keeps_the_newest(tmp_path: Path) -> None:
    """The queue is bounded by max_pending: while the database is down or behind, the oldest
    answers go (counted); a write that fails puts its answers back before the ones queued since."""
    drops: list[int] = []
    with open_store(
        tmp_path / "feedback.sqlite3", max_pending=3, flush_interval_s=3600, on_drop=drops.append
    ) as s:
        for i in range(5):
            s.record_answer(f"c{i}", "banking", V1, "card_arrival", "card_arrival")
        assert s.pending == 3 and s.dropped_answers == 2 and drops == [1, 1]
        write = s._write  # the database goes down during a write, while two more answers come

        def failing(rows: list[Any]) -> None:
            s.record_answer("c5", "banking", V1, "x", None)
            s.record_answer("c6", "banking", V1, "x", None)
            raise OSError("database is down")

        s._write = failing  # type: ignore[method-assign]
        with pytest.raises(OSError, match="down"):
            s.flush()
        assert s.pending == 3 and s.dropped_answers == 4 and drops == [1, 1, 2]
        s._write = write  # type: ignore[method-assign]
        s.flush()
        assert [s.answer(f"c{i}") is not None for i in range(7)] == [False] * 4 + [True] * 3


def test_a_batch_keeps_every_field_exactly_and_the_first_of_a_repeated_id(store: FeedbackStore) -> None:
    when = dt.datetime(2026, 12, 4, 12, 0, 0, 123456, tzinfo=dt.UTC)
    store.record_answer("r1", "banking", V1, 'carte arrivée 🃏 "quoted"\n', None, when, input_text="où ?")
    store.record_answer("r1", "banking", V2, "second", "card_arrival", when)  # same id, same batch
    store.record_answer("r2", "banking", V1, "x", "card_arrival", when, system="sys", primary_id="r1")
    first, second = store.answer("r1"), store.answer("r2")
    assert first is not None and second is not None
    assert (first.version, first.answer, first.label) == (V1, 'carte arrivée 🃏 "quoted"\n', None)
    assert first.created_at == when and first.input == "où ?" and first.system is None
    assert (second.system, second.primary_id, second.label) == ("sys", "r1", "card_arrival")
