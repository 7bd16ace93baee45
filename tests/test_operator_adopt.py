"""Adopting what users already run, end to end: the real operator on the API emulator (its request log, its
managedFields, its garbage collector) and a real Redis.

- A Deployment the test made (as a user's chart or ``kubectl apply`` would) is scaled up and down through its
  ``scale`` subresource, and nothing else of it changes; deleting the pool leaves it, replicas where they are.
- A missing one is a condition and an Event, and is scaled once it exists.
- Another manager writing its replicas (an HPA, ``kubectl scale``) is found in ``managedFields`` and said once.
- A Shadow pool under a burst writes nothing (no Deployment, scale subresource, pod or drain-key write) while its
  status and metrics show the replicas it would set; switched to Active it scales at the next poll.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster
from tests.operator_helpers import (
    NS,
    api,
    condition,
    create_pool,
    create_secret,
    delete_pool,
    deployments,
    enqueue,
    events,
    get_pool,
    patch_pool,
    pool_manifest,
    replicas,
    wait_for,
)
from tests.pod_fleet import PodFleet
from workerpool_operator.kube import metrics
from workerpool_operator.observation import WorkerLoad
from workerpool_operator.reports import encode_report, report_key

TARGET = "shop-mailer"
USER_MANAGER = "kubectl-client-side-apply"  # what `kubectl apply` records


def user_deployment(name: str, count: int, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A worker Deployment as a team's chart has it: its own labels, command, probes and replicas."""
    labels = {"app.kubernetes.io/name": name}
    container: dict[str, Any] = {
        "name": "worker",
        "image": "registry.example/shop-worker:1.2",
        "args": ["--", "--without-mingle", "--without-gossip"],
        "env": env or [{"name": "WORKERPOOL_QUEUES", "value": "mail"}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": labels, "annotations": {"team": "checkout"}},
        "spec": {
            "replicas": count,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]},
            },
        },
    }


def create_user_deployment(kube: KubeCluster, manifest: dict[str, Any]) -> None:
    path = f"/apis/apps/v1/namespaces/{NS}/deployments"
    api(kube).request("POST", path, query=[("fieldManager", USER_MANAGER)], body=manifest)


def adopting_pool(name: str, *, mode: str = "Active", **queue: Any) -> dict[str, Any]:
    group = {"name": "mail", "scaleTargetRef": {"name": TARGET}, "concurrency": 2, "maxReplicas": 6, **queue}
    manifest = pool_manifest(name, queues=[group], scaling={"mode": mode})
    del manifest["spec"]["template"]
    return manifest


def the_users_part(deployment: dict[str, Any]) -> dict[str, Any]:
    """Everything of a Deployment but its replica count and what the API server keeps moving."""
    meta = {
        k: v for k, v in deployment["metadata"].items() if k in ("name", "labels", "annotations", "ownerReferences")
    }
    spec = {k: v for k, v in deployment["spec"].items() if k != "replicas"}
    return {"metadata": meta, "spec": spec}


def operator_writes(kube: KubeCluster, since: int = 0) -> list[str]:
    """Every write the operator made after request ``since``, but its status, Events and Lease."""
    found = []
    for request in kube.requests()[since:]:
        agent = str(request.headers.get("User-Agent", ""))
        if str(request.method.value).upper() == "GET" or not agent.startswith("workerpool-operator/"):
            continue
        plural = request.resource.plural if request.resource else ""
        if plural in ("events", "leases") or (plural == "workerpools" and request.subresource == "status"):
            continue
        found.append(f"{request.method.value} {request.url.path}")
    return found


def queue_status(kube: KubeCluster, pool: str, queue: str = "mail") -> dict[str, Any]:
    for entry in (get_pool(kube, pool).get("status") or {}).get("queues") or ():
        if entry.get("name") == queue:
            return dict(entry)
    return {}


def gauge(name: str, pool: str, queue: str = "mail") -> float | None:
    return metrics.sample(name, {"namespace": NS, "pool": pool, "queue_name": queue})


@pytest.fixture
def broker(redis_server: RedisServer, operator: RunningOperator) -> Redis:
    create_secret(operator.cluster, "redis", {"url": redis_server.url})
    return redis_server.client()


def test_an_existing_deployment_is_scaled_through_its_scale_subresource_and_left_as_it_was(
    operator: RunningOperator, redis_server: RedisServer, broker: Redis
) -> None:
    kube = operator.cluster
    create_user_deployment(kube, user_deployment(TARGET, 2))
    before = the_users_part(deployments(kube)[TARGET])
    create_pool(kube, adopting_pool("shop"))

    wait_for(lambda: replicas(kube, TARGET) == 0, message="idle: down to zero (minReplicas 0)")
    enqueue(redis_server.url, "mail", 10)
    wait_for(lambda: replicas(kube, TARGET) == 5, message="10 tasks, 2 per worker: 5")
    wait_for(lambda: queue_status(kube, "shop").get("replicas") == 5, message="the status says so")
    status = queue_status(kube, "shop")
    assert status["scaleTarget"] == TARGET and status["desiredReplicas"] == 5 and "mode" not in status
    assert (condition(kube, "shop", "ScaleTargetsFound") or {}).get("status") == "True"
    assert (condition(kube, "shop", "Ready") or {}).get("reason") == "Scaling"

    broker.delete("mail")
    wait_for(lambda: replicas(kube, TARGET) == 0, message="the queue empty: back to zero")
    enqueue(redis_server.url, "mail", 4)
    wait_for(lambda: replicas(kube, TARGET) == 2, message="up again, for 4 tasks")

    deployment = deployments(kube)[TARGET]
    assert the_users_part(deployment) == before, "nothing but the replica count changed"
    writes = operator_writes(kube)
    scale = f"PATCH /apis/apps/v1/namespaces/{NS}/deployments/{TARGET}/scale"
    assert writes and set(writes) == {scale}, "the scale subresource, and nothing else"
    managers = {(e["manager"], e.get("subresource", "")) for e in deployment["metadata"]["managedFields"]}
    assert ("workerpool-operator-scaler", "scale") in managers and all(m != "workerpool-operator" for m, _ in managers)
    assert not (condition(kube, "shop", "ReplicasContested") or {}), "the operator took the count from kubectl's apply"

    delete_pool(kube, "shop")
    wait_for(lambda: "shop" not in kube.objects("workerpool.dev/v1alpha1/workerpools", NS), message="pool gone")
    time.sleep(2.0)  # a few polls' time: nothing scales it any more, nothing deletes it
    assert replicas(kube, TARGET) == 2, "the Deployment stays, replicas where they were"
    assert the_users_part(deployments(kube)[TARGET]) == before


def test_a_missing_deployment_is_a_condition_and_an_event_and_is_scaled_once_it_exists(
    operator: RunningOperator, redis_server: RedisServer, broker: Redis
) -> None:
    kube = operator.cluster
    enqueue(redis_server.url, "mail", 6)
    create_pool(kube, adopting_pool("shop"))
    found = wait_for(lambda: condition(kube, "shop", "ScaleTargetsFound") or {}, message="the condition")
    assert found["status"] == "False" and found["reason"] == "ScaleTargetNotFound"
    assert f"Deployment {TARGET} not found" in found["message"]
    wait_for(  # Ready follows at the first poll (the condition above comes with the apply)
        lambda: (
            ((ready := condition(kube, "shop", "Ready") or {}).get("status"), ready.get("reason"))
            == ("False", "ScaleTargetNotFound")
        ),
        message="Ready=False ScaleTargetNotFound",
    )
    time.sleep(1.5)  # polls go on: one Event, not one per poll
    assert len(events(kube, "ScaleTargetNotFound")) == 1

    create_user_deployment(kube, user_deployment(TARGET, 1))
    wait_for(lambda: replicas(kube, TARGET) == 3, message="scaled once it exists")
    wait_for(lambda: (condition(kube, "shop", "ScaleTargetsFound") or {}).get("status") == "True", message="found")
    assert events(kube, "ScaleTargetFound")


def test_another_manager_writing_the_replicas_is_found_in_managed_fields_and_said_once(
    operator: RunningOperator, redis_server: RedisServer, broker: Redis
) -> None:
    kube = operator.cluster
    create_user_deployment(kube, user_deployment(TARGET, 1))
    enqueue(redis_server.url, "mail", 6)
    create_pool(kube, adopting_pool("shop"))
    wait_for(lambda: replicas(kube, TARGET) == 3, message="scaled by the operator")

    hpa = "kube-controller-manager"  # an HPA (KEDA's too) writes through the scale subresource, as Update
    for count in (5, 4, 6):
        api(kube).request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{NS}/deployments/{TARGET}/scale",
            query=[("fieldManager", hpa)],
            body={"spec": {"replicas": count}},
            content_type="application/merge-patch+json",
        )
        time.sleep(1.0)  # the operator writes its 3 again at its next change, the HPA its own: they fight
    contested = wait_for(lambda: condition(kube, "shop", "ReplicasContested") or {}, message="the contest said")
    assert contested["status"] == "True" and contested["reason"] == "OtherManager"
    assert hpa in contested["message"] and TARGET in contested["message"]
    assert len(events(kube, "ReplicasContested")) == 1, "one Event for one other writer"

    patch_pool(kube, "shop", {"spec": {"scaling": {"mode": "Shadow"}}})  # what the docs say to do meanwhile
    wait_for(lambda: not condition(kube, "shop", "ReplicasContested"), message="in Shadow there is no contest")


class RedisMonitor:
    """Every command a real Redis runs, from MONITOR, while the test looks."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.server.client().monitor() as monitor:
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                self.commands.append(str(command["command"]))

    def __enter__(self) -> RedisMonitor:
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.client().ping()  # wakes the monitor up to see the flag
        self._thread.join(5)


def test_a_shadow_pool_under_a_burst_writes_nothing_and_shows_what_it_would_set(
    operator: RunningOperator, redis_server: RedisServer, broker: Redis
) -> None:
    """Four idle workers report (an active pool would drain three and mark their pods), then a burst of 20 tasks
    (an active pool would scale to 6). In Shadow, nothing of it is written; status, metrics and Events say it."""
    kube = operator.cluster
    create_user_deployment(kube, user_deployment(TARGET, 4))
    pods = [f"{TARGET}-{i}" for i in range(4)]
    now = float(broker.time()[0])

    def report_idle() -> None:
        stamp = float(broker.time()[0])
        broker.hset(
            report_key("mail"),
            mapping={pod: encode_report(WorkerLoad(pod, heartbeat=stamp, concurrency=2, started=now)) for pod in pods},
        )

    report_idle()
    start = len(kube.requests())
    with RedisMonitor(redis_server) as watching:
        create_pool(kube, adopting_pool("shadow", mode="Shadow", minReplicas=1))
        for _ in range(8):  # the workers keep reporting, idle, for four seconds
            report_idle()
            time.sleep(0.5)
        assert queue_status(kube, "shadow").get("desiredReplicas") == 1, "idle: it would keep minReplicas"
        enqueue(redis_server.url, "mail", 20)
        for _ in range(8):
            report_idle()
            time.sleep(0.5)
    status = queue_status(kube, "shadow")
    assert (status["mode"], status["replicas"], status["desiredReplicas"]) == ("Shadow", 4, 6)
    assert "backlog 20" in status["wouldScaleReason"]
    assert (condition(kube, "shadow", "Ready") or {}).get("reason") == "Shadow"
    assert (gauge("workerpool_queue_desired_replicas", "shadow"), gauge("workerpool_queue_replicas", "shadow")) == (
        6,
        4,
    )
    assert gauge("workerpool_queue_shadow", "shadow") == 1
    would = [e["message"] for e in events(kube, "WouldScale")]
    assert len(would) == 2 and "would scale 4 -> 1 replicas" in would[0] and "would scale 4 -> 6" in would[1]

    assert operator_writes(kube, start) == [], "no Deployment, scale subresource or pod written"
    assert replicas(kube, TARGET) == 4
    drain_writes = [c for c in watching.commands if "workerpool:drain:" in c]
    assert drain_writes == [] and broker.keys("workerpool:drain:*") == [], "no drain request"
    assert any("workerpool:reports:mail" in c for c in watching.commands), "the monitor saw the operator's polls"

    switched = time.monotonic()
    patch_pool(kube, "shadow", {"spec": {"scaling": {"mode": "Active"}}})
    wait_for(lambda: replicas(kube, TARGET) == 6, timeout=10, message="Active: scaled")
    assert time.monotonic() - switched < 3.0, "at the next poll (every 0.5 s)"
    wait_for(lambda: "mode" not in queue_status(kube, "shadow"), message="the status says Active")
    status = queue_status(kube, "shadow")
    assert status["replicas"] == 6 and "wouldScaleReason" not in status
    assert gauge("workerpool_queue_shadow", "shadow") == 0


def worker_env(queue: str) -> list[dict[str, Any]]:
    """What a team's Deployment gives the project's entrypoint: its own settings, the broker from its Secret."""
    return [
        {"name": "WORKERPOOL_APP", "value": "tests.celery_apps.recorder:app"},
        {"name": "WORKERPOOL_QUEUES", "value": queue},
        {"name": "WORKERPOOL_POOL", "value": "threads"},
        {"name": "WORKERPOOL_CONCURRENCY", "value": "1"},
        {"name": "WORKERPOOL_WORKER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "WORKERPOOL_BROKER_URL", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}},
        {"name": "WORKERPOOL_REPORT_INTERVAL", "value": "0.5"},
        {"name": "TEST_ACKS_LATE", "value": "1"},
    ]


def test_the_pods_of_an_existing_deployment_are_drained_before_removal(
    operator: RunningOperator, redis_server: RedisServer, broker: Redis, tmp_path: Path
) -> None:
    """Real workers (the project's entrypoint) as the pods of a Deployment the test made: a scale-down drains the
    busy ones and removes each once idle (5 s grace period, 6-12 s tasks: one removed busy would be killed)."""
    from celery import Celery

    kube = operator.cluster
    create_user_deployment(kube, user_deployment(TARGET, 2, worker_env("mail")))
    with PodFleet(kube, TARGET, "mail", broker, tmp_path) as fleet:
        create_pool(kube, adopting_pool("shop", concurrency=1, minReplicas=2))
        wait_for(lambda: len(fleet.ready()) == 2, timeout=60, message=f"2 workers ready\n{fleet.outputs()}")
        app = Celery("producer", broker=redis_server.url, set_as_current=False)
        with app.producer_or_acquire() as producer:
            sent = [app.send_task("record", args=("long", s), queue="mail", producer=producer).id for s in (6.0, 12.0)]
        app.close()
        wait_for(lambda: broker.llen("test:started:long") == 2, timeout=20, message="one task on each worker")
        wait_for(lambda: queue_status(kube, "shop").get("scaleDown") == "Drain", message="scale-down: Drain")

        patch_pool(kube, "shop", {"spec": {"queues": [adopting_pool("shop", concurrency=1)["spec"]["queues"][0]]}})
        wait_for(lambda: replicas(kube, TARGET) == 0, timeout=60, message="drained down to zero")
        wait_for(lambda: fleet.alive() == 0, timeout=20, message=f"every worker gone\n{fleet.outputs()}")
        assert len(fleet.removals) == 2 and [r for r in fleet.removals if r.running or r.killed] == []
        assert fleet.errors == []
    ended = [json.loads(raw)["id"] for raw in broker.lrange("test:runs:long", 0, -1)]
    assert sorted(ended) == sorted(sent), "both tasks ran to their end"
    assert events(kube, "Draining") and events(kube, "WorkerRemoved")
