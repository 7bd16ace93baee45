"""The test harness itself: each fixture is proven against the real thing it stands for."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.conftest import RedisServer, RunningOperator
from tests.kube import KubeCluster
from workerpool_operator.kube.api import KubeApi
from workerpool_operator.kube.fields import FIELD_MANAGER


def test_redis_server_is_real_and_private(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    client = redis_server.client()
    client.lpush("celery", "a", "b")
    assert client.llen("celery") == 2
    assert client.info("server")["tcp_port"] == redis_server.port


def test_redis_server_restart_loses_data_and_comes_back(redis_server: RedisServer) -> None:
    redis_server.client().set("k", "v")
    redis_server.restart()
    assert redis_server.client().get("k") is None  # --save "" --appendonly no: nothing persisted


def _apps(kube: KubeCluster) -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(kube.api_client())


def _deployment(name: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "apps"}
    if owner:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "w", "image": "busybox"}]},
            },
        },
    }


def test_kube_create_read_and_metadata(kube: KubeCluster) -> None:
    apps = _apps(kube)
    created = apps.create_namespaced_deployment("apps", _deployment("one"))
    assert created.metadata.uid
    assert created.metadata.generation == 1
    assert created.metadata.resource_version
    fetched = apps.read_namespaced_deployment("one", "apps")
    assert fetched.spec.replicas == 1
    assert fetched.metadata.uid == created.metadata.uid

    # A spec change bumps generation; a status or metadata change does not.
    apps.patch_namespaced_deployment("one", "apps", {"spec": {"replicas": 3}})
    apps.patch_namespaced_deployment("one", "apps", {"metadata": {"labels": {"x": "y"}}})
    after = apps.read_namespaced_deployment("one", "apps")
    assert after.spec.replicas == 3
    assert after.metadata.generation == 2
    assert int(after.metadata.resource_version) > int(created.metadata.resource_version)


def test_kube_watch_sees_changes(kube: KubeCluster) -> None:
    apps = _apps(kube)
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(apps.list_namespaced_deployment, "apps", timeout_seconds=5):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) >= 2:
                w.stop()

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.3)
    apps.create_namespaced_deployment("apps", _deployment("watched"))
    apps.patch_namespaced_deployment("watched", "apps", {"spec": {"replicas": 2}})
    thread.join(10)
    assert seen == [("ADDED", "watched"), ("MODIFIED", "watched")]


def test_kube_garbage_collects_owned_objects(kube: KubeCluster) -> None:
    apps = _apps(kube)
    owner = apps.create_namespaced_deployment("apps", _deployment("owner"))
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "owner", "uid": owner.metadata.uid}
    apps.create_namespaced_deployment("apps", _deployment("child", owner=ref))
    apps.create_namespaced_deployment("apps", _deployment("bystander"))
    apps.delete_namespaced_deployment("owner", "apps")
    assert set(kube.objects("apps/v1/deployments")) == {"bystander"}


def test_kube_not_found_is_a_real_404(kube: KubeCluster) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    with pytest.raises(kubernetes.client.ApiException) as info:
        core.read_namespaced_secret("missing", "apps")
    assert info.value.status == 404


def test_operator_logs_in_through_kubeconfig_and_watches(operator: RunningOperator) -> None:
    requests = operator.cluster.requests()
    assert any(r.headers.get("Authorization") == "Bearer test-token" for r in requests), "no authenticated call"
    assert any(r.params.get("watch") for r in requests), "kopf started no watch"
    assert operator.unexpected_errors() == []


def test_the_scale_benchmarks_emulator_answers_like_a_real_api_server(tmp_path: Path) -> None:
    """bench/api_server.py with ``realistic``: the objects carry what a real server adds (managed fields,
    defaults), and the simulated controller-manager writes each Deployment's status through ``/status``."""
    from bench.api_server import CONTROLLER_MANAGER, BenchApiServer

    emulator: list[BenchApiServer] = []

    def make() -> BenchApiServer:
        emulator.append(BenchApiServer(realistic=True))
        return emulator[0]

    cluster = KubeCluster(tmp_path, emulator=make).start()
    try:
        client = cluster.api_client()
        client.user_agent = "kubectl/v1.33.0"
        api = KubeApi(client)
        manifest = _deployment("one")
        manifest["metadata"] |= {"namespace": "a", "labels": {"app": "one"}}
        created = api.apply(manifest)
        api.apply({**manifest, "metadata": {**manifest["metadata"], "namespace": "b"}})
        assert created["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
        container = created["spec"]["template"]["spec"]["containers"][0]
        assert container["imagePullPolicy"] == "Always"  # busybox: no tag, so :latest
        assert container["terminationMessagePolicy"] == "File"
        (entry,) = created["metadata"]["managedFields"]
        assert (entry["manager"], entry["operation"]) == (FIELD_MANAGER, "Apply")
        assert 'k:{"name":"w"}' in str(entry["fieldsV1"])
        assert [d["metadata"]["namespace"] for d in api.list_deployments("a", "app=one")] == ["a"]

        def ready() -> dict[str, Any] | None:
            found = api.get_deployment("a", "one")
            return found if found and (found.get("status") or {}).get("readyReplicas") == 1 else None

        deadline = time.monotonic() + 20
        while (live := ready()) is None:
            assert time.monotonic() < deadline, "the simulated controller-manager never wrote a ready status"
            time.sleep(0.2)
        assert {c["type"]: c["status"] for c in live["status"]["conditions"]} == {
            "Available": "True",
            "Progressing": "True",
        }
        managers = {(e["manager"], e.get("subresource")) for e in live["metadata"]["managedFields"]}
        assert managers == {(FIELD_MANAGER, None), (CONTROLLER_MANAGER, "status")}
        assert int(live["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
        assert live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
        assert live["metadata"]["generation"] == 1  # written through /status: no new generation
        assert emulator[0].status_writes >= 3  # two for "a" (created, then ready), at least one for "b"
    finally:
        cluster.stop()


def test_the_scale_benchmarks_emulator_resumes_a_watch_from_its_version(tmp_path: Path) -> None:
    """A real API server's watch from resourceVersion N sends only what changed after N (its watch cache); kmock
    sends every object again. The scale benchmark's emulator (the test emulator's watches) resumes as the real one
    does: kopf watches again from its last version each time a watch ends, and the objects it already has must not
    come back."""
    from bench.api_server import BenchApiServer

    cluster = KubeCluster(tmp_path, emulator=BenchApiServer).start()
    try:
        apps = _apps(cluster)
        for name in ("old1", "old2"):
            apps.create_namespaced_deployment("apps", _deployment(name))
        listed = apps.list_namespaced_deployment("apps")
        assert all(item.metadata.managed_fields for item in listed.items), "managedFields, as on a real server"
        since = listed.metadata.resource_version
        assert int(since) >= 2, "a list says the latest version, as a real server's does"
        apps.patch_namespaced_deployment("old2", "apps", {"spec": {"replicas": 3}})
        apps.create_namespaced_deployment("apps", _deployment("new"))

        def resumed(version: str | None) -> list[tuple[str, str]]:
            seen: list[tuple[str, str]] = []
            w = kubernetes.watch.Watch()
            for event in w.stream(apps.list_namespaced_deployment, "apps", resource_version=version, timeout_seconds=2):
                seen.append((event["type"], event["object"].metadata.name))
                if len(seen) >= 3 or (version is not None and len(seen) >= 2):
                    w.stop()
            return seen

        assert sorted(name for _, name in resumed(since)) == ["new", "old2"], "only what changed after the list"
        assert sorted(name for _, name in resumed(None)) == ["new", "old1", "old2"], "from nothing: everything"
    finally:
        cluster.stop()


def test_the_scale_benchmarks_controller_manager_keeps_to_its_qps() -> None:
    """The simulated controller-manager takes every API call from one token bucket, as client-go's limiter does:
    a burst at once, then ``qps`` a second."""
    from bench.api_server import TokenBucket

    now = [0.0]
    bucket = TokenBucket(20.0, 30, clock=lambda: now[0])
    assert [bucket.delay() for _ in range(30)] == [0.0] * 30  # the burst
    assert bucket.delay() == pytest.approx(1 / 20)
    assert bucket.delay(4) == pytest.approx(5 / 20)  # queued behind the one before
    now[0] = 10.0  # refilled, up to the burst only
    assert bucket.delay(30) == 0.0
    assert bucket.delay() == pytest.approx(1 / 20)
    assert bucket.taken == 66
    unbounded = TokenBucket(None, 30, clock=lambda: now[0])
    assert unbounded.delay(1000) == 0.0 and unbounded.taken == 1000


def test_the_scale_benchmarks_emulator_answers_as_the_test_emulator_without_kmocks_matching(tmp_path: Path) -> None:
    """The bench's emulator answers reads and writes from its store at once, skipping kmock's reaction matching (a
    third of its CPU at 1,000 pools): the same requests get the same statuses and bodies from both emulators,
    errors included, and each answer is kept for the request log as kmock's path keeps it."""
    from bench.api_server import BenchApiServer

    from tests.http_client import STRATEGIC, Http

    def replies(emulator: Any, folder: Path) -> tuple[list[tuple[int, Any]], list[int | None]]:
        folder.mkdir()
        cluster = KubeCluster(folder, emulator=emulator).start()
        try:
            http = Http(cluster)
            one = "/apis/apps/v1/namespaces/apps/deployments/one"
            body = _deployment("one")
            as_yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: one\nspec:\n  replicas: 2\n"
            calls = [
                http.post("/apis/apps/v1/namespaces/apps/deployments", body),
                http.post("/apis/apps/v1/namespaces/apps/deployments", body),  # 409
                http.get(one),
                http.get("/apis/apps/v1/namespaces/apps/deployments/none"),  # 404
                http.get("/apis/apps/v1/namespaces/apps/deployments"),
                http.patch(one, {"spec": {"replicas": 2}}),
                http.patch(one, {"spec": {"paused": True}}, content_type=STRATEGIC),
                http.apply(one, {**body, "spec": {**body["spec"], "replicas": 4}}, "bench"),  # 409: the tester's
                http.apply(one, {**body, "spec": {**body["spec"], "replicas": 4}}, "bench", force=True),
                http.apply(one, as_yaml, "other"),  # 409: replicas belong to "bench"
                http.apply(one, as_yaml, "other", force=True),
                http.apply(one, "{not: [yaml", "other"),  # 400
                http.apply(one, body, None),  # 422: no field manager
                http.put(f"{one}/scale", {"metadata": {"name": "one"}, "spec": {"replicas": 5}}),
                http.get(f"{one}/scale"),
                http.put(one, {**http.get(one).body, "spec": {**body["spec"], "replicas": 6}}),
                http.delete(one),
                http.delete(one),  # 404
            ]
            answers = [cluster.answer(request) for request in cluster.requests()]
        finally:
            cluster.stop()
        return [(reply.status, _comparable(reply.body)) for reply in calls], answers

    class Direct(BenchApiServer):
        """Objects as big as a real server's (managedFields, so applies conflict), without the controller-manager
        (its status writes come at times of their own)."""

        def __init__(self) -> None:
            super().__init__(realistic=True)

        def enqueue(self, key: Any, delay: float = 0.0) -> None:
            pass

    class ThroughKmock(Direct):
        def _served_directly(self, request: Any) -> None:
            return None

    bench, bench_answers = replies(Direct, tmp_path / "bench")
    test, test_answers = replies(ThroughKmock, tmp_path / "kmock")
    statuses = [status for status, _ in bench]
    assert statuses == [201, 409, 200, 404, 200, 200, 200, 409, 200, 409, 200, 400, 422, 200, 200, 200, 200, 404]
    assert bench == test
    assert bench_answers == test_answers and None not in bench_answers


def _comparable(body: Any) -> Any:
    """An answer without what differs from one run to the next (uid, times)."""
    if isinstance(body, dict):
        return {k: _comparable(v) for k, v in body.items() if k not in ("uid", "creationTimestamp", "time")}
    if isinstance(body, list):
        return [_comparable(item) for item in body]
    return body
