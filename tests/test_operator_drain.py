"""Scale-down drains before it removes, end to end: the real operator on the API emulator, a real Redis, and real
worker processes as the pods of the worker Deployment (tests/pod_fleet.py plays the ReplicaSet and the kubelet,
with a 5 s ``terminationGracePeriodSeconds``: a worker removed while it runs a 6-24 s task would be killed).

One long task on each of four workers, then demand falls (``minReplicas`` 4 -> 0): busy workers are asked to
drain, not removed; a burst during the drain takes a draining worker back instead of adding a pod; the replica
count falls as workers become idle; every task starts once and ends once. Then the same with the operator
restarted in the middle of the drain.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from redis import Redis

from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster
from tests.operator_helpers import (
    create_pool,
    create_secret,
    events,
    patch_pool,
    pool_manifest,
    replicas,
    start_operator,
    wait_for,
)
from tests.pod_fleet import PodFleet
from workerpool_operator import reports
from workerpool_operator.observation import WorkerLoad

DEPLOYMENT = "shop-work"
LONG = (6.0, 12.0, 18.0, 24.0)  # one each on four workers: they finish one after the other


def _manifest() -> dict[str, Any]:
    queue = {"name": "work", "pool": "threads", "concurrency": 2, "minReplicas": 4, "maxReplicas": 4}
    manifest = pool_manifest("shop", queues=[queue], scaling={"startupSeconds": 1})
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


def _send(url: str, tag: str, durations: tuple[float, ...]) -> list[str]:
    """``record`` tasks sent to the queue one after the other: workers blocked on the queue are served in turn, so
    idle workers take one each. (Sent to the queue itself, not moved in from another list: a message's routing
    key is where kombu puts it back when a worker requeues it.)"""
    app = Celery("producer", broker=url, set_as_current=False)
    try:
        with app.producer_or_acquire() as producer:
            return [
                app.send_task("record", args=(tag, seconds), queue="work", producer=producer).id
                for seconds in durations
            ]
    finally:
        app.close()


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _loads(client: Redis) -> dict[str, WorkerLoad]:
    """The queue's live worker reports, by the broker's clock, as the observer reads them."""
    now = float(client.time()[0])
    return {load.worker: load for load in reports.live_reports(client.hgetall(reports.report_key("work")), now)}


class _Watch:
    """Each worker's draining flag over time, from its reports (read every 0.1 s while the test waits)."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.drained_busy: set[str] = set()  # said draining while it ran a task
        self.taken_back: set[str] = set()  # said draining, then not, while still serving
        self._draining: set[str] = set()

    def __call__(self) -> dict[str, WorkerLoad]:
        loads = _loads(self.client)
        for name, load in loads.items():
            if load.draining:
                self._draining.add(name)
                if load.running:
                    self.drained_busy.add(name)
            elif name in self._draining:
                self.taken_back.add(name)
                self._draining.discard(name)
        return loads


def _story(kube: KubeCluster, fleet: PodFleet) -> str:
    """What the operator said (its Events) and what the fleet did, in order, for a failing assertion."""
    lines = [
        (e.get("lastTimestamp") or e.get("eventTime") or "", f"{e['reason']}: {e.get('message')}") for e in events(kube)
    ]
    lines += [(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.at)), f"fleet removed {r}") for r in fleet.removals]
    return "\n".join(f"{when} {what}" for when, what in sorted(lines))


def _idle_when_removed(client: Redis, fleet: PodFleet, *tags: str) -> None:
    """Every pod removed was idle at its SIGTERM, none was killed, and none started a task after it was removed
    (a removed worker whose drain request was taken back would, until its SIGTERM)."""
    assert [r for r in fleet.removals if r.running or r.killed] == [], "every pod removed was idle, none killed"
    removed_at = {r.pid: r.at for r in fleet.removals}
    runs = [json.loads(raw) for tag in tags for raw in client.lrange(f"test:runs:{tag}", 0, -1)]
    late = [run for run in runs if run["start"] >= removed_at.get(run["pid"], float("inf"))]
    assert late == [], "a task started on a worker already removed"


def _once_each(client: Redis, tag: str, sent: list[str]) -> None:
    started = collections.Counter(_text(raw) for raw in client.lrange(f"test:started:{tag}", 0, -1))
    ended = collections.Counter(json.loads(raw)["id"] for raw in client.lrange(f"test:runs:{tag}", 0, -1))
    missing = set(sent) - set(ended)
    where = f"queue {client.llen('work')}, unacked {client.hkeys('unacked')}, missing {missing}"
    assert started == ended == collections.Counter(sent), (tag, started, ended, where)


@pytest.fixture
def fleet(kube: KubeCluster, redis_server: RedisServer, tmp_path: Path) -> Iterator[PodFleet]:
    create_secret(kube, "redis", {"url": redis_server.url})
    with PodFleet(kube, DEPLOYMENT, "work", redis_server.client(), tmp_path) as running:
        yield running
    assert not running.errors, running.errors


def _four_busy_workers(kube: KubeCluster, fleet: PodFleet, url: str, watch: _Watch) -> list[str]:
    create_pool(kube, _manifest())
    wait_for(lambda: len(fleet.ready()) == 4, timeout=60, message=f"4 workers ready\n{fleet.outputs()}")
    wait_for(lambda: len(watch()) == 4, timeout=10, message="4 workers reporting")
    sent = _send(url, "long", LONG)
    wait_for(
        lambda: [load.running for load in watch().values()] == [1, 1, 1, 1],
        timeout=15,
        message="one task on each worker",
    )
    return sent


def test_falling_demand_drains_busy_workers_and_a_burst_takes_them_back_without_a_new_pod(
    operator: RunningOperator, redis_server: RedisServer, fleet: PodFleet
) -> None:
    kube, client = operator.cluster, redis_server.client()
    watch = _Watch(client)
    sent = _four_busy_workers(kube, fleet, redis_server.url, watch)

    patch_pool(kube, "shop", {"spec": {"queues": [{**_manifest()["spec"]["queues"][0], "minReplicas": 0}]}})
    wait_for(lambda: watch() and watch.drained_busy, timeout=15, message="a busy worker asked to drain")
    assert fleet.removals == [], "busy workers drain: none is removed while it runs"

    burst = _send(redis_server.url, "burst", (1.0, 1.0))  # demand is back while they drain
    wait_for(lambda: watch() and watch.taken_back, timeout=15, message="a draining worker taken back")
    wait_for(lambda: not client.llen("work") and watch(), timeout=15, message="the burst taken")

    wait_for(lambda: watch() is not None and replicas(kube, DEPLOYMENT) == 0, timeout=60, message="down to zero")
    wait_for(lambda: fleet.alive() == 0, timeout=15, message=f"every worker gone\n{fleet.outputs()}")

    assert len(fleet.created) == 4, f"no pod added for the burst: {fleet.created}\n{_story(kube, fleet)}"
    _idle_when_removed(client, fleet, "long", "burst")
    last_task_end = max(json.loads(raw)["end"] for raw in client.lrange("test:runs:long", 0, -1))
    assert min(r.at for r in fleet.removals) < last_task_end - 5, "replicas fell as workers became idle, not at the end"
    _once_each(client, "long", sent)
    _once_each(client, "burst", burst)


def test_a_drain_completes_across_an_operator_restart(
    kube: KubeCluster, redis_server: RedisServer, fleet: PodFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_STATUS_REFRESH", "0.5")
    client = redis_server.client()
    watch = _Watch(client)
    first = start_operator(kube)
    try:
        sent = _four_busy_workers(kube, fleet, redis_server.url, watch)
        patch_pool(kube, "shop", {"spec": {"queues": [{**_manifest()["spec"]["queues"][0], "minReplicas": 0}]}})
        wait_for(lambda: watch() and len(watch.drained_busy) >= 1, timeout=15, message="busy workers draining")
        time.sleep(1.0)  # the drain written to the pool's status
    finally:
        first.__exit__(None, None, None)
    assert first.exception is None
    draining = set(watch.drained_busy)

    second = start_operator(kube)
    try:
        wait_for(lambda: watch() is not None and replicas(kube, DEPLOYMENT) == 0, timeout=60, message="down to zero")
        wait_for(lambda: fleet.alive() == 0, timeout=15, message=f"every worker gone\n{fleet.outputs()}")
    finally:
        second.__exit__(None, None, None)
    assert second.exception is None

    assert watch.taken_back == set(), "the new operator kept the drains it found"
    assert draining <= {r.pod for r in fleet.removals}
    assert len(fleet.created) == 4, f"{fleet.created}\n{_story(kube, fleet)}"
    _idle_when_removed(client, fleet, "long")
    _once_each(client, "long", sent)
