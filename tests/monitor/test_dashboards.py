"""The generated Grafana dashboard: valid, up to date, declared names only, every query parses."""

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.dashboards.build import DASHBOARD_FILE, dashboard, main, render
from monitor.metrics import declared_names
from monitor.signals import PrometheusSignals

NAME_RE = re.compile(r"lorafleet_[a-z_]+")


def _queries(model: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard: panels, variables, annotations."""
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for var in model["templating"]["list"]:
        if var["type"] == "query":
            yield f"${var['name']}", var["query"]["query"]
    for ann in model["annotations"]["list"]:
        if "expr" in ann:
            yield ann["name"], ann["expr"]


def test_dashboard_file_is_valid_json_and_up_to_date(tmp_path: Path) -> None:
    assert json.loads(DASHBOARD_FILE.read_text()) == dashboard()
    assert DASHBOARD_FILE.read_text() == render(), "run `python -m monitor.dashboards.build` and commit"
    out = tmp_path / "d.json"
    assert main(["--output", str(out)]) == 0
    assert out.read_text() == DASHBOARD_FILE.read_text()


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area


def test_queries_use_only_declared_metric_names() -> None:
    declared = declared_names()
    for where, expr in _queries(dashboard()):
        used = set(NAME_RE.findall(expr))
        assert used, where
        assert used <= declared, (where, used - declared)


def test_variables_and_panels() -> None:
    model = dashboard()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["route"]["query"]["query"] == "label_values(lorafleet_router_requests_total, route)"
    assert variables["version"]["query"]["query"].startswith("label_values(lorafleet_router_requests_total")
    titles = " | ".join(p["title"].lower() for p in model["panels"])
    for topic in (
        "traffic split",
        "request rate",
        "latency",
        "time to first token",
        "errors by reason",
        "entropy",
        "psi",
        "jensen-shannon",
        "live accuracy",
        "feedback",
        "canary weight",
        "canary step",
        "gate decisions",
        "shadow agreement",
    ):
        assert topic in titles, topic
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            if panel["title"] not in (
                "Canary weight",
                "Canary step",
                "Gate decisions",
                "Rollbacks and rollout events",
            ):
                assert "$route" in target["expr"] or "engine" in target["expr"], panel["title"]


def _as_promql(expr: str) -> str:
    """A Grafana query as Prometheus itself would receive it (variables filled in)."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$route", ".*")
        .replace("$version", ".*")
    )


def test_every_query_parses_in_a_real_prometheus(prometheus: Callable[[list[str]], str]) -> None:
    url = prometheus([])

    async def gate_queries() -> dict[str, str]:
        async with httpx.AsyncClient() as client:
            return PrometheusSignals(url, window_s=300, client=client).queries(
                "banking", "banking-v1-20261124"
            )

    queries = [(w, _as_promql(q)) for w, q in _queries(dashboard()) if not q.startswith("label_values(")]
    queries += list(asyncio.run(gate_queries()).items())
    bad = []
    for where, promql in queries:
        response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
        if response.status_code != 200:
            bad.append((where, promql, response.json().get("error")))
    assert not bad, bad


@pytest.mark.parametrize("var", ["route", "version"])
def test_label_values_queries_name_declared_series(var: str) -> None:
    query = next(v for v in dashboard()["templating"]["list"] if v["name"] == var)["query"]["query"]
    assert set(NAME_RE.findall(query)) <= declared_names()
