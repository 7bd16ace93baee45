"""The waits users get, end to end: the real operator on the API emulator, a real Redis, real Celery producers (the
one line of docs/workerpool.md stamping their messages) and a real worker process as the queue's only pod
(tests/pod_fleet.py plays the ReplicaSet, the kubelet and the Deployment controller).

A burst larger than ``maxReplicas`` can serve within the queue's target: the status shows the oldest task's age,
measured, rising past the target; once that lasts longer than a start-up delay the ``WaitsWithinTarget`` condition
turns False with ``MaxReplicasReached``, a Warning Event says so and the metric says 1; when the backlog clears,
all of it goes, with a Normal Event, and the p95 over the window keeps what the burst cost. Beside it, a queue
without a target whose producer does not stamp its messages shows an estimated age.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish

from tests.conftest import RedisServer
from tests.kube import KubeCluster
from tests.operator_helpers import condition, create_pool, create_secret, events, get_pool, pool_manifest, wait_for
from tests.pod_fleet import PodFleet
from workerpool_operator.kube import metrics

TARGET = 4.0  # seconds: the burst below takes a single worker about 20 s
BURST = 40  # tasks of 1 s, on one worker of 2 threads


def _manifest() -> dict[str, Any]:
    work = {
        "name": "work",
        "pool": "threads",
        "concurrency": 2,
        "minReplicas": 1,
        "maxReplicas": 1,
        "scaling": {"targetWaitSeconds": TARGET},
    }
    later = {"name": "later", "minReplicas": 0, "maxReplicas": 1, "scaling": {"paused": True}}  # nothing serves it
    manifest = pool_manifest("shop", queues=[work, later], scaling={"startupSeconds": 2})
    manifest["spec"]["app"] = "tests.celery_apps.recorder:app"
    manifest["spec"]["template"] |= {
        "extraArgs": ["--without-mingle", "--without-gossip"],
        "env": [{"name": "WORKERPOOL_REPORT_INTERVAL", "value": "0.5"}],
    }
    return manifest


def _send(url: str, queue: str, count: int, seconds: float) -> None:
    app = Celery("producer", broker=url, set_as_current=False)
    try:
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task("record", args=("waits", seconds), queue=queue, producer=producer)
    finally:
        app.close()


def _queue(kube: KubeCluster, name: str) -> dict[str, Any]:
    for entry in (get_pool(kube, "shop").get("status") or {}).get("queues") or ():
        if entry["name"] == name:
            return dict(entry)
    return {}


def _queue_when(kube: KubeCluster, name: str, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    found = _queue(kube, name)
    return found if found and test(found) else None


def _waits_condition(kube: KubeCluster, status: str) -> dict[str, Any] | None:
    found = condition(kube, "shop", "WaitsWithinTarget")
    return found if found is not None and found["status"] == status else None


def _above_target() -> float | None:
    return metrics.sample(
        "workerpool_queue_wait_above_target", {"namespace": "apps", "pool": "shop", "queue_name": "work"}
    )


@pytest.fixture
def running(
    kube: KubeCluster, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PodFleet]:
    """The operator (status figures written every half second) and the fleet of the queue with a target."""
    from tests.operator_helpers import start_operator

    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_STATUS_REFRESH", "0.5")
    create_secret(kube, "redis", {"url": redis_server.url})
    runner = start_operator(kube)
    try:
        with PodFleet(kube, "shop-work", "work", redis_server.client(), tmp_path) as fleet:
            yield fleet
            assert not fleet.errors, fleet.errors
    finally:
        runner.__exit__(None, None, None)
    assert runner.exception is None


def test_a_burst_beyond_max_replicas_breaks_the_target_with_the_reason_and_recovers(
    kube: KubeCluster, redis_server: RedisServer, running: PodFleet
) -> None:
    create_pool(kube, _manifest())
    wait_for(lambda: running.ready(), timeout=60, message=f"the worker ready\n{running.outputs()}")
    wait_for(lambda: _waits_condition(kube, "True"), timeout=20, message="the wait condition, True")

    _send(redis_server.url, "later", 3, 0.0)  # no stamp, no worker: an estimate
    stamp = before_task_publish.connect(  # docs/workerpool.md's one line
        lambda properties, **_: properties.setdefault("timestamp", time.time()), weak=False
    )
    try:
        _send(redis_server.url, "work", BURST, 1.0)
    finally:
        before_task_publish.disconnect(stamp)
    started = time.monotonic()

    rising = wait_for(
        lambda: _queue_when(kube, "work", lambda q: q.get("oldestTaskAgeSeconds", 0) > TARGET), timeout=30
    )
    assert rising is not None
    assert rising["waitSource"] == "Measured" and rising["targetWaitSeconds"] == TARGET
    assert "waitAboveTargetSince" in rising
    broken = wait_for(lambda: _waits_condition(kube, "False"), timeout=30, message="the target broken")
    assert broken is not None
    assert broken["reason"] == "MaxReplicasReached", broken
    assert broken["message"].startswith("queue work: the oldest task has waited "), broken
    assert f"above the {TARGET:g}s target" in broken["message"] and "maxReplicas (1) reached" in broken["message"]
    warnings = events(kube, "WaitAboveTarget")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning", warnings
    assert "maxReplicas (1) reached" in warnings[0]["message"]
    assert _above_target() == 1
    assert time.monotonic() - started < 20, "broken while the burst still waits"

    kept = wait_for(lambda: _waits_condition(kube, "True"), timeout=60, message="the target kept again")
    assert kept is not None
    assert kept["reason"] == "WithinTarget"
    assert [e["type"] for e in events(kube, "WaitWithinTarget")] == ["Normal"]
    assert len(events(kube, "WaitAboveTarget")) == 1, "one Warning for the one breach"
    assert _above_target() == 0
    after = wait_for(lambda: _queue_when(kube, "work", lambda q: q.get("oldestTaskAgeSeconds") == 0), message="empty")
    assert after is not None
    assert "waitAboveTargetSince" not in after
    assert after["waitP95Seconds"] > TARGET, "the p95 over the window keeps what the burst cost"

    later = wait_for(lambda: _queue_when(kube, "later", lambda q: q.get("oldestTaskAgeSeconds", 0) > 5))
    assert later is not None
    assert later["waitSource"] == "Estimated" and "targetWaitSeconds" not in later
    assert later["backlog"] == 3
