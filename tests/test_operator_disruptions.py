"""Node disruptions, with the real operator on the API emulator and real Redis: a busy worker's pod is protected from
voluntary disruption (Karpenter, the cluster autoscaler) and released once idle, with a bounded number of writes;
a worker lost with its tasks is told in an Event and counted by cause.

The worker reports are written by the test, as the worker entrypoint writes them (``reports.encode_report``), so a
worker can be busy for minutes of report time, or die, without a process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster, pod_manifest
from tests.operator_helpers import NS, api, create_pool, create_secret, events, pool_manifest, replicas, wait_for
from workerpool_operator.kube import metrics
from workerpool_operator.kube.disruptions import DO_NOT_DISRUPT, SAFE_TO_EVICT
from workerpool_operator.observation import WorkerLoad
from workerpool_operator.reports import encode_report, report_key

PODS = ("shop-default-long", "shop-default-short", "shop-default-idle")


@pytest.fixture(autouse=True)
def _fast_protection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERPOOL_OPERATOR_PROTECT_BUSY_AFTER", "3")


class Reports:
    """Writes each pod's report every 0.5 s with the load the test sets, until told to stop one."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.running = dict.fromkeys(PODS, 0)
        self.silent: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Reports:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = float(self.redis.time()[0])
            speaking = [pod for pod in self.running if pod not in self.silent]
            if speaking:
                self.redis.hset(
                    report_key("default"),
                    mapping={
                        pod: encode_report(WorkerLoad(pod, running=self.running[pod], heartbeat=now, concurrency=1))
                        for pod in speaking
                    },
                )
            self._stop.wait(0.5)


def _marks(kube: KubeCluster, pod: str) -> dict[str, str]:
    annotations = kube.objects("v1/pods", NS)[pod]["metadata"].get("annotations") or {}
    return {k: v for k, v in annotations.items() if k in (DO_NOT_DISRUPT, SAFE_TO_EVICT)}


def _writes(kube: KubeCluster, pod: str) -> int:
    """The operator's accepted writes of the protection marks to one pod."""
    return sum(
        1
        for request in kube.requests()
        if request.name == pod
        and str(request.method.value).upper() == "PATCH"
        and DO_NOT_DISRUPT in str(request.data)
        and (kube.answer(request) or 500) < 300
    )


@pytest.fixture
def reports(operator: RunningOperator, redis_server: RedisServer) -> Iterator[Reports]:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    queues = [{"name": "default", "concurrency": 1, "minReplicas": 3, "maxReplicas": 3}]
    create_pool(kube, pool_manifest("shop", queues=queues, scaling={"pollIntervalSeconds": 0.5}))
    wait_for(lambda: replicas(kube, "shop-default") == 3, message="3 replicas")
    for pod in PODS:
        api(kube).request("POST", f"/api/v1/namespaces/{NS}/pods", body=pod_manifest(pod, NS))
    with Reports(redis_server.client()) as writing:
        yield writing


def test_a_busy_pod_is_protected_and_released_once_idle_with_two_writes(
    operator: RunningOperator, reports: Reports
) -> None:
    kube = operator.cluster
    reports.running["shop-default-long"] = 1
    wait_for(lambda: _marks(kube, "shop-default-long"), timeout=15, message="the busy pod protected")
    assert _marks(kube, "shop-default-long") == {DO_NOT_DISRUPT: "true", SAFE_TO_EVICT: "false"}
    for _ in range(4):  # busy for a while longer: no further write
        reports.running["shop-default-short"] = 1 - reports.running["shop-default-short"]  # never busy 3 s in a row
        time.sleep(1.0)
    assert _writes(kube, "shop-default-long") == 1
    assert _marks(kube, "shop-default-short") == {} and _marks(kube, "shop-default-idle") == {}
    assert _writes(kube, "shop-default-short") == 0 and _writes(kube, "shop-default-idle") == 0

    reports.running["shop-default-long"] = 0
    wait_for(lambda: not _marks(kube, "shop-default-long"), timeout=45, message="released once idle")
    time.sleep(2.0)
    assert _writes(kube, "shop-default-long") == 2, "one write to protect, one to release"
    protected = metrics.sample(
        "workerpool_pod_protection_writes_total",
        {"namespace": NS, "pool": "shop", "queue_name": "default", "action": "protect"},
    )
    assert protected == 1


def test_a_worker_lost_with_its_tasks_is_told_and_counted(operator: RunningOperator, reports: Reports) -> None:
    kube = operator.cluster
    labels = {"namespace": NS, "pool": "shop", "queue_name": "default", "cause": "worker_lost"}
    before = metrics.sample("workerpool_tasks_interrupted_total", labels) or 0.0
    reports.running["shop-default-long"] = 1
    time.sleep(2.0)
    reports.silent.add("shop-default-long")  # killed: its report ages out (15 s)
    lost = wait_for(lambda: events(kube, "WorkerLost"), timeout=40, message="the loss told")
    assert [e["message"] for e in lost] == [
        "queue default: worker shop-default-long was lost holding 1 running and 0 prefetched task(s): acks_late "
        "ones come back after the broker's visibility timeout, the others are lost"
    ]
    assert metrics.sample("workerpool_tasks_interrupted_total", labels) == before + 1
    reports.silent.add("shop-default-idle")  # an idle worker that stops reporting lost nothing
    time.sleep(17.0)
    assert len(events(kube, "WorkerLost")) == 1
