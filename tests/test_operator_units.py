"""The operator's Kubernetes adapter, drift check and metrics, each on its own (the emulator, no kopf)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube import KubeCluster, pod_manifest
from tests.operator_helpers import NS, api
from workerpool_operator.kube import metrics
from workerpool_operator.kube.api import DELETION_COST, ApiError
from workerpool_operator.kube.backend import KubeBackend

POOL = (NS, "shop")


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "w", "image": "x"}]}},
        },
    }


def _gets(kube: KubeCluster, name: str) -> int:
    return sum(1 for r in kube.requests() if str(r.method) == "method.GET" and r.name == name)


async def test_replicas_come_from_the_cache_after_one_read(kube: KubeCluster) -> None:
    client = api(kube)
    client.apply(_deployment("shop-default", 2))
    backend = KubeBackend(client)
    assert await backend.current_replicas(POOL, "default") is None  # no name registered: no workload
    backend.set_names(POOL, {"default": "shop-default", "gone": "shop-gone"})
    assert await backend.current_replicas(POOL, "gone") is None  # registered but absent: 404 is None
    assert await backend.current_replicas(POOL, "default") == 2
    assert await backend.current_replicas(POOL, "default") == 2
    assert _gets(kube, "shop-default") == 1

    await backend.scale(POOL, "default", 4, ())
    assert kube.objects("apps/v1/deployments", NS)["shop-default"]["spec"]["replicas"] == 4
    assert await backend.current_replicas(POOL, "default") == 4 and _gets(kube, "shop-default") == 1

    backend.set_names(POOL, {"gone": "shop-gone"})  # the queue "default" was removed
    assert backend.deployment_name(POOL, "default") is None
    assert backend.cached(NS, "shop-default") is None
    with pytest.raises(LookupError):
        await backend.scale(POOL, "default", 1, ())


def test_names_of_pools_sharing_a_namespace_stay_apart() -> None:
    """Each pool's queue names are kept by pool (no scan of every pool's): replacing or forgetting one pool's
    leaves the other's names and cached Deployments as they were."""
    backend = KubeBackend(None)  # type: ignore[arg-type]  # the cache needs no API
    other = (NS, "other")
    backend.set_names(POOL, {"default": "shop-default", "mail": "shop-mail"})
    backend.set_names(other, {"default": "other-default"})
    for name in ("shop-default", "shop-mail", "other-default"):
        backend.observe_deployment({"metadata": {"namespace": NS, "name": name}, "spec": {"replicas": 1}})
    backend.set_names(POOL, {"default": "shop-default", "mail": "shop-mail-2"})  # mail's Deployment renamed
    assert backend.deployment_name(POOL, "mail") == "shop-mail-2"
    assert backend.cached(NS, "shop-mail") is None and backend.cached(NS, "shop-default") is not None
    backend.forget(POOL)
    assert backend.deployment_name(POOL, "default") is None and backend.cached(NS, "shop-default") is None
    assert backend.deployment_name(other, "default") == "other-default"
    assert backend.cached(NS, "other-default") is not None
    backend.set_names(POOL, {"default": "shop-default"})  # back: a name forgotten can be set again
    assert backend.deployment_name(POOL, "default") == "shop-default"


def test_an_older_watch_event_never_overwrites_newer_facts() -> None:
    backend = KubeBackend(None)  # type: ignore[arg-type]  # the cache needs no API
    meta = {"namespace": NS, "name": "d"}
    backend.observe_deployment({"metadata": {**meta, "resourceVersion": "7"}, "spec": {"replicas": 5}})
    backend.observe_deployment({"metadata": {**meta, "resourceVersion": "6"}, "spec": {"replicas": 3}})
    cached = backend.cached(NS, "d")
    assert cached is not None and cached.replicas == 5
    backend.observe_deployment(
        {"metadata": {**meta, "resourceVersion": "8"}, "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}
    )
    cached = backend.cached(NS, "d")
    assert cached is not None and (cached.replicas, cached.ready) == (1, 1)
    backend.observe_deployment({"metadata": meta}, deleted=True)
    assert backend.cached(NS, "d") is None


async def test_scale_down_marks_the_chosen_pods_idlest_lowest(kube: KubeCluster) -> None:
    client = api(kube)
    client.apply(_deployment("shop-default", 3))
    for pod in ("p1", "p2", "p3"):
        client.request("POST", f"/api/v1/namespaces/{NS}/pods", body=pod_manifest(pod, NS))
    backend = KubeBackend(client)
    backend.set_names(POOL, {"default": "shop-default"})
    assert await backend.current_replicas(POOL, "default") == 3
    await backend.scale(POOL, "default", 1, ("celery@p3", "p1", "vanished"))
    costs = {
        name: (pod["metadata"].get("annotations") or {}).get(DELETION_COST)
        for name, pod in kube.objects("v1/pods", NS).items()
    }
    assert costs["p2"] is None
    assert int(costs["p3"] or 0) < int(costs["p1"] or 0) < 0  # the engine's first choice goes first
    assert kube.objects("apps/v1/deployments", NS)["shop-default"]["spec"]["replicas"] == 1

    writes = len([r for r in kube.requests() if str(r.method) == "method.PATCH"])
    await backend.scale(POOL, "default", 3, ("p2",))  # a scale-up marks nobody
    assert len([r for r in kube.requests() if str(r.method) == "method.PATCH"]) == writes + 1

    # p1 and p3 survived (say the ReplicaSet removed unready pods instead) and may be busy now: the next
    # scale-down unmarks them before it marks its own choice.
    await backend.scale(POOL, "default", 2, ("p2", "p3"))
    costs = {
        name: (pod["metadata"].get("annotations") or {}).get(DELETION_COST)
        for name, pod in kube.objects("v1/pods", NS).items()
    }
    assert costs == {"p1": None, "p2": "-1000", "p3": None}


def test_api_errors_carry_the_servers_status(kube: KubeCluster) -> None:
    client = api(kube)
    assert client.read_secret(NS, "missing") is None
    assert client.get_deployment(NS, "missing") is None
    assert client.set_deletion_cost(NS, "missing", -1) is False
    client.delete_object("Deployment", NS, "missing")  # already gone is fine
    with pytest.raises(ApiError) as info:
        client.scale_deployment(NS, "missing", 1)
    assert info.value.status == 404


def test_metrics_port_setting_and_series() -> None:
    assert metrics.serve(0) is None  # the port's checks are the settings' (tests/test_operator_settings.py)
    labels = {"namespace": "units", "pool": "p", "queue_name": "q"}
    metrics.record_queue("units", "p", "q", backlog=3, in_flight=None, replicas=1, desired=2)
    assert metrics.sample("workerpool_queue_backlog", labels) == 3
    assert metrics.sample("workerpool_queue_in_flight", labels) is None
    metrics.forget_queue("units", "p", "q")
    assert metrics.sample("workerpool_queue_backlog", labels) is None
