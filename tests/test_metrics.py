"""The operator's metrics: what the scrape shows, the reason label's kinds (from the real engine), series
dropped with their queue or pool, and a metrics port that cannot be bound."""

from __future__ import annotations

import logging
import platform
import socket

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workerpool_operator import __version__
from workerpool_operator.engine import QueueState, ScalingPolicy, decide
from workerpool_operator.kube import metrics
from workerpool_operator.observation import QueueObservation


def scrape() -> dict[str, set[str]]:
    """Metric family name -> the sample names the endpoint would serve now."""
    text = generate_latest(metrics.REGISTRY).decode()
    return {family.name: {s.name for s in family.samples} for family in text_string_to_metric_families(text)}


def test_scrape_has_build_process_and_no_created_series() -> None:
    metrics.record_queue("m", "p", "q", backlog=1, in_flight=0, replicas=1, desired=1)
    metrics.record_scale("m", "p", "q", 1, 2, reason="scale up: backlog 1", reaction_seconds=0.3)
    families = scrape()
    names = {name for samples in families.values() for name in samples}
    assert not [n for n in names if n.endswith("_created")], "no _created series"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"} <= names
    assert "python_info" in names and "python_gc_collections_total" in names
    assert (
        metrics.sample("workerpool_build_info", {"version": __version__, "python_version": platform.python_version()})
        == 1
    )
    assert "workerpool_scale_reaction_seconds_bucket" in names
    assert metrics.sample("workerpool_scale_down_cancelled_tasks_total", labels("m", "p", "q")) == 0


def labels(namespace: str, pool: str, queue: str) -> dict[str, str]:
    return {"namespace": namespace, "pool": pool, "queue_name": queue}


def test_every_queue_gauge_is_set_and_dropped_with_its_queue() -> None:
    metrics.record_queue(
        "m",
        "gauges",
        "q",
        backlog=5,
        in_flight=2,
        replicas=3,
        desired=4,
        ready=2,
        draining=1,
        min_replicas=1,
        max_replicas=10,
        paused=False,
        fallback=True,
    )
    wanted = labels("m", "gauges", "q")
    values = {name: metrics.sample(name, wanted) for name, _ in metrics.QUEUE_GAUGES.columns}
    assert values == {
        "workerpool_queue_backlog": 5,
        "workerpool_queue_in_flight": 2,
        "workerpool_queue_replicas": 3,
        "workerpool_queue_ready_replicas": 2,
        "workerpool_queue_desired_replicas": 4,
        "workerpool_queue_min_replicas": 1,
        "workerpool_queue_max_replicas": 10,
        "workerpool_queue_paused": 0,
        "workerpool_queue_fallback_active": 1,
        "workerpool_queue_workers_draining": 1,
    }
    metrics.record_pool("m", "gauges", broker_up=True, ready=False)
    assert metrics.sample("workerpool_broker_up", {"namespace": "m", "pool": "gauges"}) == 1
    assert metrics.sample("workerpool_pool_ready", {"namespace": "m", "pool": "gauges"}) == 0
    metrics.forget_pool("m", "gauges", ["q"])
    assert all(metrics.sample(name, wanted) is None for name, _ in metrics.QUEUE_GAUGES.columns)
    assert metrics.sample("workerpool_broker_up", {"namespace": "m", "pool": "gauges"}) is None


def test_the_wait_gauges_of_a_queue_with_a_target_and_of_idle_queues() -> None:
    wanted = labels("m", "waits", "emails")
    metrics.record_waits("m", "waits", "emails", oldest=75.5, p95=61.0, target=60.0, above_target=True)
    values = {name: metrics.sample(name, wanted) for name, _ in metrics.WAIT_GAUGES.columns}
    assert values == {
        "workerpool_queue_oldest_task_age_seconds": 75.5,
        "workerpool_queue_wait_p95_seconds": 61.0,
        "workerpool_queue_target_wait_seconds": 60.0,
        "workerpool_queue_wait_above_target": 1,
    }
    metrics.record_waits("m", "waits", "emails", oldest=None, p95=None, target=60.0, above_target=False)
    assert metrics.sample("workerpool_queue_oldest_task_age_seconds", wanted) == 75.5, "unknown: kept"
    assert metrics.sample("workerpool_queue_wait_above_target", wanted) == 0
    metrics.record_waits("m", "waits", "emails", oldest=0.0, p95=0.0, target=None, above_target=False)
    assert metrics.sample("workerpool_queue_target_wait_seconds", wanted) is None, "no target: no series"
    assert metrics.sample("workerpool_queue_wait_above_target", wanted) is None
    for queue in ("a", "b"):  # idle queues share one row, and a queue leaving it gets its own
        metrics.record_waits("m", "waits", queue, oldest=0.0, p95=0.0, target=None, above_target=False)
    assert metrics.WAIT_GAUGES.rows[("m", "waits", "a")] is metrics.WAIT_GAUGES.rows[("m", "waits", "b")]
    metrics.record_waits("m", "waits", "a", oldest=3.0, p95=2.0, target=None, above_target=False)
    assert metrics.sample("workerpool_queue_oldest_task_age_seconds", labels("m", "waits", "a")) == 3.0
    assert metrics.sample("workerpool_queue_oldest_task_age_seconds", labels("m", "waits", "b")) == 0.0
    metrics.forget_pool("m", "waits", ["emails", "a", "b"])
    assert all(metrics.sample(name, wanted) is None for name, _ in metrics.WAIT_GAUGES.columns)


def test_leader_and_cancelled_setters() -> None:
    metrics.set_leader(True)
    assert metrics.sample("workerpool_operator_leader") == 1
    metrics.set_leader(False)
    assert metrics.sample("workerpool_operator_leader") == 0
    metrics.record_cancelled_tasks("m", "s", "q", 2)
    metrics.record_cancelled_tasks("m", "s", "q", 0)
    assert metrics.sample("workerpool_scale_down_cancelled_tasks_total", labels("m", "s", "q")) == 2


def _reason(observation: QueueObservation, policy: ScalingPolicy, state: QueueState | None = None) -> str:
    decision, _ = decide(observation, state or QueueState(), policy, 1000.0)
    return decision.reason


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("wake", "wake_from_zero"),
        ("up", "demand"),
        ("min", "min_replicas"),
        ("max", "max_replicas"),
        ("zero", "idle"),
        ("down", "demand"),
        ("fallback", "fallback"),
        ("failed", "observation_failed"),
        ("paused", "paused"),
    ],
)
def test_reason_kinds_of_the_engines_real_reasons(case: str, kind: str) -> None:
    """The label is derived from the engine's own reason texts: if the engine rewords one, this fails."""
    q = "q"
    reasons = {
        "wake": lambda: _reason(QueueObservation(q, backlog=3, replicas=0), ScalingPolicy()),
        "up": lambda: _reason(QueueObservation(q, backlog=3, replicas=1), ScalingPolicy()),
        "min": lambda: _reason(QueueObservation(q, replicas=0), ScalingPolicy(min_replicas=2)),
        "max": lambda: _reason(QueueObservation(q, replicas=8), ScalingPolicy(max_replicas=4)),
        "zero": lambda: _reason(
            QueueObservation(q, replicas=2), ScalingPolicy(idle_before_zero=10), QueueState(idle_since=1.0)
        ),
        "down": lambda: _reason(QueueObservation(q, backlog=1, replicas=4), ScalingPolicy(scale_down_window=0)),
        "fallback": lambda: _reason(
            QueueObservation(q, error="refused", replicas=0),
            ScalingPolicy(fallback_replicas=2, fallback_failure_threshold=1),
        ),
        "failed": lambda: _reason(QueueObservation(q, error="refused", replicas=1), ScalingPolicy()),
        "paused": lambda: _reason(QueueObservation(q, replicas=1), ScalingPolicy(paused=True)),
    }
    reason = reasons[case]()
    assert metrics.reason_kind(reason) == kind, reason


def test_unknown_reason_is_other() -> None:
    assert metrics.reason_kind("something new: 3 replicas") == "other"


def test_a_busy_metrics_port_is_one_line_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        caplog.set_level(logging.ERROR, logger=metrics.__name__)
        assert metrics.serve(port, address="127.0.0.1") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and f"cannot listen on port {port}" in lines[0], lines
    assert "scaling goes on" in lines[0] and all(r.exc_info is None for r in caplog.records)


def test_default_port_is_not_prometheus_s() -> None:
    assert metrics.DEFAULT_PORT not in (9090, 9091, 9093, 9100, 3000, 8080)
