"""Helpers for the operator tests: WorkerPool manifests, API calls, waiting, real Celery producers."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from redis import Redis

from tests.kube import KubeCluster, pod_manifest
from workerpool_operator import API_GROUP, API_VERSION, PLURAL
from workerpool_operator.kube.api import KubeApi
from workerpool_operator.local.embedded_redis import stop_process
from workerpool_operator.observation import WorkerLoad
from workerpool_operator.reports import encode_report, report_key

NS = "apps"
T = TypeVar("T")

# Short windows so the story plays out in seconds.
FAST_SCALING: dict[str, Any] = {
    "pollIntervalSeconds": 0.5,
    "scaleDownStabilizationSeconds": 2,
    "idleSecondsBeforeZero": 3,
    "scaleUp": {"pods": 10, "percent": 100, "periodSeconds": 1},
}


def api(kube: KubeCluster) -> KubeApi:
    return KubeApi(kube.api_client())


def pool_manifest(
    name: str,
    *,
    secret: str = "redis",
    queues: list[dict[str, Any]] | None = None,
    scaling: dict[str, Any] | None = None,
    template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "broker": {"urlFrom": {"secretKeyRef": {"name": secret, "key": "url"}}},
            "app": "shop.celery:app",
            "template": template or {"image": "registry.example/shop-worker:1.2"},
            "queues": queues or [{"name": "default", "concurrency": 2, "maxReplicas": 5}],
            "scaling": {**FAST_SCALING, **(scaling or {})},
        },
    }


def create_pool(kube: KubeCluster, manifest: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = api(kube).request(
        "POST", f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NS}/{PLURAL}", body=manifest
    )
    return created


def patch_pool(kube: KubeCluster, name: str, patch: dict[str, Any]) -> None:
    api(kube).request(
        "PATCH",
        f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NS}/{PLURAL}/{name}",
        body=patch,
        content_type="application/merge-patch+json",
    )


def delete_pool(kube: KubeCluster, name: str) -> None:
    api(kube).request("DELETE", f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NS}/{PLURAL}/{name}")


def get_pool(kube: KubeCluster, name: str) -> dict[str, Any]:
    return kube.objects(f"{API_GROUP}/{API_VERSION}/{PLURAL}", NS)[name]


def create_secret(kube: KubeCluster, name: str, data: dict[str, str]) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    api(kube).request("POST", f"/api/v1/namespaces/{NS}/secrets", body=body)


def deployments(kube: KubeCluster) -> dict[str, dict[str, Any]]:
    return kube.objects("apps/v1/deployments", NS)


def replicas(kube: KubeCluster, name: str) -> int | None:
    found = deployments(kube).get(name)
    return None if found is None else int(found["spec"].get("replicas", 1))


def events(kube: KubeCluster, reason: str | None = None) -> list[dict[str, Any]]:
    found = list(kube.objects("v1/events", NS).values())
    return [e for e in found if reason is None or e.get("reason") == reason]


def condition(kube: KubeCluster, pool: str, type_: str) -> dict[str, Any] | None:
    for entry in (get_pool(kube, pool).get("status") or {}).get("conditions") or ():
        if entry.get("type") == type_:
            return dict(entry)
    return None


def start_operator(kube: KubeCluster) -> Any:
    """The real operator in this process (kopf's runner), watching pools; the test stops it with
    ``runner.__exit__(None, None, None)``, for a restart in the middle of a story."""
    from kopf.testing import KopfRunner

    from tests.conftest import _wait_for_watch, operator_args

    runner = KopfRunner(operator_args(), timeout=60)
    runner.__enter__()
    _wait_for_watch(kube, "workerpools")
    return runner


def wait_for(what: Callable[[], T], timeout: float = 20.0, message: str = "") -> T:
    """Poll ``what`` until it returns something truthy; its last value on timeout fails the test."""
    deadline = time.monotonic() + timeout
    value = what()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message or what}: last {value!r}")
        time.sleep(0.1)
        value = what()
    return value


def enqueue(url: str, queue: str, count: int) -> None:
    """Real Celery messages, as a producer in the user's app would send them, landing in the queue at once:
    sent to a staging list first, then moved over in one transaction, so no poll sees half of them. (Their
    routing key names the staging list, where kombu would put one back if a worker requeued it: for tests whose
    tasks no worker runs.)"""
    staging = f"{queue}.staging"
    app = Celery("producer", broker=url)
    try:
        with app.producer_or_acquire() as producer:
            for i in range(count):
                app.send_task("shop.tasks.work", args=(i,), queue=staging, producer=producer)
    finally:
        app.close()
    client = Redis.from_url(url)
    try:
        with client.pipeline(transaction=True) as moves:
            for _ in range(count):
                moves.lmove(staging, queue, "RIGHT", "LEFT")  # oldest first: order kept
            moves.execute()
    finally:
        client.close()


BUSY_AND_IDLE_PODS = ("shop-default-busy", "shop-default-idle1", "shop-default-idle2")


def create_busy_and_idle_pods(client: KubeApi) -> None:
    """The shop pool's default-queue pods (no Deployment controller runs on the emulator)."""
    for pod in BUSY_AND_IDLE_PODS:
        client.request("POST", f"/api/v1/namespaces/{NS}/pods", body=pod_manifest(pod, NS))


def drain_into_busy_and_idle_pods(redis: Redis) -> None:
    """The default queue drained into those pods, one busy and two idle as their worker reports say:
    what the scaler sees just before a scale-down."""
    now = float(redis.time()[0])
    loads = [
        WorkerLoad(pod, running=int(pod.endswith("busy")), heartbeat=now, concurrency=1) for pod in BUSY_AND_IDLE_PODS
    ]
    redis.delete("default")
    redis.hset(report_key("default"), mapping={load.worker: encode_report(load) for load in loads})


class OperatorProcess:
    """The operator in a process of its own (``kopf run -m workerpool_operator.kube.handlers``), as the image runs
    it, against the emulator: it can be SIGKILLed like a pod on a lost node. Its log goes to a file."""

    KOPF = ("-m", "kopf", "run", "-m", "workerpool_operator.kube.handlers", "--standalone", "-A")

    def __init__(self, kube: KubeCluster, log: Path, argv: Sequence[str] = KOPF, **env: str) -> None:
        environment = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "WORKERPOOL_OPERATOR_METRICS_PORT": "0"}
        environment.update(env)
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, *argv], env=environment, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        stop_process(self.process, timeout=30)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def request_identity(request: Any) -> str | None:
    """The operator replica that made a request (from its User-Agent), if one did."""
    agent = str(request.headers.get("User-Agent", ""))
    if not agent.startswith("workerpool-operator/") or "(" not in agent:
        return None
    return agent.rsplit("(", 1)[1].rstrip(")")
