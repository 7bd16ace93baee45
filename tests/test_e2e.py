"""The operator against a real cluster (the one in KUBECONFIG): skipped unless ``--with-e2e``.

The operator runs here (as ``kopf run`` would in its pod), observes a redis-server started here, and
scales the Deployments in the cluster; the worker pods need not start for what is checked: the
Deployments the example produces and their replica count following the backlog.

    KUBECONFIG=~/.kube/config .venv/bin/pytest tests/test_e2e.py --with-e2e
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, RedisServer, operator_args
from tests.operator_helpers import enqueue, wait_for
from workerpool_operator import API_GROUP, API_VERSION, PLURAL
from workerpool_operator.kube.api import ApiError, KubeApi

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster_api() -> Iterator[KubeApi]:
    if not os.environ.get("KUBECONFIG"):
        pytest.fail("set KUBECONFIG to the cluster to test against")
    api = KubeApi()
    yield api
    api.close()


@pytest.fixture
def namespace(cluster_api: KubeApi) -> Iterator[str]:
    name = f"workerpool-e2e-{uuid.uuid4().hex[:6]}"
    cluster_api.request(
        "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    cluster_api.request("DELETE", f"/api/v1/namespaces/{name}")


def _apply_crd(api: KubeApi) -> None:
    crd = yaml.safe_load((REPO / "crds" / "workerpool.yaml").read_text())
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        api.request("POST", path, body=crd)
    except ApiError as exc:
        if exc.status != 409:
            raise
        api.request("PATCH", f"{path}/{crd['metadata']['name']}", body=crd, content_type="application/merge-patch+json")

    def established() -> bool:
        found = api.request("GET", f"{path}/{crd['metadata']['name']}")
        return any(
            c["type"] == "Established" and c["status"] == "True" for c in found.get("status", {}).get("conditions", [])
        )

    wait_for(established, timeout=60, message="CRD established")


def _example(path: Path, namespace: str, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    secret, pool = yaml.safe_load_all(path.read_text())
    secret["metadata"]["namespace"] = pool["metadata"]["namespace"] = namespace
    secret["stringData"]["url"] = url
    pool["spec"]["scaling"] = {"pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": 3, "idleSecondsBeforeZero": 5}
    return secret, pool


def test_example_scales_on_a_real_cluster(
    cluster_api: KubeApi, namespace: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kopf.testing import KopfRunner

    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", "0")
    _apply_crd(cluster_api)
    secret, pool = _example(REPO / "examples" / "minimal.yaml", namespace, redis_server.url)
    queue = pool["spec"]["queues"][0]["name"]
    cluster_api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=secret)
    with KopfRunner([*operator_args(namespace)], timeout=120) as runner:
        pools = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}"
        cluster_api.request("POST", pools, body=pool)
        name = f"{pool['metadata']['name']}-{queue}"

        def deployment() -> dict[str, Any] | None:
            return cluster_api.get_deployment(namespace, name)

        wait_for(deployment, timeout=60, message="the queue's Deployment")
        enqueue(redis_server.url, queue, 3)  # concurrency 1: three replicas
        wait_for(lambda: (deployment() or {}).get("spec", {}).get("replicas") == 3, timeout=60, message="3 replicas")
        live = cluster_api.request("GET", f"{pools}/{pool['metadata']['name']}")
        assert any(c["type"] == "Ready" for c in live["status"]["conditions"])
        redis_server.client().delete(queue)
        wait_for(lambda: (deployment() or {}).get("spec", {}).get("replicas") == 0, timeout=60, message="back to 0")
        cluster_api.request("DELETE", f"{pools}/{pool['metadata']['name']}")
        wait_for(lambda: deployment() is None, timeout=60, message="Deployment garbage-collected")
    assert runner.exception is None
