"""Rollouts that drain, end to end: the real operator on the API emulator, a real Redis, and real worker processes as
the pods of the worker Deployment (tests/pod_fleet.py plays the Deployment controller's RollingUpdate, the
ReplicaSet and the kubelet, each pod with its own template's grace period).

Four workers (concurrency 1, ``acks_late``) each run a task longer than Kubernetes' default grace period of 30 s;
the pool's template changes, as a new image tag would, with the grace left to the operator. The old workers stop
(SIGTERM) as new ones become ready, take nothing new, and finish their tasks; tasks sent during the rollout run on
the new version; each old pod is gone as soon as its task is done; status and Events tell the rollout. Then the
same with a rollback in the middle of a rollout.
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
from tests.operator_helpers import create_pool, create_secret, events, get_pool, patch_pool, pool_manifest, wait_for
from tests.pod_fleet import PodFleet
from workerpool_operator import reports

DEPLOYMENT = "shop-work"
LONG = 35.0  # longer than Kubernetes' default grace period (30 s): killed at it before this change
POLL = 1.0


def _template(release: str) -> dict[str, Any]:
    return {
        "image": "registry.example/shop-worker:1.2",
        "extraArgs": ["--without-mingle", "--without-gossip"],
        "env": [
            {"name": "TEST_ACKS_LATE", "value": "1"},  # each worker holds no more than it runs
            {"name": "WORKERPOOL_REPORT_INTERVAL", "value": "0.5"},
            {"name": "RELEASE", "value": release},  # what a new image tag changes: the pod template
        ],
    }


def _manifest(release: str) -> dict[str, Any]:
    queue = {"name": "work", "pool": "threads", "concurrency": 1, "minReplicas": 4, "maxReplicas": 4}
    manifest = pool_manifest(
        "shop", queues=[queue], scaling={"startupSeconds": 1, "pollIntervalSeconds": POLL}, template=_template(release)
    )
    manifest["spec"]["app"] = "tests.celery_apps.recorder:app"
    return manifest


def _release(kube: KubeCluster, release: str) -> None:
    patch_pool(kube, "shop", {"spec": {"template": _template(release)}})


def _send(url: str, tag: str, durations: tuple[float, ...]) -> list[str]:
    app = Celery("producer", broker=url, set_as_current=False)
    try:
        with app.producer_or_acquire() as producer:
            return [
                app.send_task("record", args=(tag, seconds), queue="work", producer=producer).id
                for seconds in durations
            ]
    finally:
        app.close()


def _runs(client: Redis, tag: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(f"test:runs:{tag}", 0, -1)]


def _once_each(client: Redis, tag: str, sent: list[str]) -> None:
    started = collections.Counter(
        raw if isinstance(raw, str) else raw.decode() for raw in client.lrange(f"test:started:{tag}", 0, -1)
    )
    ended = collections.Counter(run["id"] for run in _runs(client, tag))
    assert started == ended == collections.Counter(sent), (tag, started, ended)


def _running(client: Redis) -> list[int]:
    now = float(client.time()[0])
    loads = reports.live_reports(client.hgetall(reports.report_key("work")), now)
    return sorted(load.running for load in loads if not load.stopping)


def _versions(kube: KubeCluster) -> list[dict[str, Any]]:
    queues = (get_pool(kube, "shop").get("status") or {}).get("queues") or [{}]
    return list(queues[0].get("versions") or [])


@pytest.fixture
def fleet(
    kube: KubeCluster, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PodFleet]:
    create_secret(kube, "redis", {"url": redis_server.url})
    with PodFleet(kube, DEPLOYMENT, "work", redis_server.client(), tmp_path) as running:
        yield running
    assert not running.errors, running.errors


def _four_busy_workers(kube: KubeCluster, fleet: PodFleet, client: Redis, url: str) -> list[str]:
    create_pool(kube, _manifest("1"))
    wait_for(lambda: len(fleet.ready()) == 4, timeout=60, message=f"4 workers ready\n{fleet.outputs()}")
    sent = _send(url, "long", (LONG,) * 4)
    wait_for(lambda: _running(client) == [1, 1, 1, 1], timeout=15, message="one long task on each worker")
    return sent


def _version_of(fleet: PodFleet, client: Redis, tag: str) -> list[str]:
    """The template version of the pod each task of ``tag`` ran on."""
    pods, versions = fleet.pids(), fleet.versions()
    return [versions[pods[run["pid"]]] for run in _runs(client, tag)]


def _finished_then_gone(client: Redis, fleet: PodFleet, version: str) -> None:
    """Every pod of ``version`` was stopped, none killed, and each exited within a poll of its last task's end."""
    removed = [r for r in fleet.removals if r.template == version]
    assert removed and all(not r.killed for r in removed), removed
    ends: dict[int, float] = {}
    for tag in ("long", "short", "more"):
        for run in _runs(client, tag):
            ends[run["pid"]] = max(ends.get(run["pid"], 0.0), run["end"])
    for removal in removed:
        assert removal.exited is not None, removal
        finished = max(ends.get(removal.pid, removal.at), removal.at)
        assert removal.exited - finished < POLL + 1.0, f"{removal.pod} lingered {removal.exited - finished:.1f} s"


def test_a_new_template_rolls_out_without_cancelling_a_task_at_the_default_grace(
    operator: RunningOperator, redis_server: RedisServer, fleet: PodFleet
) -> None:
    kube, client = operator.cluster, redis_server.client()
    sent = _four_busy_workers(kube, fleet, client, redis_server.url)
    (old,) = set(fleet.versions().values())

    _release(kube, "2")
    wait_for(lambda: len({v for v in fleet.versions().values()}) == 2, timeout=15, message="the new version starts")
    (new,) = set(fleet.versions().values()) - {old}
    wait_for(
        lambda: len(fleet.ready()) == 4 and fleet.alive() == 8, timeout=60, message="4 new pods ready, 4 old finishing"
    )
    wait_for(
        lambda: {v["version"]: v for v in _versions(kube)}.get(old, {}).get("stopping") == 4,
        timeout=10,
        message="status: 4 old stopping",
    )
    assert get_pool(kube, "shop")["status"]["rollout"] == "4 old workers finishing"
    short = _send(redis_server.url, "short", (1.0,) * 4)  # during the rollout
    wait_for(lambda: client.llen("test:runs:short") == 4, timeout=20, message="the short tasks done")
    assert _version_of(fleet, client, "short") == [new] * 4, "new tasks ran on the new version"

    wait_for(
        lambda: client.llen("test:runs:long") == 4,
        timeout=LONG + 20,
        message=f"the long tasks done\n{fleet.removals}\n{fleet.outputs()}",
    )
    wait_for(lambda: fleet.alive() == 4, timeout=10, message="the old pods gone")
    _once_each(client, "long", sent)
    _once_each(client, "short", short)
    assert _version_of(fleet, client, "long") == [old] * 4, "each long task finished where it started"
    _finished_then_gone(client, fleet, old)
    assert len(fleet.created) == 8, fleet.created
    wait_for(lambda: any(old in e["message"] for e in events(kube, "VersionRetired")), timeout=10, message="retired")
    assert [e["message"] for e in events(kube, "RollingOut")] == [
        f"queue work: rolling out version {new}; 4 workers of version {old} finish what they run, then stop"
    ]
    wait_for(lambda: "rollout" not in get_pool(kube, "shop")["status"], timeout=10, message="the ROLLOUT column clears")


def test_a_rollback_in_the_middle_of_a_rollout_rolls_the_same_way(
    operator: RunningOperator, redis_server: RedisServer, fleet: PodFleet
) -> None:
    kube, client = operator.cluster, redis_server.client()
    sent = _four_busy_workers(kube, fleet, client, redis_server.url)
    (first,) = set(fleet.versions().values())

    _release(kube, "2")
    wait_for(lambda: sum(1 for v in fleet.versions().values() if v != first) >= 2, timeout=30, message="rolling out")
    _release(kube, "1")  # back, while the first version's workers still finish their long tasks
    wait_for(lambda: len(fleet.ready()) == 4 and fleet.alive() >= 4, timeout=60, message="rolled back")
    wait_for(
        lambda: all(fleet.versions()[p] == first for p in fleet.ready()),
        timeout=60,
        message=f"only the first version serves\n{fleet.outputs()}",
    )
    more = _send(redis_server.url, "more", (1.0,) * 4)  # during the rollback
    wait_for(lambda: client.llen("test:runs:more") == 4, timeout=20, message="the tasks sent during the rollback done")
    serving_pids = {pid for pid, pod in fleet.pids().items() if pod in fleet.ready()}
    assert {run["pid"] for run in _runs(client, "more")} <= serving_pids, "they ran on serving workers of the version"

    wait_for(lambda: client.llen("test:runs:long") == 4, timeout=LONG + 20, message="the long tasks done")
    wait_for(lambda: fleet.alive() == 4, timeout=10, message="every stopped pod gone")
    _once_each(client, "long", sent)
    _once_each(client, "more", more)
    assert all(not r.killed for r in fleet.removals), fleet.removals
    for removal in fleet.removals:
        assert removal.exited is not None and removal.exited - removal.at < LONG + POLL + 1.0
    time.sleep(0.5)
