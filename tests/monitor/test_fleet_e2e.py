"""A fleet: three gateway processes, one real vLLM engine, one PostgreSQL, a real Prometheus.

Requests are spread over the replicas and the feedback on each answer goes to a random replica.
One replica is killed with SIGKILL and restarted; the database is stopped for 10 s while traffic
flows. The fleet's numbers (`lorafleet monitor status --prometheus`) must equal those computed
offline from every request, and no client request may fail.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorafleet.registry import Registry
from lorafleet.textstats import match_label
from monitor.drift import DriftWindow
from tests.support import PostgresServer, free_port, read_demo, spawn_gateway, versions_loaded, wait_until

pytestmark = pytest.mark.engine

MAX_TOKENS = 8


@dataclass
class Served:
    completion_id: str
    replica: int
    text: str
    truth: str
    answer: str


class Fleet:
    """Three `lorafleet gateway` processes sharing one feedback database; replica 0 runs the controller."""

    def __init__(self, tmp: Path, routes: Path, registry: Registry, engine_url: str, db_url: str) -> None:
        self.tmp, self.routes, self.registry, self.engine_url = tmp, routes, registry, engine_url
        self.env = {
            "LORAFLEET_ROUTER_FEEDBACK__URL": db_url,
            "LORAFLEET_ROUTER_DRIFT_REFRESH_S": "1",
            "LORAFLEET_ROUTER_DRIFT_MIN_SAMPLES": "20",
        }
        self.ports = [free_port() for _ in range(3)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.procs: list[subprocess.Popen[bytes]] = [self._spawn(i) for i in range(3)]

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        extra = [] if i == 0 else ["--controller", "external"]
        state = self.tmp / f"state-{i}"
        state.mkdir(exist_ok=True)
        return spawn_gateway(
            self.ports[i],
            self.routes,
            self.registry.root,
            self.engine_url,
            self.tmp / f"gateway-{i}.log",
            *extra,
            env={**self.env, "LORAFLEET_ROUTER_STATE_DIR": str(state)},
        )

    def wait_ready(self, versions: list[str]) -> None:
        def ready() -> bool:
            exited = [i for i, p in enumerate(self.procs) if p.poll() is not None]
            if exited:
                raise AssertionError(f"gateways {exited} exited\n{self.logs()}")
            return all(versions_loaded(url, versions) for url in self.urls)

        try:
            wait_until(
                ready,
                timeout_s=180,
                what="three gateways with the versions loaded",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(timeout=10)

    def restart(self, i: int) -> None:
        self.procs[i] = self._spawn(i)

    def logs(self) -> str:
        return "\n".join(
            f"--- gateway {i} (exit {p.poll()}):\n{(self.tmp / f'gateway-{i}.log').read_text(errors='replace')[-3000:]}"
            for i, p in enumerate(self.procs)
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            p.wait(timeout=40)


def _ask(client: httpx.Client, url: str, route: str, text: str, user: str) -> dict[str, Any]:
    r = client.post(
        f"{url}/v1/chat/completions",
        json={
            "model": route,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "user": user,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _serve(client: httpx.Client, fleet: Fleet, replica: int, text: str, truth: str, n: int) -> Served:
    body = _ask(client, fleet.urls[replica], "banking", text, f"user-{n}")
    return Served(body["id"], replica, text, truth, body["choices"][0]["message"]["content"])


def _feedback(client: httpx.Client, url: str, completion_id: str, label: str) -> httpx.Response:
    return client.post(f"{url}/v1/feedback", json={"completion_id": completion_id, "label": label})


def _fleet_status(prometheus: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "lorafleet"),
            "monitor",
            "status",
            "--prometheus",
            prometheus,
            "--window",
            "1h",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_three_replicas_one_database_kill_restart_and_database_outage(
    engine: Any,
    trained_registry: tuple[Registry, list[str]],
    tmp_path: Path,
    postgres: PostgresServer,
    prometheus: Any,
) -> None:
    registry, (v1, v2) = trained_registry
    labels = registry.get(v1).info().labels
    assert labels
    routes = tmp_path / "routes.yaml"
    # `banking` is what the fleet's numbers are checked on; `spare` takes the answers served just
    # before the kill, whose fate (inside the crash window or not) is counted, not asserted.
    routes.write_text(f"routes:\n  banking:\n    stable: {v1}\n  spare:\n    stable: {v2}\n")
    engine.wait_healthy()
    rng = random.Random(7)
    rows = read_demo()
    rng.shuffle(rows)
    fleet = Fleet(tmp_path, routes, registry, engine.url, postgres.new_database())
    prom = prometheus([u.removeprefix("http://") for u in fleet.urls])
    served: list[Served] = []
    try:
        fleet.wait_ready([v1, v2])
        with httpx.Client(timeout=60) as client:
            # 1. Requests spread over the replicas; feedback for each to a random replica.
            for n, (text, truth) in enumerate(rows[:45]):
                served.append(_serve(client, fleet, n % 3, text, truth, n))
            for s in served:
                r = _feedback(client, fleet.urls[rng.randrange(3)], s.completion_id, s.truth)
                assert r.status_code == 201, r.text

            # 2. Replica 2 answers, is quiet for longer than its write and drift intervals, answers
            # a few more, and is killed the moment those return; then it is restarted.
            before_kill = [
                _serve(client, fleet, 2, t, lab, 100 + n) for n, (t, lab) in enumerate(rows[45:60])
            ]
            time.sleep(3)
            last = [
                _ask(client, fleet.urls[2], "spare", t, f"spare-{n}")["id"]
                for n, (t, _) in enumerate(rows[60:70])
            ]
            fleet.kill(2)
            fleet.restart(2)
            fleet.wait_ready([v1, v2])
            served += before_kill
            for s in before_kill:
                r = _feedback(client, fleet.urls[rng.randrange(3)], s.completion_id, s.truth)
                assert r.status_code == 201, (r.text, fleet.logs())
            lost = sum(
                _feedback(client, fleet.urls[rng.randrange(3)], cid, labels[0]).status_code == 404
                for cid in last
            )
            print(
                f"crash window: {lost} of the {len(last)} answers served in the last moment before SIGKILL lost"
            )

            # 3. The database stops for 10 s while traffic flows: no client request fails.
            postgres.stop()
            during: list[Served] = []
            down_at = time.monotonic()
            try:
                with ThreadPoolExecutor(3) as pool:
                    n = 200
                    while time.monotonic() - down_at < 10:
                        batch = rows[70 + len(during) : 70 + len(during) + 3]
                        if not batch:
                            break
                        futures = [
                            pool.submit(_serve, client, fleet, i, t, lab, n + i)
                            for i, (t, lab) in enumerate(batch)
                        ]
                        during += [f.result() for f in futures]
                        n += 3
            finally:
                postgres.start()
            assert len(during) >= 6
            served += during

            # ... and catches up: the answers queued while it was down are written, feedback on them resolves.
            def resolved(s: Served) -> bool:
                r = _feedback(client, fleet.urls[rng.randrange(3)], s.completion_id, s.truth)
                assert r.status_code in (200, 201, 404, 503), r.text
                return r.status_code in (200, 201)

            pending = list(during)

            def caught_up() -> bool:
                pending[:] = [s for s in pending if not resolved(s)]
                return not pending

            wait_until(caught_up, timeout_s=60, what="the answers queued during the outage")
            dropped = sum(
                float(line.rsplit(" ", 1)[1])
                for url in fleet.urls
                for line in client.get(f"{url}/metrics").text.splitlines()
                if line.startswith("lorafleet_answer_log_dropped_total")
            )
            assert dropped == 0

        # 4. The fleet's numbers equal the offline ones, computed from every request of `banking`.
        correct = sum(match_label(s.answer, labels) == s.truth for s in served)
        reference = registry.get(v1).reference()
        assert reference is not None
        window = DriftWindow(reference, size=10_000, min_samples=20)
        for s in served:
            window.observe(s.text, match_label(s.answer, labels), None)
        offline = {f.value: score.psi for f, score in window.scores().items()}
        assert offline

        def fleet_numbers() -> tuple[float | None, dict[str, float], int]:
            (v,) = [v for v in _fleet_status(prom)["versions"] if v["route"] == "banking"]
            psi = {f: x["psi"] for f, x in v["drift"]["features"].items()}
            return v["live_accuracy"], psi, v["drift"]["window"]

        expected = (correct / len(served), offline, len(served))

        def agrees() -> bool:
            accuracy, psi, size = fleet_numbers()
            return (
                accuracy is not None
                and abs(accuracy - expected[0]) < 1e-9
                and size == expected[2]
                and psi.keys() == offline.keys()
                and all(abs(psi[f] - offline[f]) < 1e-9 for f in offline)
            )

        try:
            wait_until(agrees, timeout_s=60, what="the fleet's numbers to equal the offline ones")
        except AssertionError:
            raise AssertionError(f"fleet {fleet_numbers()} != offline {expected}\n{fleet.logs()}") from None
        status = _fleet_status(prom)
        (banking,) = [v for v in status["versions"] if v["route"] == "banking"]
        assert banking["replicas"] == 3 and banking["state"] == "stable"
        # Summed over the replicas, the killed one's too: Prometheus' increase() takes the restart as
        # a counter reset, and extrapolates a little at the window's end.
        assert abs(banking["requests"] - len(served)) <= 0.05 * len(served), (
            banking["requests"],
            len(served),
        )
    finally:
        fleet.stop()
