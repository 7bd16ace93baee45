"""Drift repair against what an API server stores, for real: kopf on the emulator, which normalises and defaults
as a Kubernetes API server does (issue 28's quantity bug).

A real API server stores ``cpu: 2`` as ``"2"`` and ``memory: 1.5Gi`` as ``"1536Mi"``, drops ``value: ""`` and
``readOnly: false``, adds ``defaultMode`` to a ConfigMap volume. None of that is a hand edit: the operator must
neither write the Deployment again nor post ``DeploymentRestored``, at creation or at any status change after.

Each test ends with a barrier: the Deployment deleted by hand. kopf handles one object's events in order, so once
that deletion is restored, every event before it (creation, status changes) has been handled.
"""

from __future__ import annotations

import time
from typing import Any

from bench.api_server import controller_status

from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster
from tests.operator_helpers import NS, api, create_pool, create_secret, deployments, events, pool_manifest, wait_for
from workerpool_operator.kube.api import KubeApi
from workerpool_operator.kube.drift import edits
from workerpool_operator.kube.render import render_deployments
from workerpool_operator.spec import WorkerPool

STATUS_CHANGES = 4
RESTORED_AFTER_DELETE = "Deployment deleted by hand, recreated"


def _writes_after_creation(kube: KubeCluster, name: str) -> list[str]:
    """The operator's writes to one Deployment after it created it, answered or not. Creation is its Server-Side
    Apply answered 201 and the scaler's apply of that count through the scale subresource right after."""
    found: list[str] = []
    created = scaled = False
    for request in kube.requests():
        agent = str(request.headers.get("User-Agent", ""))
        if str(request.method) in ("GET", "method.GET") or not agent.startswith("workerpool-operator/"):
            continue
        if request.name != name or request.resource is None or request.resource.plural != "deployments":
            continue
        if not created:
            created = kube.answer(request) == 201
            continue
        if not scaled and request.subresource == "scale":
            scaled = True
            continue
        found.append(f"{request.method} {request.url.path} -> {kube.answer(request)}")
    return found


def _story(kube: KubeCluster, template: dict[str, Any]) -> tuple[list[str], list[str], dict[str, Any]]:
    """Create the pool, let the deployment controller write a few statuses, delete the Deployment by hand: the
    operator's writes to it before the deletion, the Events it posted, and the Deployment as first stored."""
    queues = [{"name": "default", "minReplicas": 1, "maxReplicas": 3}]
    create_pool(kube, pool_manifest("shop", template=template, queues=queues))
    wait_for(lambda: "shop-default" in deployments(kube), message="the Deployment")
    stored = deployments(kube)["shop-default"]
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/shop-default"
    client = api(kube)
    for step in range(STATUS_CHANGES):  # pods starting, ready, one failing, ready again
        live = client.request("GET", path)
        body = {"status": controller_status(live, ready=step % 2 == 1)}
        client.request("PATCH", f"{path}/status", body=body, content_type="application/merge-patch+json")
        time.sleep(0.3)
    writes = _writes_after_creation(kube, "shop-default")
    client.request("DELETE", path)
    restored = lambda: [e["message"] for e in events(kube, "DeploymentRestored")]  # noqa: E731
    wait_for(lambda: any(RESTORED_AFTER_DELETE in m for m in restored()), 30, "the deletion restored")
    return writes, restored(), stored


def test_quantities_the_api_server_normalises_are_not_hand_edits(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    resources = {"requests": {"cpu": 2, "memory": "1.5Gi"}, "limits": {"memory": "1536Mi"}}
    writes, restored, stored = _story(kube, {"image": "registry.example/shop-worker:1.2", "resources": resources})
    container = stored["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "1536Mi"}, "limits": {"memory": "1536Mi"}}
    assert writes == []
    assert restored == [f"queue default: {RESTORED_AFTER_DELETE}"]


def test_every_field_the_api_server_rewrites_in_a_pod_template_is_not_a_hand_edit(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    template = {
        "image": "registry.example/shop-worker",  # no tag: the server sets imagePullPolicy Always
        "resources": {"requests": {"cpu": "0.5", "memory": "1048576Ki"}, "limits": {"cpu": "1000m"}},
        "env": [
            {"name": "EMPTY", "value": ""},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "volumes": [
            {"name": "cache", "emptyDir": {"sizeLimit": "1024Mi"}},
            {"name": "conf", "configMap": {"name": "shop-conf", "items": []}},
        ],
        "volumeMounts": [
            {"name": "cache", "mountPath": "/cache", "readOnly": False},
            {"name": "conf", "mountPath": "/conf"},
        ],
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule", "value": ""}],
    }
    writes, restored, stored = _story(kube, template)
    pod = stored["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1"}}
    assert {"name": "EMPTY"} in container["env"] and {"name": "cache", "mountPath": "/cache"} in container[
        "volumeMounts"
    ]
    assert pod["volumes"][-2:] == [
        {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "conf", "configMap": {"name": "shop-conf", "defaultMode": 420}},
    ]
    assert container["imagePullPolicy"] == "Always"
    assert writes == []
    assert restored == [f"queue default: {RESTORED_AFTER_DELETE}"]


# --- what the server rewrites moves no ownership; an edit does ------------------------------------------------


def test_what_the_server_rewrites_moves_no_field_and_each_real_edit_is_found(kube: KubeCluster) -> None:
    """Our manifest applied as the operator applies it: the stored object (quantities canonical, empty values
    dropped, defaults added) leaves every field with us; each hand edit, made as kubectl makes it, takes one."""
    resources = {"requests": {"cpu": 2, "memory": "1.5Gi"}, "limits": {"memory": "1536Mi"}}
    template = {
        "image": "registry.example/shop-worker:1.2",
        "resources": resources,
        "env": [{"name": "EMPTY", "value": ""}],
        "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "1024Mi"}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache", "readOnly": False}],
    }
    obj = pool_manifest("shop", template=template)
    obj["metadata"] |= {"namespace": NS, "uid": "u1"}
    manifest = render_deployments(WorkerPool.from_object(obj), uid="u1")["default"]
    ours = api(kube)
    stored = ours.apply({**manifest, "spec": {**manifest["spec"], "replicas": 1}})
    container = stored["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "1536Mi"}, "the server canonicalised"
    assert edits(stored, manifest) == []
    kubectl = kube.api_client()
    kubectl.user_agent = "kubectl-edit/v1.36.0"
    by_hand = KubeApi(kubectl)
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/{manifest['metadata']['name']}"
    worker: dict[str, Any] = {"name": "worker"}
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"resources": {"requests": {"cpu": "3"}}},
            "containers[worker].resources.requests.cpu changed by kubectl-edit",
        ),
        ({"env": [{"name": "EMPTY", "value": "x"}]}, "containers[worker].env[EMPTY].value"),
        ({"image": "evil:1"}, "containers[worker].image changed by kubectl-edit"),
    ]
    for edit, expected in cases:
        body = {"spec": {"template": {"spec": {"containers": [{**worker, **edit}]}}}}
        edited = by_hand.request("PATCH", path, body=body, content_type="application/strategic-merge-patch+json")
        found = edits(edited, manifest)
        assert any(expected in line for line in found), (edit, found)
        restored = ours.apply(manifest, force=True)
        assert edits(restored, manifest) == [], "applied again with force: every field ours again"
