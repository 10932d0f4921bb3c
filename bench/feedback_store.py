"""Issue 16: the gateway's requests/s with its answer log on PostgreSQL against SQLite (target >= 0.95x).

    python bench/feedback_store.py              about 3 minutes: 5 rounds of 10 s per cell

Two `lorafleet gateway` processes with the same routes and defaults, in front of the same fake
upstream (bench/fakes.py, named as such: it isolates the gateway's own cost): one writes its answer
log to SQLite in its state folder (the default), the other to a throwaway PostgreSQL server
(Debian's `postgresql`, started like the tests start it). Rounds are interleaved, so both see the
same machine. Every answer is logged (the log is on the request path's side, written in batches by
a background thread); at the end the rows are counted in each store, so a store that fell behind
or dropped answers shows.

Layout: each gateway alone on its core while measured; PostgreSQL pinned with the fake upstream and
the load generator (on 2 cores: core 0), so the database's own CPU is not charged to the gateway.
SQLite's writes run inside the gateway process, on its core.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import fakes
from fakes import LoadSpec

from tests.support import PostgresServer, postgres_bin


def pin_postgres(server: PostgresServer, core: int) -> None:
    """Pin the postmaster (and so every backend it forks later) to `core`."""
    import os

    import psutil

    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(OSError, psutil.Error):
            os.sched_setaffinity(p.pid, {core})


def rows_in(target: str) -> int:
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target) as conn:
            row = conn.execute("SELECT count(*) FROM answers").fetchone()
            return int(row[0]) if row else 0
    with contextlib.closing(sqlite3.connect(target)) as conn:
        return int(conn.execute("SELECT count(*) FROM answers").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-save", dest="save", action="store_false", help="Do not write bench/results/.")
    args = parser.parse_args()
    out = fakes.Tee()
    bindir = postgres_bin()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (scripts/setup.sh installs Debian's `postgresql`)")
    layout = fakes.Layout.choose()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-bench-store-"))
    out(fakes.machine_header("answer log on PostgreSQL vs SQLite (issue 16), fake upstream"))
    out(f"layout: {layout.describe()}; PostgreSQL on core {layout.upstream}")
    pg = PostgresServer(work / "pg", Path(bindir))
    servers: list[fakes.Server] = []
    lg = fakes.LoadGenClient(layout.loadgen)
    try:
        pin_postgres(pg, layout.upstream)
        db_url = pg.new_database()
        names = fakes.register_versions(work / "registry")
        upstream, up_url = fakes.start_upstream(layout.upstream, work / "upstream.log")
        servers.append(upstream)
        routes = fakes.routes_yaml(names[0], weighted=names[1])
        stores = {"sqlite": {}, "postgres": {"LORAFLEET_ROUTER_FEEDBACK__URL": db_url}}
        targets: dict[str, tuple[fakes.Server, str]] = {}
        for name, env in stores.items():
            gw, url = fakes.start_gateway(
                layout.sut, work / name, work / "registry", up_url, routes, work / f"{name}.log", env=env
            )
            servers.append(gw)
            targets[name] = (gw, url)
        body = fakes.chat_body("bench", False)
        served = {name: 0 for name in targets}
        for name, (_, url) in targets.items():  # warm-up: connections, caches, the first flushes
            warm = lg.run(LoadSpec(url=url, body=body, stream=False, concurrency=8, duration_s=2))
            served[name] += len(warm["lat"])
        cells: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                gw, url = targets[name]
                result = lg.run(
                    LoadSpec(
                        url=url,
                        body=body,
                        stream=False,
                        concurrency=args.concurrency,
                        duration_s=args.seconds,
                    ),
                    gw,
                )
                cells[name].append(result)
                served[name] += len(result["lat"])
                rps = len(result["lat"]) / result["elapsed_s"]
                out(
                    f"round {r + 1} {name:8s}: {rps:7.0f} req/s, p50 {fakes.pct(result['lat'], 50):.2f} ms, "
                    f"p99 {fakes.pct(result['lat'], 99):.2f} ms, {result['cpu_s'] / max(1, len(result['lat'])) * 1e6:.0f} "
                    f"us CPU/request, {result['errors']} errors"
                )
        time.sleep(2)  # the last batches
        out("")
        for name in targets:
            rps = [len(c["lat"]) / c["elapsed_s"] for c in cells[name]]
            cpu = sum(c["cpu_s"] for c in cells[name]) / sum(len(c["lat"]) for c in cells[name])
            out(
                f"{name:8s}: median {statistics.median(rps):.0f} req/s, {cpu * 1e6:.0f} us gateway CPU per request"
            )
        ratios = [
            (len(p["lat"]) / p["elapsed_s"]) / (len(s["lat"]) / s["elapsed_s"])
            for p, s in zip(cells["postgres"], cells["sqlite"], strict=True)
        ]
        out(
            f"requests/s postgres / sqlite, per round: median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target >= 0.95"
        )
        sqlite_file = next((work / "sqlite").rglob("feedback.sqlite3"), None)
        for name, target in (("sqlite", str(sqlite_file)), ("postgres", db_url)):
            with contextlib.suppress(Exception):
                out(
                    f"answers in the {name} store: {rows_in(target)} of {served[name]} answered (warm-up included)"
                )
    finally:
        lg.close()
        for s in reversed(servers):
            s.stop()
        pg.remove()
    if args.save:
        print(f"saved {out.save('feedback_store')}", file=sys.stderr)


if __name__ == "__main__":
    main()
