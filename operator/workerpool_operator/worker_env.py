"""How a worker is configured: the environment and arguments of ``workerpool-worker`` for one queue of a
WorkerPool. Pure. Shared by the Kubernetes Deployments (``kube/render.py``) and the local runtime
(``local/runtime.py``), so a local worker runs exactly as a pod would.
"""

from __future__ import annotations

from typing import Any

from workerpool_operator.spec import QueueSpec, WorkerPool

STATE_DIR = "/tmp/workerpool"  # the worker's probe files (its default WORKERPOOL_STATE_DIR)
BROKER_URL_ENV = "WORKERPOOL_BROKER_URL"
# spec.broker.caFrom: the Secret's one key, as a file of a fixed name (mounted read-only in a pod).
BROKER_CA_DIR = "/etc/workerpool/broker-ca"
BROKER_CA_NAME = "ca.crt"
BROKER_CA_FILE = f"{BROKER_CA_DIR}/{BROKER_CA_NAME}"
BROKER_CA_ENV = "WORKERPOOL_BROKER_CA_FILE"
WORKER_NAME_ENV = "WORKERPOOL_WORKER_NAME"
STATE_DIR_ENV = "WORKERPOOL_STATE_DIR"


def soft_shutdown_timeout(pool: WorkerPool) -> int:
    """Seconds running tasks get after SIGTERM: the grace period less a margin for the worker to put
    unstarted messages back before the kubelet's SIGKILL."""
    grace = pool.spec.template.termination_grace_period_seconds
    return grace - 5 if grace > 10 else max(grace // 2, 1)


def worker_environment(pool: WorkerPool, queue: QueueSpec) -> list[dict[str, Any]]:
    """The worker's settings; the user's ``template.env`` comes last, so it can override any of them."""
    env: list[dict[str, Any]] = [
        {"name": "WORKERPOOL_APP", "value": pool.spec.app},
        {"name": "WORKERPOOL_QUEUES", "value": queue.name},
        {"name": "WORKERPOOL_POOL", "value": str(queue.pool.value)},
        {"name": "WORKERPOOL_CONCURRENCY", "value": str(queue.concurrency)},
        {"name": "WORKERPOOL_PREFETCH_MULTIPLIER", "value": str(queue.prefetch_multiplier)},
    ]
    if queue.max_tasks_per_child is not None:
        env.append({"name": "WORKERPOOL_MAX_TASKS_PER_CHILD", "value": str(queue.max_tasks_per_child)})
    env.append({"name": "WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT", "value": str(soft_shutdown_timeout(pool))})
    env.append({"name": WORKER_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    env.append({"name": STATE_DIR_ENV, "value": STATE_DIR})
    broker = pool.spec.broker
    if broker.url_from is not None:
        ref = {"name": broker.url_from.name, "key": broker.url_from.key}
        env.append({"name": BROKER_URL_ENV, "valueFrom": {"secretKeyRef": ref}})
    elif broker.url is not None:
        env.append({"name": BROKER_URL_ENV, "value": broker.url})
    if broker.ca_from is not None:
        env.append({"name": BROKER_CA_ENV, "value": BROKER_CA_FILE})
    user = [dict(e) for e in pool.spec.template.env]
    overridden = {e.get("name") for e in user}
    return [e for e in env if e["name"] not in overridden] + user


def worker_args(pool: WorkerPool) -> list[str]:
    """The container arguments: ``template.extraArgs`` for Celery, after ``--``."""
    extra = pool.spec.template.extra_args
    return ["--", *extra] if extra else []
