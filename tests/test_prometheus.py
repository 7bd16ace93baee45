"""A real Prometheus scrapes the operator (a process of its own, on the API emulator, with a real Redis, a
real Celery worker and a queue under load): every query of the dashboard, every variable, and every series
the alert rules read return data; the rules load and evaluate without error. And a metrics port that is
taken costs one log line, never the scaling."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import operator_helpers as h
from tests.conftest import RedisServer
from tests.kube import KubeCluster
from tests.prometheus import REPO, SCRAPE_JOB, OperatorProcess, PrometheusServer, free_port, selectors
from tests.worker_process import producer, running_worker

DASHBOARD = REPO / "monitoring" / "dashboard.json"
RULES = REPO / "helm" / "workerpool-operator" / "files" / "prometheus-rules.yaml"
# What Grafana puts in for the dashboard's variables with "All" selected, and for the rate window.
GRAFANA_VALUES = {"$__rate_interval": "15s", "$namespace": ".*", "$pool": ".*", "$queue_name": ".*"}


def grafana(expr: str) -> str:
    for variable, value in GRAFANA_VALUES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown variable in {expr}"
    return expr


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [grafana(t["expr"]) for panel in board["panels"] for t in panel.get("targets") or ()]


def variable_queries() -> list[tuple[str, str]]:
    """(selector, label) of every ``label_values(selector, label)`` variable."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert match, variable["query"]
            found.append((grafana(match[1]), match[2]))
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_query_lists_are_complete() -> None:
    """What the live test below checks: every target of every panel, every series every alert reads."""
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels and all(p.get("targets") for p in panels)
    assert len(dashboard_queries()) == sum(len(p["targets"]) for p in panels) >= 20
    for rule in alert_rules():
        assert selectors(rule["expr"]), rule["alert"]
    assert selectors('sum by (le) (rate(workerpool_x_bucket{a="b"}[5m])) and on (job) workerpool_y') == [
        'workerpool_x_bucket{a="b"}',
        "workerpool_y",
    ]


@pytest.fixture
def loaded_operator(
    kube: KubeCluster, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, PrometheusServer]]:
    """The operator serving a busy pool (a real worker on it, more tasks waiting) and a pool whose Secret is
    missing, scraped by a real Prometheus that also evaluates the alert rules."""
    h.create_secret(kube, "redis", {"url": redis_server.url})
    queue = {"name": "default", "concurrency": 2, "maxReplicas": 3, "scaling": {"targetWaitSeconds": 60}}
    h.create_pool(kube, h.pool_manifest("shop", queues=[queue]))
    h.create_pool(kube, h.pool_manifest("broken", secret="missing"))
    port = free_port()
    operator = OperatorProcess(
        kube.kubeconfig, tmp_path / "operator.log", port, env={"WORKERPOOL_OPERATOR_RETRY_DELAY": "1"}
    ).start()
    prometheus = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{port}"], [RULES]).start()
    worker_env = {"workerpool_queues": "default", "workerpool_concurrency": "2", "workerpool_report_interval": "0.3"}
    try:
        # The load starts once the operator serves the pool, so it sees the backlog however slow its start.
        h.wait_for(lambda: "shop-default" in h.deployments(kube), timeout=90, message="the pool served")
        with running_worker(redis_server.url, tmp_path, worker_env) as worker:
            worker.wait_ready()
            app = producer(redis_server.url)
            for _ in range(12):
                app.send_task("record", args=("load", 2.0), queue="default")
            yield operator, prometheus
    finally:
        prometheus.stop()
        operator.stop()


def _without_data(prometheus: PrometheusServer, queries: list[str]) -> list[str]:
    return [query for query in queries if not prometheus.query(query)]


def test_every_dashboard_and_alert_query_returns_data(
    loaded_operator: tuple[OperatorProcess, PrometheusServer],
) -> None:
    operator, prometheus = loaded_operator
    alert_series = [s for rule in alert_rules() for s in selectors(rule["expr"])]
    wanted = dashboard_queries() + alert_series + [selector for selector, _ in variable_queries()]
    deadline = time.monotonic() + 90
    missing = _without_data(prometheus, wanted)
    while missing and time.monotonic() < deadline:
        assert operator.alive(), f"the operator exited:\n{operator.log()[-3000:]}"
        time.sleep(1.0)
        missing = _without_data(prometheus, wanted)
    assert missing == [], f"no data for {missing}\noperator log:\n{operator.log()[-2000:]}"

    # The load is visible, labelled as the dashboard expects (the pool's namespace kept by honor_labels).
    busy = prometheus.query('workerpool_queue_in_flight{namespace="apps", pool="shop", queue_name="default"} > 0')
    assert busy and busy[0]["metric"]["job"] == SCRAPE_JOB
    assert prometheus.query('workerpool_scale_events_total{pool="shop", direction="up"} > 0')
    assert prometheus.query('workerpool_pool_ready{pool="broken"} == 0')
    for selector, label in variable_queries():
        assert all(label in series["metric"] for series in prometheus.query(selector)), selector
    # Each alert's whole expression is valid PromQL a real Prometheus evaluates.
    for rule in alert_rules():
        prometheus.query(rule["expr"])
    rules = [r for group in prometheus.api("rules")["groups"] for r in group["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(r["alert"] for r in alert_rules())
    evaluated = lambda: all(r.get("lastEvaluation", "").startswith("2") and r["health"] != "unknown" for r in rules)  # noqa: E731
    deadline = time.monotonic() + 10
    while not evaluated() and time.monotonic() < deadline:
        time.sleep(0.5)
        rules = [r for group in prometheus.api("rules")["groups"] for r in group["rules"]]
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert "Traceback" not in operator.log()


def test_a_taken_metrics_port_is_one_line_and_scaling_goes_on(
    kube: KubeCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        h.create_secret(kube, "redis", {"url": redis_server.url})
        h.create_pool(kube, h.pool_manifest("shop"))  # concurrency 2, max 5
        operator = OperatorProcess(kube.kubeconfig, tmp_path / "operator.log", port).start()
        try:
            h.wait_for(lambda: "shop-default" in h.deployments(kube), timeout=60, message="the Deployment")
            h.enqueue(redis_server.url, "default", 6)
            h.wait_for(lambda: h.replicas(kube, "shop-default") == 3, timeout=30, message="a scale-up")
        finally:
            operator.stop()
    log = operator.log()
    lines = [line for line in log.splitlines() if "metrics:" in line]
    assert len(lines) == 1 and f"cannot listen on port {port}" in lines[0], lines
    assert "scaling goes on" in lines[0]
    assert "Traceback" not in log and "Activity 'start' succeeded." in log, log[-3000:]
