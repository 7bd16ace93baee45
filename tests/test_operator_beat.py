"""Beat and Flower from the operator, for real: kopf against the Kubernetes API emulator, a real redis-server.

The emulator runs no Deployment controller: a test that needs a ready beat pod says so by writing the beat
Deployment's status, as the controller would.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster
from tests.operator_helpers import (
    NS,
    api,
    condition,
    create_pool,
    create_secret,
    deployments,
    enqueue,
    events,
    get_pool,
    patch_pool,
    pool_manifest,
    replicas,
    wait_for,
)
from workerpool_operator.kube.components import render_components
from workerpool_operator.kube.drift import edits
from workerpool_operator.spec import WorkerPool

BEAT: dict[str, Any] = {"maxIntervalSeconds": 2}
FLOWER: dict[str, Any] = {"auth": {"basicFrom": {"secretKeyRef": {"name": "flower-users", "key": "users"}}}}


def with_beat_and_flower(name: str, **extra: Any) -> dict[str, Any]:
    manifest = pool_manifest(name, **extra)
    manifest["spec"] |= {"beat": BEAT, "flower": FLOWER}
    return manifest


def services(kube: KubeCluster) -> dict[str, dict[str, Any]]:
    return kube.objects("v1/services", NS)


def beat_condition(kube: KubeCluster, pool: str) -> dict[str, Any] | None:
    return condition(kube, pool, "BeatReady")


def set_ready(kube: KubeCluster, deployment: str, ready: int) -> None:
    """What the Deployment controller would write once the pod is ready."""
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/{deployment}/status"
    body = {"status": {"replicas": 1, "readyReplicas": ready, "availableReplicas": ready}}
    api(kube).request("PATCH", path, body=body, content_type="application/merge-patch+json")


def test_beat_and_flower_are_rendered_applied_and_kept_out_of_scaling(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    created = create_pool(kube, with_beat_and_flower("shop"))
    wait_for(lambda: {"shop-default", "shop-celery-beat", "shop-flower"} <= set(deployments(kube)), message="all three")
    wait_for(lambda: "shop-flower" in services(kube), message="Flower's Service")
    expected = render_components(WorkerPool.from_object(created), uid=created["metadata"]["uid"])
    live = {**deployments(kube), **{f"service/{n}": s for n, s in services(kube).items()}}
    for key, manifest in expected.items():
        name = manifest["metadata"]["name"]
        found = live[f"service/{name}" if manifest["kind"] == "Service" else name]
        assert edits(found, manifest) == [], f"{key} is not as applied"
    beat = deployments(kube)["shop-celery-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"] == {"type": "Recreate"}
    assert beat["template"]["spec"]["containers"][0]["args"] == ["beat"]
    flower = deployments(kube)["shop-flower"]["spec"]
    assert flower["replicas"] == 1 and flower["strategy"] == {"type": "Recreate"}
    assert services(kube)["shop-flower"]["spec"]["selector"] == flower["selector"]["matchLabels"]

    # Not ready yet: the condition says where to look; once the pod is ready, it says so.
    found = wait_for(lambda: beat_condition(kube, "shop") or {}, message="BeatReady")
    assert (found["status"], found["reason"]) == ("False", "BeatNotReady")
    assert "kubectl logs deploy/shop-celery-beat" in found["message"] and "exit code 5" in found["message"]
    set_ready(kube, "shop-celery-beat", 1)
    wait_for(lambda: (beat_condition(kube, "shop") or {}).get("status") == "True", message="BeatReady=True")
    status = get_pool(kube, "shop")["status"]
    assert status["beat"] == {"deployment": "shop-celery-beat", "replicas": 1, "readyReplicas": 1}

    # The scaler moves the queue's Deployment and nothing else.
    enqueue(redis_server.url, "default", 5)
    wait_for(lambda: replicas(kube, "shop-default") == 3, message="the queue scaled up")
    assert replicas(kube, "shop-celery-beat") == 1 and replicas(kube, "shop-flower") == 1
    assert [q["name"] for q in get_pool(kube, "shop")["status"]["queues"]] == ["default"]


def test_taking_beat_and_flower_out_of_the_spec_deletes_them(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, with_beat_and_flower("shop"))
    wait_for(lambda: "shop-flower" in services(kube) and "shop-celery-beat" in deployments(kube), message="created")
    wait_for(lambda: beat_condition(kube, "shop"), message="BeatReady")

    patch_pool(kube, "shop", {"spec": {"beat": None}})
    wait_for(lambda: "shop-celery-beat" not in deployments(kube), message="beat's Deployment deleted")
    assert "shop-flower" in deployments(kube) and "shop-flower" in services(kube)
    wait_for(lambda: beat_condition(kube, "shop") is None, message="no BeatReady without beat")
    assert "beat" not in get_pool(kube, "shop")["status"]

    patch_pool(kube, "shop", {"spec": {"flower": None}})
    wait_for(lambda: "shop-flower" not in services(kube), message="Flower's Service deleted")
    assert set(deployments(kube)) == {"shop-default"}
    wait_for(lambda: len(events(kube, "ComponentRemoved")) == 3, message="an Event for each")  # after each delete
    removed = sorted(e["message"] for e in events(kube, "ComponentRemoved"))
    assert removed == [
        "beat: Deployment shop-celery-beat deleted",
        "flower: Deployment shop-flower deleted",
        "flower: Service shop-flower deleted",
    ]
    assert not events(kube, "QueueRemoved")


def test_beat_scaled_by_hand_goes_back_to_one_and_a_deleted_service_comes_back(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, with_beat_and_flower("shop"))
    wait_for(lambda: "shop-flower" in services(kube) and "shop-celery-beat" in deployments(kube), message="created")
    client = api(kube)
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/shop-celery-beat"
    client.request("PATCH", path, body={"spec": {"replicas": 2}}, content_type="application/merge-patch+json")
    wait_for(lambda: replicas(kube, "shop-celery-beat") == 1, message="two beats put back to one")

    client.request("DELETE", f"/api/v1/namespaces/{NS}/services/shop-flower")
    wait_for(lambda: "shop-flower" in services(kube), message="the Service recreated")
    client.request("DELETE", path)
    wait_for(lambda: replicas(kube, "shop-celery-beat") == 1, message="beat's Deployment recreated")
    restored = lambda: [e for e in events(kube) if e["reason"] in ("DeploymentRestored", "ServiceRestored")]  # noqa: E731
    wait_for(lambda: len(restored()) == 3, message="an Event for each")
    messages = sorted(e["message"] for e in restored())
    assert messages == [
        "beat: Deployment deleted by hand, recreated",
        "beat: spec.replicas changed by OpenAPI-Generator; applied again",  # the test client's field manager
        "flower-service: Service deleted by hand, recreated",
    ]


def test_two_pools_running_beat_for_one_app_on_one_broker_are_both_told(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_secret(kube, "same-redis", {"url": redis_server.url})  # another Secret, the same broker
    first = pool_manifest("shop")
    first["spec"]["beat"] = BEAT
    second = pool_manifest("shop-copy", secret="same-redis", queues=[{"name": "mail"}])
    second["spec"]["beat"] = {}
    other_db = pool_manifest("elsewhere", secret="other-db", queues=[{"name": "other"}])
    other_db["spec"]["beat"] = {}
    create_secret(kube, "other-db", {"url": redis_server.url.rsplit("/", 1)[0] + "/3"})
    for manifest in (first, second, other_db):
        create_pool(kube, manifest)

    def reason(pool: str) -> str | None:
        return (beat_condition(kube, pool) or {}).get("reason")

    wait_for(lambda: reason("shop") == reason("shop-copy") == "DuplicateBeat", message="both told")
    assert "WorkerPool shop-copy in this namespace also runs beat" in beat_condition(kube, "shop")["message"]  # type: ignore[index]
    # another database of the broker is another broker (its condition is written in the background: maybe later)
    wait_for(lambda: reason("elsewhere") == "BeatNotReady", message="elsewhere not told")
    assert {e["involvedObject"]["name"] for e in events(kube, "DuplicateBeat")} == {"shop", "shop-copy"}

    patch_pool(kube, "shop-copy", {"spec": {"beat": None}})
    wait_for(lambda: reason("shop") == "BeatNotReady", message="the flag cleared")


def test_beats_announced_fire_starts_a_worker_before_the_task_arrives(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    """The pool's beat publishes its forecast (as ``workerpool-worker beat`` does, written here): a periodic task
    for ``default`` in 20 s. The operator reads it with the queue and starts a worker from zero before anything is
    waiting, and the decision names the periodic task."""
    from workerpool_operator import beat_forecast as bf

    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    client = redis_server.client()
    now = float(client.time()[0])
    entry = bf.ForecastEntry("nightly-export", "shop.export", "default", (now + 20.0,), now + 3600)
    forecast = bf.BeatForecast("shop-celery-beat-0", now, 3600, (entry,))
    client.set(bf.forecast_key("shop.celery:app"), bf.encode_forecast(forecast), ex=60)
    queues = [{"name": "default", "concurrency": 2, "minReplicas": 0, "maxReplicas": 5}]
    create_pool(kube, with_beat_and_flower("shop", queues=queues))

    wait_for(lambda: replicas(kube, "shop-default") == 1, message="a worker before the fire")
    assert client.llen("default") == 0, "nothing was waiting"
    reason = wait_for(
        lambda: (get_pool(kube, "shop").get("status", {}).get("queues") or [{}])[0].get("lastScaleReason"),
        message="the queue's last scale reason",
    )
    assert "beat: nightly-export" in reason, reason
