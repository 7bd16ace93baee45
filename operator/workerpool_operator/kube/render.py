"""Deployment manifests for a WorkerPool: one per queue. Pure: the same pool renders the same manifests.

The replica count is not rendered: it belongs to the scaler (its own field manager sets it on creation and when
a spec change moves the bounds, see ``fields.py``). Everything else a Deployment says comes from here and is
applied with Server-Side Apply, which removes by itself what a later rendering leaves out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from workerpool_operator import API_GROUP, API_VERSION, KIND
from workerpool_operator.spec import QueueSpec, ResourceRequirements, WorkerPool
from workerpool_operator.worker_env import (
    BROKER_CA_DIR,
    BROKER_CA_NAME,
    VERSION_LABEL,
    worker_args,
    worker_environment,
    worker_grace,
)

POOL_LABEL = f"{API_GROUP}/pool"
QUEUE_LABEL = f"{API_GROUP}/queue"
QUEUE_ANNOTATION = f"{API_GROUP}/queue"
LAST_APPLIED_ANNOTATION = f"{API_GROUP}/last-applied"  # versions before 0.3 kept their manifest here: removed
MANAGED_BY = "workerpool-operator"
CONTAINER_NAME = "worker"
STATE_VOLUME = "workerpool-state"
TMP_DIR = "/tmp"  # an emptyDir: the root filesystem is read-only, and Python and Celery want a writable /tmp
WORKER_COMMAND = ["workerpool-worker"]  # on the image's PATH: what the probes run
BROKER_CA_VOLUME = "workerpool-broker-ca"


def deployment_name(pool: str, queue: str) -> str:
    """``<pool>-<queue>``, DNS-safe. A queue name with ``_`` or ``.`` gets a short hash of itself, so two
    queues that differ only there (``a_b``, ``a.b``, ``a-b``) never share a Deployment."""
    safe = re.sub(r"[^a-z0-9-]", "-", queue.lower())
    name = f"{pool}-{safe}"
    if safe != queue:
        name += "-" + hashlib.sha256(queue.encode()).hexdigest()[:6]
    return name


def selector_labels(pool: str, queue: str) -> dict[str, str]:
    """The Deployment's selector (immutable once created): pool and queue."""
    return {POOL_LABEL: pool, QUEUE_LABEL: queue}


def standard_labels(pool: str, queue: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "celery-worker",
        "app.kubernetes.io/instance": pool,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": pool,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(pool, queue),
    }


def owner_reference(pool: WorkerPool, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": pool.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def render_deployments(pool: WorkerPool, uid: str) -> dict[str, dict[str, Any]]:
    """Every queue's Deployment, by queue name, in spec order."""
    return {queue.name: render_deployment(pool, queue, uid) for queue in pool.spec.queues}


def render_deployment(pool: WorkerPool, queue: QueueSpec, uid: str) -> dict[str, Any]:
    """The Deployment of one queue, without ``spec.replicas`` (the scaler's).

    Its pod template carries its own version (:func:`template_version`) in the label ``workerpool.dev/version``,
    which each worker reports (``WORKERPOOL_TEMPLATE_VERSION``, from the label): during a rollout the operator tells
    the new version's workers from the old ones', which stop (SIGTERM, as the Deployment replaces them) and finish
    their tasks within a grace period the operator sets from the drain timeout (``worker_env.worker_grace``)."""
    labels = standard_labels(pool.name, queue.name)
    template = pool.spec.template
    pod_labels = {**template.pod_labels, **labels}
    pod_meta: dict[str, Any] = {"labels": pod_labels}
    if template.pod_annotations:
        pod_meta["annotations"] = dict(template.pod_annotations)
    pod = {"metadata": pod_meta, "spec": _pod_spec(pool, queue)}
    pod_labels[VERSION_LABEL] = template_version(pod)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(pool.name, queue.name),
            "namespace": pool.namespace,
            "labels": labels,
            "annotations": {QUEUE_ANNOTATION: queue.name},
            "ownerReferences": [owner_reference(pool, uid)],
        },
        "spec": {
            "selector": {"matchLabels": selector_labels(pool.name, queue.name)},
            # Surge, never take a worker away for a rollout before its replacement is up.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": pod,
        },
    }


def template_version(pod_template: Mapping[str, Any]) -> str:
    """The version of a pod template: 12 hex digits of the SHA-256 of its JSON (sorted keys), the version label
    itself left out. What the pods run changes exactly when it does; replicas, the Deployment's own labels and the
    scaler's count do not touch it."""
    meta = dict(pod_template.get("metadata") or {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != VERSION_LABEL}
    body = {**pod_template, "metadata": {**meta, "labels": labels}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def _pod_spec(pool: WorkerPool, queue: QueueSpec) -> dict[str, Any]:
    return pod_spec(pool, _container(pool, queue), grace=worker_grace(pool, queue))


def pod_spec(
    pool: WorkerPool,
    container: dict[str, Any],
    *,
    volumes: Sequence[Mapping[str, Any]] = (),
    grace: int | None = None,
    fs_group: int | None = None,
) -> dict[str, Any]:
    """The pod of any of the pool's workloads: ``container``, the template's placement and volumes, the restricted
    security context. ``fs_group`` makes mounted volumes writable by the image's group."""
    template = pool.spec.template
    security: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if fs_group is not None:
        security |= {"fsGroup": fs_group, "fsGroupChangePolicy": "OnRootMismatch"}
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": template.termination_grace_period_seconds if grace is None else grace,
        "securityContext": security,
        "containers": [container],
        "volumes": [
            {"name": STATE_VOLUME, "emptyDir": {}},
            *_broker_ca_volumes(pool),
            *[dict(v) for v in template.volumes],
            *[dict(v) for v in volumes],
        ],
    }
    if template.service_account_name:
        spec["serviceAccountName"] = template.service_account_name
    else:  # the worker talks to Redis, not to the Kubernetes API
        spec["automountServiceAccountToken"] = False
    if template.image_pull_secrets:
        spec["imagePullSecrets"] = [dict(s) for s in template.image_pull_secrets]
    if template.node_selector:
        spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        spec["tolerations"] = [dict(t) for t in template.tolerations]
    if template.affinity:
        spec["affinity"] = dict(template.affinity)
    if template.topology_spread_constraints:
        spec["topologySpreadConstraints"] = [dict(t) for t in template.topology_spread_constraints]
    if template.priority_class_name:
        spec["priorityClassName"] = template.priority_class_name
    return spec


def _container(pool: WorkerPool, queue: QueueSpec) -> dict[str, Any]:
    return container(
        pool,
        name=CONTAINER_NAME,
        env=worker_environment(pool, queue),
        args=worker_args(pool),
        resources=queue.resources or pool.spec.template.resources,
        probes=standard_probes(probe),
    )


def container(
    pool: WorkerPool,
    *,
    name: str,
    env: list[dict[str, Any]],
    args: list[str],
    resources: ResourceRequirements,
    probes: Mapping[str, Any],
    mounts: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A container of the template's image, with the restricted security context and the pool's mounts."""
    template = pool.spec.template
    rendered: dict[str, Any] = {
        "name": name,
        "image": template.image,
        "env": env,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": STATE_VOLUME, "mountPath": TMP_DIR},
            *_broker_ca_mounts(pool),
            *[dict(m) for m in template.volume_mounts],
            *[dict(m) for m in mounts],
        ],
        **probes,
    }
    # No command by default: the image's entrypoint runs (the worker image's is tini, then workerpool-worker,
    # configured by the WORKERPOOL_* variables above), so tini stays PID 1 and reaps zombies.
    if template.command:
        rendered["command"] = list(template.command)
    if args:
        rendered["args"] = args
    if template.image_pull_policy:
        rendered["imagePullPolicy"] = template.image_pull_policy
    if template.env_from:
        rendered["envFrom"] = [dict(e) for e in template.env_from]
    limits = resources.model_dump(exclude_defaults=True)
    if limits:
        rendered["resources"] = limits
    return rendered


def standard_probes(make: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Startup (every 2 s, up to 5 minutes: importing the app), readiness (every 10 s) and liveness (every 30 s,
    3 failures), each made by ``make(kind, period=, failures=)``."""
    return {
        "startupProbe": make("ready", period=2, failures=150),
        "readinessProbe": make("ready", period=10, failures=3),
        "livenessProbe": make("alive", period=30, failures=3),
    }


def probe(kind: str, *, period: int, failures: int) -> dict[str, Any]:
    """``workerpool-worker check <kind>``: a file stat, no broker call."""
    return {
        "exec": {"command": [*WORKER_COMMAND, "check", kind]},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def _broker_ca_volumes(pool: WorkerPool) -> list[dict[str, Any]]:
    """The CA bundle of ``spec.broker.caFrom``: only its key, projected as ``ca.crt`` (whatever the key's name)."""
    ca = pool.spec.broker.ca_from
    if ca is None:
        return []
    items = [{"key": ca.key, "path": BROKER_CA_NAME}]
    return [{"name": BROKER_CA_VOLUME, "secret": {"secretName": ca.name, "items": items, "defaultMode": 0o444}}]


def _broker_ca_mounts(pool: WorkerPool) -> list[dict[str, Any]]:
    if pool.spec.broker.ca_from is None:
        return []
    return [{"name": BROKER_CA_VOLUME, "mountPath": BROKER_CA_DIR, "readOnly": True}]
