"""An upgrade from an operator before 0.3 (merge patches, its manifest kept in ``workerpool.dev/last-applied``) to
Server-Side Apply, on the emulator that keeps ``managedFields`` as a real API server does.

The old operator's Deployment is written the way it wrote it (a create and merge patches under its User-Agent, so
the API server records them as ``workerpool-operator``/``Update``), then today's operator starts: it must take the
Deployment over without a Warning, keep the scaler's replica count, remove the annotation and the old entry, remove
what the old manifest had and the spec no longer asks for, and from then on remove what a spec edit drops."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import RedisServer
from tests.kube import KubeCluster
from tests.operator_helpers import (
    NS,
    create_pool,
    create_secret,
    deployments,
    events,
    patch_pool,
    pool_manifest,
    start_operator,
    wait_for,
)
from workerpool_operator.kube.api import KubeApi
from workerpool_operator.kube.fields import FIELD_MANAGER, SCALER_MANAGER
from workerpool_operator.kube.render import LAST_APPLIED_ANNOTATION, render_deployments
from workerpool_operator.spec import WorkerPool

TEMPLATE: dict[str, Any] = {
    "image": "registry.example/shop-worker:1.2",
    "env": [{"name": "KEEP", "value": "1"}, {"name": "DROP_LATER", "value": "2"}],
}


def _as_before_0_3(kube: KubeCluster, pool: dict[str, Any]) -> None:
    """The Deployment an operator before 0.3 left: its manifest (then with a nodeSelector) recorded in itself,
    created and scaled to 3 by merge patches."""
    old_spec = {**pool["spec"], "template": {**pool["spec"]["template"], "nodeSelector": {"pool": "old"}}}
    manifest = render_deployments(WorkerPool.from_object({**pool, "spec": old_spec}), uid=pool["metadata"]["uid"])
    (deployment,) = manifest.values()
    recorded = json.dumps(deployment, sort_keys=True, separators=(",", ":"))
    deployment["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = recorded
    client = kube.api_client()
    client.user_agent = "workerpool-operator/0.2.0 (old-replica)"
    old = KubeApi(client)
    path = f"/apis/apps/v1/namespaces/{NS}/deployments"
    old.request("POST", path, body={**deployment, "spec": {**deployment["spec"], "replicas": 1}})
    body = {"spec": {"replicas": 3}}
    old.request("PATCH", f"{path}/shop-default", body=body, content_type="application/merge-patch+json")


def _entries(deployment: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(e["manager"], e["operation"], e.get("subresource", "")) for e in deployment["metadata"]["managedFields"]}


def test_a_deployment_written_before_0_3_is_taken_over_without_a_warning(
    kube: KubeCluster, redis_server: RedisServer
) -> None:
    create_secret(kube, "redis", {"url": redis_server.url})
    created = create_pool(kube, pool_manifest("shop", template=TEMPLATE))
    _as_before_0_3(kube, created)
    before = deployments(kube)["shop-default"]
    assert _entries(before) == {(FIELD_MANAGER, "Update", "")}, "the old operator's merge patches, as recorded"

    runner = start_operator(kube)
    try:
        taken = lambda: LAST_APPLIED_ANNOTATION not in deployments(kube)["shop-default"]["metadata"]["annotations"]  # noqa: E731
        wait_for(taken, message="the Deployment taken over")
        live = deployments(kube)["shop-default"]
        assert (FIELD_MANAGER, "Update", "") not in _entries(live), "the merge patches' entry is gone"
        assert {(FIELD_MANAGER, "Apply", ""), (SCALER_MANAGER, "Apply", "scale")} <= _entries(live)
        assert live["spec"]["replicas"] == 3, "the scaler's count kept"
        assert "nodeSelector" not in live["spec"]["template"]["spec"], "what the old manifest had and the spec has not"
        assert [e["message"] for e in events(kube, "DeploymentRestored")] == [], "taking over is no hand edit"

        patch_pool(kube, "shop", {"spec": {"template": {**TEMPLATE, "env": TEMPLATE["env"][:1]}}})

        def env() -> list[str]:
            container = deployments(kube)["shop-default"]["spec"]["template"]["spec"]["containers"][0]
            return [e["name"] for e in container["env"]]

        wait_for(lambda: "DROP_LATER" not in env(), message="a variable the spec dropped removed")
        assert "KEEP" in env() and deployments(kube)["shop-default"]["spec"]["replicas"] == 3
        time.sleep(1)
        assert events(kube, "DeploymentRestored") == []
    finally:
        runner.__exit__(None, None, None)
    assert runner.exception is None, runner.exception
