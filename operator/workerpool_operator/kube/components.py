"""The pool's workloads that are never scaled: beat (a Deployment) and Flower (a Deployment and a Service). Pure.

Each is rendered whole, replica count included (1: the scaler never touches them), so drift repair puts back a
beat scaled to 2 by hand as it puts back any other edited field. Both use ``strategy: Recreate``: during a
rollout the old pod is gone before the new one starts (for beat, the entrypoint's lock in the broker covers
what Recreate cannot, see ``worker/beat.py``; for Flower, one writer of its state file).

Names: ``<pool>-celery-beat`` and ``<pool>-flower`` (the model refuses queues named ``celery-beat`` or ``flower``
while beat or Flower is on, whose Deployments would have those names). Labels: the pool's, and
``workerpool.dev/component``; queue Deployments' selectors need ``workerpool.dev/queue``, so they never select
these pods, nor these selectors worker pods.
"""

from __future__ import annotations

from typing import Any

from workerpool_operator import API_GROUP
from workerpool_operator.kube.render import (
    MANAGED_BY,
    POOL_LABEL,
    container,
    owner_reference,
    pod_spec,
    probe,
    standard_probes,
)
from workerpool_operator.spec import BEAT_DEPLOYMENT_SUFFIX, FLOWER_DEPLOYMENT_SUFFIX, BeatSpec, FlowerSpec, WorkerPool
from workerpool_operator.worker_env import (
    BEAT_SCHEDULE_DIR,
    FLOWER_PORT,
    FLOWER_STATE_DIR,
    beat_args,
    beat_environment,
    flower_args,
    flower_environment,
    flower_path,
)

COMPONENT_LABEL = f"{API_GROUP}/component"
COMPONENT_ANNOTATION = f"{API_GROUP}/component"
BEAT = "beat"
FLOWER = "flower"
FLOWER_SERVICE = "flower-service"
BEAT_SCHEDULE_VOLUME = "celery-beat-schedule"
FLOWER_STATE_VOLUME = "flower-state"
IMAGE_GROUP = 10001  # the worker image's group: made the owner of a schedule or state volume (fsGroup)
BEAT_GRACE = 30  # beat saves its schedule and releases its lock within a second or two of SIGTERM
HTTP_PORT_NAME = "http"


def component_name(pool: str, component: str) -> str:
    """The Deployment (and Service) name of a component: ``<pool>-celery-beat``, ``<pool>-flower``."""
    return f"{pool}-{BEAT_DEPLOYMENT_SUFFIX if component == BEAT else FLOWER_DEPLOYMENT_SUFFIX}"


def component_selector(pool: str, component: str) -> dict[str, str]:
    return {POOL_LABEL: pool, COMPONENT_LABEL: component}


def component_labels(pool: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "celery-beat" if component == BEAT else "flower",
        "app.kubernetes.io/instance": pool,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": pool,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **component_selector(pool, component),
    }


def render_components(pool: WorkerPool, uid: str) -> dict[str, dict[str, Any]]:
    """Every component the spec asks for, by key (``beat``, ``flower``, ``flower-service``)."""
    rendered: dict[str, dict[str, Any]] = {}
    if pool.spec.beat is not None:
        rendered[BEAT] = render_beat(pool, pool.spec.beat, uid)
    if pool.spec.flower is not None:
        rendered[FLOWER] = render_flower(pool, pool.spec.flower, uid)
        rendered[FLOWER_SERVICE] = render_flower_service(pool, pool.spec.flower, uid)
    return rendered


def _metadata(pool: WorkerPool, component: str, uid: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": component_name(pool.name, component),
        "namespace": pool.namespace,
        "labels": component_labels(pool.name, component),
        "annotations": {**(annotations or {}), COMPONENT_ANNOTATION: component},
        "ownerReferences": [owner_reference(pool, uid)],
    }


def _singleton(
    pool: WorkerPool,
    component: str,
    uid: str,
    main: dict[str, Any],
    volume: tuple[dict[str, Any] | None, str, str],
) -> dict[str, Any]:
    """A Deployment of exactly one pod, replaced by Recreate (never two at once during a rollout), running the
    ``main`` container (its last log line as its termination message) with its own ``volume`` (source, name,
    mount path) when one is given."""
    volumes, mounts, fs_group = _state_volume(*volume)
    if mounts:
        main["volumeMounts"] = [*main.get("volumeMounts", []), *mounts]
    main["terminationMessagePolicy"] = "FallbackToLogsOnError"  # the one-line error, in the pod status
    pod = pod_spec(pool, main, volumes=volumes, grace=BEAT_GRACE, fs_group=fs_group)
    labels = component_labels(pool.name, component)
    pod_meta: dict[str, Any] = {"labels": {**pool.spec.template.pod_labels, **labels}}
    if pool.spec.template.pod_annotations:
        pod_meta["annotations"] = dict(pool.spec.template.pod_annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool, component, uid),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": component_selector(pool.name, component)},
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "template": {"metadata": pod_meta, "spec": pod},
        },
    }


def _state_volume(
    source: dict[str, Any] | None, name: str, path: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
    """A component's own volume (its schedule or state file), mounted at ``path`` and made writable by the image's
    group: the pod's volumes, the container's mounts, the pod's fsGroup. Nothing without a volume source."""
    if source is None:
        return [], [], None
    return [{**source, "name": name}], [{"name": name, "mountPath": path}], IMAGE_GROUP


def render_beat(pool: WorkerPool, beat: BeatSpec, uid: str) -> dict[str, Any]:
    """Beat's Deployment: the template's image in ``beat`` mode, replicas 1, Recreate, its schedule volume."""
    beat_container = container(
        pool,
        name=BEAT,
        env=beat_environment(pool, beat),
        args=beat_args(beat),
        resources=beat.resources or pool.spec.template.resources,
        probes=standard_probes(probe),  # startup: import the app, and wait out a lost beat's lock (its TTL)
    )
    return _singleton(pool, BEAT, uid, beat_container, (beat.schedule_volume, BEAT_SCHEDULE_VOLUME, BEAT_SCHEDULE_DIR))


def _http_probe(flower: FlowerSpec, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": flower_path(flower, "/healthcheck"), "port": HTTP_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def render_flower(pool: WorkerPool, flower: FlowerSpec, uid: str) -> dict[str, Any]:
    """Flower's Deployment: the template's image in ``flower`` mode, one pod, Recreate, its state volume."""
    flower_container = container(
        pool,
        name=FLOWER,
        env=flower_environment(pool, flower),
        args=flower_args(flower),
        resources=flower.resources or pool.spec.template.resources,
        probes=standard_probes(lambda _kind, **timing: _http_probe(flower, **timing)),
    )
    flower_container["ports"] = [{"name": HTTP_PORT_NAME, "containerPort": FLOWER_PORT, "protocol": "TCP"}]
    volume = (flower.state_volume, FLOWER_STATE_VOLUME, FLOWER_STATE_DIR)
    return _singleton(pool, FLOWER, uid, flower_container, volume)


def render_flower_service(pool: WorkerPool, flower: FlowerSpec, uid: str) -> dict[str, Any]:
    """The Service in front of Flower (ClusterIP by default: ``kubectl port-forward``, or an Ingress of yours)."""
    service = flower.service
    port = {"name": HTTP_PORT_NAME, "port": service.port, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool, FLOWER, uid, dict(service.annotations)),
        "spec": {
            "type": service.type,
            "selector": component_selector(pool.name, FLOWER),
            "ports": [port],
        },
    }
