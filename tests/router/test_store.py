"""The routes file store: atomic writes, optimistic concurrency, a crash mid-write, the history."""

import asyncio
import datetime as dt
import logging
import multiprocessing as mp
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from router.errors import StaleRevisionError
from router.policy import Route, RoutesFile
from router.store import FileStore, HistoryEvent

V1, V2 = "banking-v1-20261124", "banking-v2-20261125"


def _routes(stable: str = V1) -> RoutesFile:
    return RoutesFile(routes={"banking": Route(stable=stable)})


def test_save_bumps_the_revision_and_refuses_a_stale_one(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "routes.yaml")
    first = store.save(_routes(), expected_revision=0)
    assert first.revision == 1 and store.load() == first
    with pytest.raises(StaleRevisionError) as err:
        store.save(_routes(V2), expected_revision=0)
    assert err.value.status == 409
    assert store.load().routes["banking"].stable == V1


def _write_at_revision(path: str, stable: str, start: "mp.synchronize.Event", out: "mp.Queue[str]") -> None:
    store = FileStore(Path(path))
    start.wait()
    try:
        store.save(RoutesFile(routes={"banking": Route(stable=stable)}), expected_revision=1)
        out.put("ok")
    except StaleRevisionError:
        out.put("409")


def test_two_concurrent_writers_one_wins_one_gets_409(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    FileStore(path).save(_routes(), expected_revision=0)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_write_at_revision, args=(str(path), v, start, out)) for v in (V1, V2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(30)
    assert sorted([out.get(timeout=5), out.get(timeout=5)]) == ["409", "ok"]
    assert FileStore(path).load().revision == 2


def test_a_crash_between_the_temporary_write_and_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    FileStore(path).save(_routes(), expected_revision=0)
    before = path.read_bytes()
    # Fault injection: the writer process dies (SIGKILL) right before os.replace would publish its file.
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from router.policy import Route, RoutesFile
        from router.store import FileStore
        os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        FileStore(Path({str(path)!r})).save(RoutesFile(routes={{"banking": Route(stable={V2!r})}}), 1)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    loaded = FileStore(path).load()
    assert loaded.revision == 1 and loaded.routes["banking"].stable == V1
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the torn temporary file, never read
    assert FileStore(path).save(_routes(V2), expected_revision=1).revision == 2


def test_history_is_append_only_and_filtered_by_route(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "routes.yaml")
    now = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    for i, route in enumerate(["banking", "other", "banking"]):
        store.append_history(HistoryEvent(at=now, route=route, action="promote", actor="ops", revision=i))
    assert [e.revision for e in store.history("banking")] == [0, 2]
    assert len(store.history()) == 3
    assert store.history_path.stat().st_size > 0


def test_a_write_keeps_the_file_mode(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "routes.yaml")
    store.save(_routes(), expected_revision=0)
    assert store.path.stat().st_mode & 0o777 == 0o644
    store.path.chmod(0o640)
    store.save(_routes(V2), expected_revision=1)
    assert store.path.stat().st_mode & 0o777 == 0o640


def test_the_controller_logs_an_invalid_routes_file_once_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import CollectorRegistry

    from lorafleet.registry import Registry
    from monitor.signals import LocalSignals
    from router.controller import Controller, LocalGateSource
    from router.rollout import Rollouts

    routes = tmp_path / "routes.yaml"
    routes.write_text("routes: [")
    rollouts = Rollouts(FileStore(routes), Registry(tmp_path / "registry"))
    controller = Controller(rollouts, LocalGateSource(LocalSignals(CollectorRegistry())))

    async def run() -> None:
        task = asyncio.create_task(controller.run(0.01))
        await asyncio.sleep(0.3)
        routes.write_text("routes: {}\n")
        await asyncio.sleep(0.2)
        task.cancel()

    with caplog.at_level(logging.INFO, logger="lorafleet.rollout"):
        asyncio.run(run())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "not valid YAML" in errors[0].getMessage() and errors[0].exc_info is None
    assert any("resumed" in r.getMessage() for r in caplog.records)
