"""The operator, for real: kopf against the Kubernetes API emulator, a real redis-server, real Celery messages.

Short poll intervals and windows (tests/operator_helpers.FAST_SCALING) keep every story to a few seconds.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster
from tests.operator_helpers import (
    NS,
    api,
    condition,
    create_busy_and_idle_pods,
    create_pool,
    create_secret,
    delete_pool,
    deployments,
    drain_into_busy_and_idle_pods,
    enqueue,
    events,
    get_pool,
    patch_pool,
    pool_manifest,
    replicas,
    start_operator,
    wait_for,
)
from workerpool_operator.kube import metrics
from workerpool_operator.kube.api import DELETION_COST
from workerpool_operator.kube.drift import edits
from workerpool_operator.kube.fields import FIELD_MANAGER, SCALER_MANAGER
from workerpool_operator.kube.render import LAST_APPLIED_ANNOTATION, render_deployments
from workerpool_operator.spec import WorkerPool


def _ready(kube: KubeCluster, pool: str) -> str | None:
    found = condition(kube, pool, "Ready")
    return None if found is None else str(found["status"])


def _writes(kube: KubeCluster) -> list[str]:
    return [f"{r.method} {r.url}" for r in kube.requests() if str(r.method) not in ("GET", "method.GET")]


def test_pool_gets_one_deployment_per_queue_exactly_as_rendered(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    queues = [{"name": "default", "concurrency": 2}, {"name": "mail", "pool": "threads", "concurrency": 8}]
    created = create_pool(kube, pool_manifest("shop", queues=queues))
    wait_for(lambda: len(deployments(kube)) == 2, message="two Deployments")
    expected = render_deployments(WorkerPool.from_object(created), uid=created["metadata"]["uid"])
    live = deployments(kube)
    for manifest in expected.values():
        found = live[manifest["metadata"]["name"]]
        assert edits(found, manifest) == [], f"{manifest['metadata']['name']} is not as applied"
        assert found["spec"]["replicas"] == 0  # minReplicas: the scaler owns it from here
        assert LAST_APPLIED_ANNOTATION not in found["metadata"]["annotations"]  # Server-Side Apply, no copy
        managers = {
            (e["manager"], e["operation"], e.get("subresource", "")) for e in found["metadata"]["managedFields"]
        }
        assert {(FIELD_MANAGER, "Apply", ""), (SCALER_MANAGER, "Apply", "scale")} <= managers
        ours = manifest["spec"]["template"]["spec"]["containers"][0]
        theirs = found["spec"]["template"]["spec"]["containers"][0]
        assert theirs["image"] == ours["image"] and theirs.get("command") == ours.get("command")
        assert [e["name"] for e in theirs["env"]] == [e["name"] for e in ours["env"]]
    wait_for(lambda: _ready(kube, "shop") == "True", message="Ready")
    status = get_pool(kube, "shop")["status"]
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert [q["name"] for q in status["queues"]] == ["default", "mail"]
    assert condition(kube, "shop", "BrokerReachable")["status"] == "True"  # type: ignore[index]


def test_a_new_pools_first_status_is_its_first_polls(operator: RunningOperator, redis_server: RedisServer) -> None:
    """A new pool is applied with 2 writes per Deployment (the apply, the scaler's) and no read, and its first
    status write already says what its first poll saw (Ready), with the generation it observed."""
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    created = create_pool(kube, pool_manifest("fresh", queues=[{"name": "default"}, {"name": "mail"}]))
    wait_for(lambda: _ready(kube, "fresh") == "True", message="Ready")
    time.sleep(0.5)  # (a later write would come after the report that made it Ready)
    mine = [r for r in kube.requests() if "fresh" in str(r.url)]
    statuses = [r for r in mine if str(r.url).split("?")[0].endswith("/workerpools/fresh/status")]
    first = statuses[0].data["status"]
    ready = next(c for c in first["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and first["observedGeneration"] == created["metadata"]["generation"]
    reads = [str(r.url) for r in mine if str(r.method) in ("GET", "method.GET") and "/deployments/" in str(r.url)]
    assert reads == [], reads


def test_replicas_follow_real_celery_backlog_up_and_back_down(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop"))  # concurrency 2, max 5
    wait_for(lambda: _ready(kube, "shop") == "True", message="Ready")

    enqueue(redis_server.url, "default", 7)  # ceil(7 / 2) = 4
    wait_for(lambda: replicas(kube, "shop-default") == 4, message="4 replicas")
    enqueue(redis_server.url, "default", 10)  # 17 / 2 -> 9, capped at maxReplicas 5
    wait_for(lambda: replicas(kube, "shop-default") == 5, message="5 replicas (max)")
    labels = {"namespace": NS, "pool": "shop", "queue_name": "default"}
    # Metrics are set by the reporter once the tick's scaling is done: they may trail the replicas a moment.
    wait_for(lambda: metrics.sample("workerpool_queue_backlog", labels) == 17, message="backlog metric")
    assert metrics.sample("workerpool_queue_desired_replicas", labels) == 5
    status = wait_for(
        lambda: get_pool(kube, "shop")["status"]["queues"][0].get("replicas") == 5 and get_pool(kube, "shop")["status"]
    )
    assert status["totalReplicas"] == 5 and status["queues"][0]["lastScaleReason"].startswith("scale up")

    redis_server.client().delete("default")  # drained
    time.sleep(1.0)
    assert replicas(kube, "shop-default") == 5, "scaled down inside the stabilization window"
    wait_for(lambda: replicas(kube, "shop-default") == 0, timeout=20, message="scale to zero after idle time")
    # The Event follows the scale call.
    wait_for(lambda: any("-> 0 replicas" in e["message"] for e in events(kube, "Scaled")), message="Event")
    scaled = [e["message"] for e in events(kube, "Scaled")]
    assert any("0 -> 4" in m for m in scaled), scaled
    assert metrics.sample("workerpool_scale_events_total", {**labels, "direction": "down", "reason": "idle"})
    assert metrics.sample("workerpool_scale_events_total", {**labels, "direction": "up", "reason": "wake_from_zero"})


STATUS_REFRESH = 2.0  # seconds; the operator's default is 30


@pytest.fixture
def short_status_refresh(monkeypatch: pytest.MonkeyPatch) -> float:
    """A status refresh short enough to watch a whole one (set before the operator starts: list it first)."""
    monkeypatch.setenv("WORKERPOOL_OPERATOR_STATUS_REFRESH", str(STATUS_REFRESH))
    return STATUS_REFRESH


def _backlog_written(kube: KubeCluster, pool: str) -> int | None:
    queues = (get_pool(kube, pool).get("status") or {}).get("queues") or [{}]
    backlog = queues[0].get("backlog")
    return None if backlog is None else int(backlog)


def test_no_api_writes_at_steady_state(
    short_status_refresh: float, operator: RunningOperator, redis_server: RedisServer
) -> None:
    """An idle pool writes nothing over more than a whole status refresh (figures that moved at rest would be
    written at the refresh); and, so that this can fail, a figure that moves is written at the refresh."""
    refresh = short_status_refresh
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop", queues=[{"name": "default", "minReplicas": 1, "maxReplicas": 1}]))
    wait_for(lambda: _ready(kube, "shop") == "True", message="Ready")
    time.sleep(refresh + 1.0)  # the first polls, and any figure the start-up left for the refresh
    before = len(_writes(kube))
    time.sleep(refresh + 1.5)  # a whole refresh and three polls (0.5 s) more
    assert _writes(kube)[before:] == []

    # The queue wakes (backlog 0 -> 2, written at once); then only a figure moves (2 -> 4, replicas held at max 1).
    enqueue(redis_server.url, "default", 2)
    wait_for(lambda: _backlog_written(kube, "shop") == 2, timeout=5, message="the wake written")
    seen = time.monotonic()
    enqueue(redis_server.url, "default", 2)
    time.sleep(max(0.0, seen + refresh - 0.5 - time.monotonic()))
    assert _backlog_written(kube, "shop") == 2, "a figure alone was written before the refresh"
    wait_for(lambda: _backlog_written(kube, "shop") == 4, timeout=2.0, message="the figure written at the refresh")


def test_removing_a_queue_deletes_its_deployment_and_deleting_the_pool_collects_all(
    operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    queues: list[dict[str, Any]] = [{"name": "default"}, {"name": "mail", "minReplicas": 2}]
    create_pool(kube, pool_manifest("shop", queues=queues))
    wait_for(lambda: set(deployments(kube)) == {"shop-default", "shop-mail"}, message="two Deployments")
    wait_for(lambda: replicas(kube, "shop-mail") == 2, message="the mail queue at its minimum")

    patch_pool(kube, "shop", {"spec": {"queues": [{"name": "mail", "minReplicas": 3}]}})
    wait_for(lambda: set(deployments(kube)) == {"shop-mail"}, message="default removed")
    wait_for(lambda: replicas(kube, "shop-mail") == 3, message="brought inside the new bounds")
    wait_for(lambda: [q["name"] for q in get_pool(kube, "shop")["status"]["queues"]] == ["mail"])
    wait_for(lambda: events(kube, "QueueRemoved"), message="the QueueRemoved Event")

    delete_pool(kube, "shop")
    wait_for(lambda: not deployments(kube), message="Deployments garbage-collected")
    time.sleep(1.0)  # the loop has forgotten the pool: nothing recreated, no errors
    assert not deployments(kube)


def test_spec_edit_keeps_the_scalers_replicas(operator: RunningOperator, redis_server: RedisServer) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    template = {"image": "registry.example/shop-worker:1.2", "nodeSelector": {"pool": "workers"}}
    create_pool(kube, pool_manifest("shop", template=template))
    enqueue(redis_server.url, "default", 6)
    wait_for(lambda: replicas(kube, "shop-default") == 3, message="3 replicas")
    pod_spec = lambda: deployments(kube)["shop-default"]["spec"]["template"]["spec"]  # noqa: E731
    assert pod_spec()["nodeSelector"] == {"pool": "workers"}
    edit = {"spec": {"template": {"image": "registry.example/shop-worker:1.3", "nodeSelector": None}}}
    patch_pool(kube, "shop", edit)
    wait_for(lambda: pod_spec()["containers"][0]["image"] == "registry.example/shop-worker:1.3", message="rolled out")
    assert "nodeSelector" not in pod_spec(), "a field dropped from the spec stays on the Deployment"
    assert replicas(kube, "shop-default") == 3
    generation = get_pool(kube, "shop")["metadata"]["generation"]
    wait_for(lambda: get_pool(kube, "shop")["status"]["observedGeneration"] == generation)


def test_drift_is_put_back(operator: RunningOperator, redis_server: RedisServer) -> None:
    """A field of ours changed by hand is applied again, an Event names it and who changed it; a field we do not set,
    added by hand, stays; a Deployment deleted by hand comes back with the replicas it had."""
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop", queues=[{"name": "default", "minReplicas": 2}]))
    wait_for(lambda: replicas(kube, "shop-default") == 2, message="Deployment")
    client = api(kube)
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/shop-default"
    theirs = {"metadata": {"annotations": {"team.example/owner": "shop"}}}
    client.request("PATCH", path, body=theirs, content_type="application/merge-patch+json")
    edit = {"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "evil:latest"}]}}}}
    client.request("PATCH", path, body=edit, content_type="application/merge-patch+json")
    image = lambda: deployments(kube)["shop-default"]["spec"]["template"]["spec"]["containers"][0]["image"]  # noqa: E731
    wait_for(lambda: image() == "registry.example/shop-worker:1.2", message="manual edit reverted")
    wait_for(lambda: len(events(kube, "DeploymentRestored")) == 1, message="the Event (posted after the apply)")
    (restored,) = events(kube, "DeploymentRestored")
    message = restored["message"]
    assert message.startswith("queue default: spec.template.spec.containers[worker].image changed by OpenAPI-Generator")
    assert "removed" in message, "the merge patch replaced the container list: our other container fields went"
    live = deployments(kube)["shop-default"]
    assert live["metadata"]["annotations"]["team.example/owner"] == "shop", "a field we do not own is left alone"
    assert len(live["spec"]["template"]["spec"]["containers"][0]["env"]) > 1, "the fields removed by hand are back"

    client.request("DELETE", path)
    wait_for(lambda: "shop-default" in deployments(kube), message="Deployment recreated")
    assert replicas(kube, "shop-default") == 2
    wait_for(lambda: len(events(kube, "DeploymentRestored")) == 2, message="a second Event, for the recreation")
    time.sleep(1.0)
    assert len(events(kube, "DeploymentRestored")) == 2, "one Event per repair"


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERPOOL_OPERATOR_RETRY_DELAY", "1")


def test_missing_secret_then_created_without_restart(
    fast_retries: None, operator: RunningOperator, redis_server: RedisServer
) -> None:
    kube = operator.cluster
    create_pool(kube, pool_manifest("shop", secret="late"))
    wait_for(lambda: _ready(kube, "shop") == "False", message="Ready=False")
    ready = condition(kube, "shop", "Ready")
    assert ready is not None and ready["reason"] == "SecretNotFound" and "apps/late" in ready["message"]
    assert events(kube, "SecretNotFound")
    assert not deployments(kube)

    create_secret(kube, "late", {"other": "x"})
    wait_for(lambda: (condition(kube, "shop", "Ready") or {}).get("reason") == "SecretKeyNotFound", timeout=20)
    api(kube).request(
        "PATCH",
        f"/api/v1/namespaces/{NS}/secrets/late",
        body={"stringData": {"url": redis_server.url}},
        content_type="application/merge-patch+json",
    )
    wait_for(lambda: _ready(kube, "shop") == "True", timeout=30, message="Ready once the Secret is complete")
    assert "shop-default" in deployments(kube)
    assert events(kube, "Resolved")


@pytest.fixture
def fast_secret_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERPOOL_OPERATOR_SECRET_RECHECK", "1")


def test_rotated_secret_is_picked_up_and_a_deleted_one_reported(
    fast_secret_recheck: None,
    operator: RunningOperator,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop"))
    wait_for(lambda: _ready(kube, "shop") == "True", message="Ready")
    other = RedisServer(workdir=tmp_path_factory.mktemp("other")).start()
    try:
        client = api(kube)
        secret = f"/api/v1/namespaces/{NS}/secrets/redis"
        client.request(
            "PATCH", secret, body={"stringData": {"url": other.url}}, content_type="application/merge-patch+json"
        )
        wait_for(lambda: events(kube, "BrokerChanged"), timeout=10, message="the new URL picked up")
        enqueue(other.url, "default", 4)
        wait_for(lambda: replicas(kube, "shop-default") == 2, message="scaled on the new broker")
        client.request("DELETE", secret)
        wait_for(lambda: (condition(kube, "shop", "Ready") or {}).get("reason") == "SecretNotFound", timeout=10)
        assert replicas(kube, "shop-default") == 2  # a pool that cannot be observed keeps its replicas
    finally:
        other.stop()


def test_bad_broker_url_in_secret_is_reported(operator: RunningOperator) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": "http://not-redis.example"})
    create_pool(kube, pool_manifest("shop"))
    wait_for(lambda: (condition(kube, "shop", "Ready") or {}).get("reason") == "InvalidBrokerURL")
    assert events(kube, "InvalidBrokerURL")


def test_redis_outage_holds_replicas_and_recovers(operator: RunningOperator, redis_server: RedisServer) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    create_pool(kube, pool_manifest("shop", scaling={"idleSecondsBeforeZero": 1}))
    enqueue(redis_server.url, "default", 6)
    wait_for(lambda: replicas(kube, "shop-default") == 3, message="3 replicas")

    redis_server.stop()
    wait_for(lambda: (condition(kube, "shop", "BrokerReachable") or {}).get("status") == "False", timeout=15)
    reachable = condition(kube, "shop", "BrokerReachable")
    assert reachable is not None and reachable["reason"] == "RedisUnreachable"
    assert _ready(kube, "shop") == "False"
    assert events(kube, "RedisUnreachable")
    time.sleep(4.0)  # longer than window and idle time: a failed poll is no empty queue
    assert replicas(kube, "shop-default") == 3

    redis_server.start()  # comes back empty: now the queue really is idle
    wait_for(lambda: (condition(kube, "shop", "BrokerReachable") or {}).get("status") == "True", timeout=15)
    assert events(kube, "BrokerReachable")
    wait_for(lambda: replicas(kube, "shop-default") == 0, timeout=20, message="scale-down after recovery")


def _ready_pools_on_their_brokers(kube: KubeCluster, brokers: dict[str, RedisServer]) -> None:
    """One pool per entry, each with its broker URL in a Secret named after the pool, all Ready."""
    for pool, server in brokers.items():
        create_secret(kube, pool, {"url": server.url})
        create_pool(kube, pool_manifest(pool, secret=pool))
    wait_for(lambda: all(_ready(kube, pool) == "True" for pool in brokers), message="all Ready")


def test_two_pools_on_two_brokers_one_broken(
    operator: RunningOperator, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    kube = operator.cluster
    broken = RedisServer(workdir=tmp_path_factory.mktemp("broken")).start()
    try:
        _ready_pools_on_their_brokers(kube, {"good": redis_server, "bad": broken})
        broken.stop()
        wait_for(lambda: _ready(kube, "bad") == "False", timeout=15, message="bad pool not ready")
        enqueue(redis_server.url, "default", 4)
        wait_for(lambda: replicas(kube, "good-default") == 2, message="good pool still scales")
        assert _ready(kube, "good") == "True"
        assert replicas(kube, "bad-default") == 0
    finally:
        broken.stop()


def test_scale_down_marks_the_idlest_pods_first(operator: RunningOperator, redis_server: RedisServer) -> None:
    kube = operator.cluster
    create_secret(kube, "redis", {"url": redis_server.url})
    # drainTimeoutSeconds 0: the idlest pods are removed at once (the reports here never confirm a drain)
    queue = {"name": "default", "maxReplicas": 5, "scaling": {"drainTimeoutSeconds": 0}}  # concurrency 1
    create_pool(kube, pool_manifest("shop", queues=[queue]))
    enqueue(redis_server.url, "default", 3)
    wait_for(lambda: replicas(kube, "shop-default") == 3, message="3 replicas")
    create_busy_and_idle_pods(api(kube))
    assert not any(DELETION_COST in (p["metadata"].get("annotations") or {}) for p in kube.objects("v1/pods").values())

    # The queue drains into the workers: one busy pod, two idle ones, as the worker reports say.
    drain_into_busy_and_idle_pods(redis_server.client())
    wait_for(lambda: replicas(kube, "shop-default") == 1, timeout=15, message="scale down to 1")
    pods = kube.objects("v1/pods", NS)
    costs = {name: (pod["metadata"].get("annotations") or {}).get(DELETION_COST) for name, pod in pods.items()}
    assert costs["shop-default-busy"] is None
    assert costs["shop-default-idle1"] is not None and costs["shop-default-idle2"] is not None
    # Pods are found by name (the worker reports), never listed: the RBAC grants patch only.
    pod_calls = {
        (str(r.method.value).upper(), r.name) for r in kube.requests() if r.resource and r.resource.plural == "pods"
    }
    assert {method for method, _ in pod_calls} == {"POST", "PATCH"}  # the test creates, the operator patches
    assert {name for method, name in pod_calls if method == "PATCH"} == {"shop-default-idle1", "shop-default-idle2"}


def scaler_state(kube: KubeCluster, name: str) -> dict[str, Any]:
    """The engine's memory as written in the status: one compact JSON string."""
    raw = get_pool(kube, name)["status"].get("scalerState") or "{}"
    assert isinstance(raw, str)
    state: dict[str, Any] = json.loads(raw)
    return state


def test_operator_restart_mid_scale_converges_without_duplicates_or_lost_state(
    kube: KubeCluster, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKERPOOL_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("WORKERPOOL_OPERATOR_STATUS_REFRESH", "0.5")
    create_secret(kube, "redis", {"url": redis_server.url})
    # A long idle time: the state that matters is when the queue went idle.
    create_pool(kube, pool_manifest("shop", scaling={"idleSecondsBeforeZero": 6, "scaleDownStabilizationSeconds": 1}))
    first = start_operator(kube)
    try:
        enqueue(redis_server.url, "default", 6)
        wait_for(lambda: replicas(kube, "shop-default") == 3, message="3 replicas")
        redis_server.client().delete("default")
        wait_for(lambda: replicas(kube, "shop-default") == 1, timeout=10, message="down to 1, idle clock running")
        idle_since = wait_for(lambda: scaler_state(kube, "shop")["default"].get("idleSince"), timeout=5)
    finally:
        first.__exit__(None, None, None)
    assert first.exception is None

    uids = {name: d["metadata"]["uid"] for name, d in deployments(kube).items()}
    second = start_operator(kube)
    try:
        time.sleep(1.0)
        assert replicas(kube, "shop-default") == 1, "a restart must not change the decision"
        wait_for(lambda: replicas(kube, "shop-default") == 0, timeout=15, message="zero once idle long enough")
        went_to_zero = time.time()
        assert went_to_zero - idle_since < 6 + 4, "the idle clock restarted with the operator"
        state = scaler_state(kube, "shop")["default"]
        assert state.get("idleSince") == idle_since
    finally:
        second.__exit__(None, None, None)
    assert second.exception is None
    assert {name: d["metadata"]["uid"] for name, d in deployments(kube).items()} == uids  # same objects, no copies
    assert len(events(kube, "Scaled")) == 3  # 0->3, 3->1, 1->0: nothing scaled twice


def _operator_connections(server: RedisServer) -> int:
    """Clients connected to ``server``, this check's own connection left out."""
    client = server.client()
    try:
        own = client.client_id()
        return len([c for c in client.client_list() if int(c["id"]) != own])
    finally:
        client.close()


def test_connections_to_a_broker_no_pool_uses_are_closed(
    fast_secret_recheck: None,
    operator: RunningOperator,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    kube = operator.cluster
    other = RedisServer(workdir=tmp_path_factory.mktemp("other")).start()
    try:
        _ready_pools_on_their_brokers(kube, {"shop": redis_server, "mail": other})
        assert _operator_connections(redis_server) > 0 and _operator_connections(other) > 0

        # shop's Secret now names the other broker: nothing uses the first one any more.
        api(kube).request(
            "PATCH",
            f"/api/v1/namespaces/{NS}/secrets/shop",
            body={"stringData": {"url": other.url}},
            content_type="application/merge-patch+json",
        )
        wait_for(lambda: events(kube, "BrokerChanged"), timeout=10, message="the new URL picked up")
        wait_for(lambda: _operator_connections(redis_server) == 0, timeout=10, message="old broker disconnected")

        delete_pool(kube, "mail")  # shop still polls the other broker: its connection stays
        wait_for(lambda: "mail" not in kube.objects("workerpool.dev/v1alpha1/workerpools", NS), message="mail gone")
        time.sleep(1.5)
        assert _operator_connections(other) > 0

        delete_pool(kube, "shop")  # no pool left on any broker
        wait_for(lambda: _operator_connections(other) == 0, timeout=10, message="unused broker disconnected")
    finally:
        other.stop()
