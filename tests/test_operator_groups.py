"""A worker group on two Celery queues, end to end: the real operator on the API emulator, a real Redis, and real
worker processes as the group's pods (tests/pod_fleet.py), each consuming both queues (``-Q normal,low`` through
``WORKERPOOL_QUEUES``).

A burst on either queue scales the group up and, once done, back to zero; a scale-down drains the workers it
removes on both queues (a drained worker takes a task from neither), so every removed pod was idle at its SIGTERM
(with a 5 s grace period, one removed while it ran a 6-12 s task would be killed), and every task ran once.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from redis import Redis

from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster
from tests.operator_helpers import create_pool, create_secret, get_pool, pool_manifest, replicas, wait_for
from tests.pod_fleet import PodFleet
from workerpool_operator import drain_requests

DEPLOYMENT = "shop-spare"
QUEUES = ("normal", "low")


def _manifest() -> dict[str, Any]:
    group = {"name": "spare", "celeryQueues": list(QUEUES), "pool": "threads", "concurrency": 1, "maxReplicas": 4}
    manifest = pool_manifest("shop", queues=[group], scaling={"startupSeconds": 1})
    manifest["spec"]["app"] = "tests.celery_apps.recorder:app"
    manifest["spec"]["template"] |= {
        "terminationGracePeriodSeconds": 5,
        "extraArgs": ["--without-mingle", "--without-gossip"],
        "env": [
            {"name": "TEST_ACKS_LATE", "value": "1"},  # each worker holds no more than it runs
            {"name": "WORKERPOOL_REPORT_INTERVAL", "value": "0.5"},
        ],
    }
    return manifest


def _send(url: str, queue: str, tag: str, durations: tuple[float, ...]) -> list[str]:
    app = Celery("producer", broker=url, set_as_current=False)
    try:
        with app.producer_or_acquire() as producer:
            return [
                app.send_task("record", args=(tag, seconds), queue=queue, producer=producer).id for seconds in durations
            ]
    finally:
        app.close()


def _runs(client: Redis, tag: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(f"test:runs:{tag}", 0, -1)]


def _once_each(client: Redis, tag: str, sent: list[str]) -> None:
    started = collections.Counter(str(raw) for raw in client.lrange(f"test:started:{tag}", 0, -1))
    ended = collections.Counter(run["id"] for run in _runs(client, tag))
    assert started == ended == collections.Counter(sent), (tag, started, ended)


class _Drains:
    """The workers asked to drain, per Celery queue, as the broker showed them while the test waited."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.asked: dict[str, set[str]] = {queue: set() for queue in QUEUES}

    def __call__(self) -> bool:
        for queue in QUEUES:
            self.asked[queue] |= {str(f) for f in self.client.hkeys(drain_requests.drain_key(queue))}
        return True


@pytest.fixture
def fleet(kube: KubeCluster, redis_server: RedisServer, tmp_path: Path) -> Iterator[PodFleet]:
    create_secret(kube, "redis", {"url": redis_server.url})
    with PodFleet(kube, DEPLOYMENT, QUEUES[0], redis_server.client(), tmp_path, other_queues=QUEUES[1:]) as running:
        yield running
    assert not running.errors, running.errors


def test_a_group_on_two_queues_scales_for_either_and_drains_on_both_before_removal(
    operator: RunningOperator, redis_server: RedisServer, fleet: PodFleet
) -> None:
    kube, client = operator.cluster, redis_server.client()
    create_pool(kube, _manifest())
    wait_for(lambda: DEPLOYMENT in kube.objects("apps/v1/deployments", "apps"), message="the group's Deployment")
    env = kube.objects("apps/v1/deployments", "apps")[DEPLOYMENT]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "WORKERPOOL_QUEUES", "value": "normal,low"} in env

    sent: dict[str, list[str]] = {}
    for queue in QUEUES:  # a burst on either queue wakes the group, and it goes back to zero after
        sent[queue] = _send(redis_server.url, queue, queue, (1.0, 1.0))
        wait_for(lambda: (replicas(kube, DEPLOYMENT) or 0) >= 1, timeout=20, message=f"woken by {queue}")
        _wait_for_runs(client, queue, 2)
        wait_for(lambda: replicas(kube, DEPLOYMENT) == 0, timeout=40, message=f"back to zero after {queue}")
        wait_for(lambda: fleet.alive() == 0, timeout=20, message="every worker gone")

    # Long tasks on both queues: four workers, each running one; they end one after the other.
    drains = _Drains(client)
    long = {"normal": _send(redis_server.url, "normal", "long", (6.0, 12.0))}
    long["low"] = _send(redis_server.url, "low", "long", (9.0, 15.0))
    wait_for(lambda: replicas(kube, DEPLOYMENT) == 4, timeout=30, message="one worker per task")
    status: list[dict[str, Any]] = wait_for(
        lambda: _status(kube).get("celeryQueues") or [], timeout=20, message="the group's queues in status"
    )
    assert [(q["name"], q["counted"]) for q in status] == [("normal", True), ("low", True)]
    wait_for(lambda: drains() and replicas(kube, DEPLOYMENT) == 0, timeout=60, message="drained down to zero")
    wait_for(lambda: fleet.alive() == 0, timeout=20, message=f"every worker gone\n{fleet.outputs()}")

    assert fleet.removals and [r for r in fleet.removals if r.running or r.killed] == [], "every removal was idle"
    removed_at = {r.pid: r.at for r in fleet.removals}
    late = [run for run in _runs(client, "long") if run["start"] >= removed_at.get(run["pid"], float("inf"))]
    assert late == [], "no task started on a worker already removed"
    asked_on_both = drains.asked["normal"] & drains.asked["low"]
    assert asked_on_both, f"a drained worker is asked on both queues: {drains.asked}"
    assert drains.asked["normal"] == drains.asked["low"], "never on one queue only"
    _once_each(client, "long", long["normal"] + long["low"])
    for queue in QUEUES:
        _once_each(client, queue, sent[queue])


def _wait_for_runs(client: Redis, tag: str, count: int) -> None:
    wait_for(lambda: len(_runs(client, tag)) == count, timeout=40, message=f"{count} {tag} tasks ran")


def _status(kube: KubeCluster) -> dict[str, Any]:
    queues = (get_pool(kube, "shop").get("status") or {}).get("queues") or [{}]
    return dict(queues[0])
