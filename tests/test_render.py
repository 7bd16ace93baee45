"""render.py: the Deployment of every queue, field by field, valid for every supported Kubernetes version."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest

from tests.conftest import REPO
from tests.dockerfile import image as worker_image
from tests.pss import assert_restricted
from workerpool_operator.kube.render import (
    POOL_LABEL,
    QUEUE_ANNOTATION,
    QUEUE_LABEL,
    deployment_name,
    render_deployments,
    template_version,
)
from workerpool_operator.spec import WorkerPool
from workerpool_operator.worker_env import (
    BROKER_CA_DIR,
    BROKER_CA_ENV,
    BROKER_CA_FILE,
    VERSION_LABEL,
    soft_shutdown_timeout,
)

KUBERNETES_VERSIONS = ("1.30", "1.31", "1.32", "1.33")
UID = "7d1c8a3e-0000-4000-8000-000000000001"


def _pool(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "broker": {"urlFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}},
        "app": "shop.celery:app",
        "template": {"image": "registry.example/shop:1.0"},
        "queues": [{"name": "default"}],
    }
    base.update(spec)
    return {
        "apiVersion": "workerpool.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "shop", "namespace": "apps", "uid": UID, "generation": 3},
        "spec": base,
    }


FULL_TEMPLATE: dict[str, Any] = {
    "image": "registry.example/shop:2.0",
    "imagePullPolicy": "IfNotPresent",
    "imagePullSecrets": [{"name": "regcred"}],
    "extraArgs": ["--without-gossip", "--without-mingle"],
    "env": [
        {"name": "SHOP_MODE", "value": "prod"},
        {"name": "WORKERPOOL_LOGLEVEL", "value": "debug"},
        {"name": "WORKERPOOL_PREFETCH_MULTIPLIER", "value": "8"},  # the user's env wins
        {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
    ],
    "envFrom": [{"configMapRef": {"name": "shop-config"}}],
    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    "nodeSelector": {"pool": "workers"},
    "tolerations": [{"key": "workers", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }
        }
    },
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {}}
    ],
    "priorityClassName": "batch",
    "serviceAccountName": "shop-worker",
    "podLabels": {"team": "shop"},
    "podAnnotations": {"example.com/scrape": "false"},
    "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}],
    "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    "terminationGracePeriodSeconds": 120,
}

FULL_QUEUES: list[dict[str, Any]] = [
    {"name": "default", "pool": "prefork", "concurrency": 4, "maxTasksPerChild": 100, "minReplicas": 1},
    {"name": "io_bound", "pool": "gevent", "concurrency": 200, "prefetchMultiplier": 2},
    {"name": "reports.daily", "pool": "solo", "resources": {"limits": {"cpu": "2", "memory": "4Gi"}}},
]

TLS_BROKER: dict[str, Any] = {
    "urlFrom": {"secretKeyRef": {"name": "redis", "key": "url"}},
    "caFrom": {"secretKeyRef": {"name": "redis-ca", "key": "ca-bundle.pem"}},
}
EXAMPLES: tuple[dict[str, Any], ...] = (
    {},
    {"template": FULL_TEMPLATE, "queues": FULL_QUEUES},
    {"broker": TLS_BROKER},
    {"broker": TLS_BROKER, "template": FULL_TEMPLATE, "queues": FULL_QUEUES},
)


def _render(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return render_deployments(WorkerPool.from_object(obj), uid=UID)


def _env(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_minimal_pool_renders_every_field() -> None:
    (deployment,) = _render(_pool()).values()
    assert deployment["apiVersion"] == "apps/v1" and deployment["kind"] == "Deployment"
    meta = deployment["metadata"]
    assert (meta["name"], meta["namespace"]) == ("shop-default", "apps")
    assert meta["labels"] == {
        "app.kubernetes.io/name": "celery-worker",
        "app.kubernetes.io/instance": "shop",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "shop",
        "app.kubernetes.io/managed-by": "workerpool-operator",
        POOL_LABEL: "shop",
        QUEUE_LABEL: "default",
    }
    assert meta["annotations"] == {QUEUE_ANNOTATION: "default"}  # no copy of itself: Server-Side Apply tracks fields
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "workerpool.dev/v1alpha1",
            "kind": "WorkerPool",
            "name": "shop",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = deployment["spec"]
    assert "replicas" not in spec  # the scaler's
    assert spec["selector"] == {"matchLabels": {POOL_LABEL: "shop", QUEUE_LABEL: "default"}}
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]
    version = pod["metadata"]["labels"].pop(VERSION_LABEL)
    assert pod["metadata"]["labels"] == meta["labels"]
    assert version == template_version(pod) and len(version) == 12  # what the pods run, the label left out
    assert "annotations" not in pod["metadata"]
    pod_spec = pod["spec"]
    # A stopping worker (a rollout, an eviction) finishes what it runs within the drain timeout, 3,600 s by default.
    assert pod_spec["terminationGracePeriodSeconds"] == 3600 + 30
    assert pod_spec["automountServiceAccountToken"] is False and "serviceAccountName" not in pod_spec
    assert pod_spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod_spec["volumes"] == [{"name": "workerpool-state", "emptyDir": {}}]
    for absent in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert absent not in pod_spec
    (container,) = pod_spec["containers"]
    assert container["name"] == "worker" and container["image"] == "registry.example/shop:1.0"
    assert "command" not in container and "args" not in container  # the image's entrypoint runs, under tini
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [{"name": "workerpool-state", "mountPath": "/tmp"}]
    assert container["readinessProbe"]["exec"]["command"] == ["workerpool-worker", "check", "ready"]
    assert container["startupProbe"]["exec"]["command"] == ["workerpool-worker", "check", "ready"]
    assert container["livenessProbe"]["exec"]["command"] == ["workerpool-worker", "check", "alive"]
    assert "resources" not in container and "imagePullPolicy" not in container and "envFrom" not in container
    assert _env(deployment) == {
        "WORKERPOOL_APP": "shop.celery:app",
        "WORKERPOOL_QUEUES": "default",
        "WORKERPOOL_POOL": "prefork",
        "WORKERPOOL_CONCURRENCY": "1",
        "WORKERPOOL_PREFETCH_MULTIPLIER": "1",
        "WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT": "3625",
        "WORKERPOOL_TEMPLATE_VERSION": {"fieldRef": {"fieldPath": "metadata.labels['workerpool.dev/version']"}},
        "WORKERPOOL_WORKER_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "WORKERPOOL_STATE_DIR": "/tmp/workerpool",
        "WORKERPOOL_BROKER_URL": {"secretKeyRef": {"name": "redis", "key": "url"}},
    }


def test_full_pool_copies_every_template_field_and_queue_setting() -> None:
    rendered = _render(_pool(template=FULL_TEMPLATE, queues=FULL_QUEUES))
    assert list(rendered) == ["default", "io_bound", "reports.daily"]
    default, io_bound, daily = rendered.values()
    pod_spec = default["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "shop-worker" and "automountServiceAccountToken" not in pod_spec
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["nodeSelector"] == {"pool": "workers"}
    assert pod_spec["tolerations"] == FULL_TEMPLATE["tolerations"]
    assert pod_spec["affinity"] == FULL_TEMPLATE["affinity"]
    assert pod_spec["topologySpreadConstraints"] == FULL_TEMPLATE["topologySpreadConstraints"]
    assert pod_spec["priorityClassName"] == "batch"
    assert pod_spec["terminationGracePeriodSeconds"] == 3630  # 120 raised to the drain timeout + 30 s
    assert pod_spec["volumes"][1:] == FULL_TEMPLATE["volumes"]
    pod_meta = default["spec"]["template"]["metadata"]
    assert pod_meta["labels"]["team"] == "shop" and pod_meta["labels"][QUEUE_LABEL] == "default"
    assert pod_meta["annotations"] == {"example.com/scrape": "false"}
    container = pod_spec["containers"][0]
    assert container["image"] == "registry.example/shop:2.0" and container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"] == ["--", "--without-gossip", "--without-mingle"]
    assert container["envFrom"] == [{"configMapRef": {"name": "shop-config"}}]
    assert container["volumeMounts"][1:] == FULL_TEMPLATE["volumeMounts"]
    assert container["resources"] == FULL_TEMPLATE["resources"]
    env = _env(default)
    assert env["WORKERPOOL_CONCURRENCY"] == "4" and env["WORKERPOOL_MAX_TASKS_PER_CHILD"] == "100"
    assert env["WORKERPOOL_PREFETCH_MULTIPLIER"] == "8"  # overridden by template.env
    assert env["SHOP_MODE"] == "prod" and env["WORKERPOOL_LOGLEVEL"] == "debug"
    assert env["DB"] == {"secretKeyRef": {"name": "db", "key": "url"}}
    assert env["WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT"] == "3625"
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))

    io_env = _env(io_bound)
    assert (io_env["WORKERPOOL_POOL"], io_env["WORKERPOOL_CONCURRENCY"]) == ("gevent", "200")
    assert io_env["WORKERPOOL_QUEUES"] == "io_bound" and "WORKERPOOL_MAX_TASKS_PER_CHILD" not in io_env
    daily_container = daily["spec"]["template"]["spec"]["containers"][0]
    assert daily_container["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}  # the queue's override
    assert daily["metadata"]["labels"][QUEUE_LABEL] == "reports.daily"
    assert daily["metadata"]["annotations"][QUEUE_ANNOTATION] == "reports.daily"


def test_inline_url_and_command_override() -> None:
    obj = _pool(broker={"url": "redis://redis.apps:6379/0"}, template={"image": "x", "command": ["tini", "--", "w"]})
    (deployment,) = _render(obj).values()
    assert _env(deployment)["WORKERPOOL_BROKER_URL"] == "redis://redis.apps:6379/0"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"] == ["tini", "--", "w"]


def _pod_argv(container: dict[str, Any], entrypoint: list[str]) -> list[str]:
    """What the kubelet runs: ``command`` replaces the image's ENTRYPOINT, ``args`` its CMD (none here)."""
    return [*container.get("command", entrypoint), *container.get("args", [])]


def test_pods_run_the_worker_image_entrypoint_so_tini_is_pid_1() -> None:
    steps = worker_image((REPO / "Dockerfile").read_text(), "worker")
    entrypoint = json.loads([arg for op, arg in steps if op == "ENTRYPOINT"][-1])
    for obj in (_pool(), _pool(template=FULL_TEMPLATE, queues=FULL_QUEUES)):
        for deployment in _render(obj).values():
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            argv = _pod_argv(container, entrypoint)
            assert argv[0].endswith("tini") and argv[1:3] == ["--", "workerpool-worker"], argv
            # The worker's own arguments follow the entrypoint: extraArgs after the "--" of workerpool-worker.
            assert argv[3:] == container.get("args", [])


def test_ca_from_mounts_only_the_ca_key_read_only_and_points_the_worker_at_it() -> None:
    for extra in ({}, {"template": FULL_TEMPLATE, "queues": FULL_QUEUES}):
        for deployment in _render(_pool(broker=TLS_BROKER, **extra)).values():
            pod_spec = deployment["spec"]["template"]["spec"]
            ca_volumes = [v for v in pod_spec["volumes"] if "secret" in v]
            assert ca_volumes == [
                {
                    "name": "workerpool-broker-ca",
                    "secret": {
                        "secretName": "redis-ca",
                        "items": [{"key": "ca-bundle.pem", "path": "ca.crt"}],  # whatever the key is called
                        "defaultMode": 0o444,
                    },
                }
            ]
            (container,) = pod_spec["containers"]
            ca_mounts = [m for m in container["volumeMounts"] if m["name"] == "workerpool-broker-ca"]
            assert ca_mounts == [{"name": "workerpool-broker-ca", "mountPath": BROKER_CA_DIR, "readOnly": True}]
            assert _env(deployment)[BROKER_CA_ENV] == BROKER_CA_FILE == "/etc/workerpool/broker-ca/ca.crt"
            names = [v["name"] for v in pod_spec["volumes"]]
            assert len(names) == len(set(names))
            if extra:  # the template's own volumes and mounts are all still there, after ours
                assert pod_spec["volumes"][2:] == FULL_TEMPLATE["volumes"]
                assert container["volumeMounts"][2:] == FULL_TEMPLATE["volumeMounts"]


def test_ca_from_with_an_inline_url_and_a_user_override() -> None:
    broker = {"url": "rediss://redis.apps:6380/0", "caFrom": TLS_BROKER["caFrom"]}
    own = {"name": BROKER_CA_ENV, "value": "/certs/mine.pem"}
    (deployment,) = _render(_pool(broker=broker)).values()
    assert _env(deployment)[BROKER_CA_ENV] == BROKER_CA_FILE
    (overridden,) = _render(_pool(broker=broker, template={"image": "x", "env": [own]})).values()
    assert _env(overridden)[BROKER_CA_ENV] == "/certs/mine.pem"  # template.env wins, as for every setting


def test_deployment_names_are_dns_safe_and_never_collide() -> None:
    assert deployment_name("shop", "default") == "shop-default"
    names = {deployment_name("shop", q) for q in ("a-b", "a_b", "a.b")}
    assert len(names) == 3
    for name in names:
        assert name.replace("-", "").isalnum() and name.islower()


@pytest.mark.parametrize("grace, expected", [(30, 25), (120, 115), (10, 5), (1, 1), (0, 1)])
def test_soft_shutdown_timeout_fits_in_the_grace_period(grace: int, expected: int) -> None:
    pool = WorkerPool.from_object(_pool(template={"image": "x", "terminationGracePeriodSeconds": grace}))
    assert soft_shutdown_timeout(pool) == expected


def test_rendering_is_pure_and_does_not_alias_the_spec() -> None:
    obj = _pool(template=FULL_TEMPLATE, queues=FULL_QUEUES)
    pool = WorkerPool.from_object(obj)
    first = render_deployments(pool, uid=UID)
    snapshot = copy.deepcopy(first)
    first["default"]["spec"]["template"]["spec"]["tolerations"][0]["key"] = "changed"
    assert render_deployments(pool, uid=UID) == snapshot


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_deployments_validate_strictly(version: str) -> None:
    for extra in EXAMPLES:
        for deployment in _render(_pool(**extra)).values():
            kubernetes_validate.validate(
                {**deployment, "spec": {**deployment["spec"], "replicas": 0}}, version, strict=True
            )


def test_rendered_pods_meet_pod_security_restricted() -> None:
    for extra in EXAMPLES:
        for deployment in _render(_pool(**extra)).values():
            assert_restricted(deployment)


def test_the_manifest_never_holds_the_replica_count() -> None:
    for extra in EXAMPLES:
        for deployment in _render(_pool(**extra)).values():
            assert "replicas" not in deployment["spec"]  # the scaler's field (kube/fields.py)


def test_the_version_moves_exactly_with_what_the_pods_run() -> None:
    version = lambda **spec: _render(_pool(**spec))["default"]["spec"]["template"]["metadata"]["labels"][VERSION_LABEL]  # noqa: E731
    base = version()
    assert version() == base, "the same spec renders the same version"
    assert version(template={"image": "registry.example/shop:1.1"}) != base
    assert version(template={"image": "registry.example/shop:1.0", "env": [{"name": "A", "value": "1"}]}) != base
    # What the pods do not run leaves the version alone: bounds, and the pool's other scaling settings.
    assert version(queues=[{"name": "default", "maxReplicas": 50, "minReplicas": 2}]) == base
    assert version(scaling={"pollIntervalSeconds": 1}) == base


@pytest.mark.parametrize(
    "spec, grace",
    [
        ({}, 3630),  # the default drain timeout, plus the stop margin
        ({"scaling": {"drainTimeoutSeconds": 600}}, 630),
        ({"queues": [{"name": "default", "scaling": {"drainTimeoutSeconds": 90}}]}, 120),  # per queue
        ({"scaling": {"drainTimeoutSeconds": 0}}, 30),  # draining off: Kubernetes' default
        ({"template": {"image": "x", "terminationGracePeriodSeconds": 45}}, 3630),  # raised to the drain timeout
        ({"template": {"image": "x", "terminationGracePeriodSeconds": 7200}}, 7200),  # a longer one kept
    ],
)
def test_the_grace_period_covers_the_drain_timeout(spec: dict[str, Any], grace: int) -> None:
    deployment = _render(_pool(**spec))["default"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace
    assert _env(deployment)["WORKERPOOL_SOFT_SHUTDOWN_TIMEOUT"] == str(grace - 5)
