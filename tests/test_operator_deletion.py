"""Deleting a WorkerPool, or its namespace, never waits for the operator: no finalizer is ever put on a pool.

A real API server keeps an object with a finalizer until a controller removes it; a namespace holding such objects
stays Terminating. The first release's per-pool kopf daemon put ``workerpool.dev/finalizer`` on every pool, so
uninstalling the operator left pools (and namespaces) undeletable. Now the Deployments' owner references are the
whole clean-up (the garbage collector's job), and the operator removes the old finalizer from pools that carry it.
"""

from __future__ import annotations

from typing import Any

from kopf.testing import KopfRunner

from tests.conftest import RedisServer, RunningOperator, _wait_for_watch, operator_args
from tests.kube import KubeCluster
from tests.operator_helpers import (
    NS,
    api,
    condition,
    create_pool,
    create_secret,
    delete_pool,
    deployments,
    get_pool,
    pool_manifest,
    wait_for,
)
from workerpool_operator import API_GROUP, API_VERSION, PLURAL

LEGACY = "workerpool.dev/finalizer"


def _pools(kube: KubeCluster) -> dict[str, dict[str, Any]]:
    return kube.objects(f"{API_GROUP}/{API_VERSION}/{PLURAL}", NS)


def _ready(kube: KubeCluster) -> bool:
    return (condition(kube, "shop", "Ready") or {}).get("status") == "True"


def test_a_served_pool_carries_no_finalizer_and_goes_with_the_operator_running(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop"))
    wait_for(lambda: _ready(kube), message="Ready")
    assert not get_pool(kube, "shop")["metadata"].get("finalizers")
    delete_pool(kube, "shop")
    wait_for(lambda: "shop" not in _pools(kube), message="the pool gone")
    wait_for(lambda: not deployments(kube), message="its Deployments garbage-collected")


def test_pools_go_while_no_operator_runs(kube: KubeCluster, redis_server: RedisServer, monkeypatch: Any) -> None:
    """`helm uninstall`, then `kubectl delete namespace`: nothing waits for an operator that is not there."""
    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", "0")
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop"))
    with KopfRunner(operator_args(), timeout=60) as runner:
        _wait_for_watch(kube, "workerpools")
        wait_for(lambda: _ready(kube) and set(deployments(kube)) == {"shop-default"}, message="served")
    assert runner.exception is None
    delete_pool(kube, "shop")  # the operator is gone
    wait_for(lambda: "shop" not in _pools(kube), message="deleted without an operator")
    wait_for(lambda: not deployments(kube), message="its Deployments garbage-collected")


def test_the_first_releases_finalizer_is_removed_and_a_stuck_deletion_completes(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    served = pool_manifest("shop")
    served["metadata"]["finalizers"] = [LEGACY, "example.com/keep"]  # someone else's stays
    create_pool(kube, served)
    wait_for(lambda: get_pool(kube, "shop")["metadata"].get("finalizers") == ["example.com/keep"], message="removed")
    wait_for(lambda: _ready(kube), message="Ready")

    # A pool deleted while the old operator was gone: Terminating, held by the old finalizer alone.
    stuck = pool_manifest("stuck", queues=[{"name": "q"}])
    stuck["metadata"]["finalizers"] = [LEGACY]
    client = api(kube)
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{NS}/{PLURAL}"
    client.request("POST", path, body=stuck)
    client.request("DELETE", f"{path}/stuck")
    wait_for(lambda: "stuck" not in _pools(kube), message="the stuck deletion completes")
