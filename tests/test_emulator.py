"""The API emulator on its own, over HTTP: each way it answers as a real API server does (tests/apiserver), and
none of them relying on the operator. Server-Side Apply has its own module (tests/test_emulator_apply.py)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.http_client import STRATEGIC, Http
from tests.kube import CUSTOM_RESOURCES, ApiServerEmulator, KubeCluster, pod_manifest

NS = "apps"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
SERVICES = f"/api/v1/namespaces/{NS}/services"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
PODS = f"/api/v1/namespaces/{NS}/pods"
POOLS = f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools"


def deployment(name: str = "shop", **container: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "worker", "image": "shop:1.2", **container}]},
            },
        },
    }


def pool(name: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "workerpool.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {
            "broker": {"url": "redis://redis:6379/0"},
            "app": "shop.celery:app",
            "template": {"image": "shop:1.2"},
            "queues": [{"name": "default"}],
        },
    }


@pytest.fixture
def http(kube: KubeCluster) -> Http:
    return Http(kube)


@pytest.fixture
def strict_watches(tmp_path: Path) -> Iterator[Http]:
    """An emulator that keeps 3 events per resource and sends a bookmark every 0.3 s."""
    cluster = KubeCluster(
        tmp_path,
        emulator=lambda: ApiServerEmulator(custom_resources=CUSTOM_RESOURCES, history_limit=3, bookmark_interval=0.3),
    ).start()
    try:
        yield Http(cluster)
    finally:
        cluster.stop()


def version(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


class Watcher:
    """A watch in a thread of its own, from a version, for the events a test causes meanwhile."""

    def __init__(self, http: Http, path: str, since: int, seconds: int = 2, **selectors: str) -> None:
        self.events: list[dict[str, Any]] = []
        params = {"resourceVersion": str(since), **selectors}
        self._thread = threading.Thread(target=lambda: self.events.extend(http.watch(path, seconds, **params)))
        self._thread.start()
        time.sleep(0.3)  # the watch is registered

    def join(self) -> list[dict[str, Any]]:
        self._thread.join(30)
        return self.events


# --- a refused write changes nothing -------------------------------------------------------------------------


def test_a_write_a_reaction_refuses_changes_nothing_and_sends_no_event(kube: KubeCluster, http: Http) -> None:
    created = http.post(DEPLOYMENTS, deployment()).body
    assert kube.emulator is not None
    kube.emulator["patch", f"{DEPLOYMENTS}/shop"] << kmock.Response(status=503, payload={"message": "down"})  # type: ignore[attr-defined]
    watcher = Watcher(http, DEPLOYMENTS, version(created))
    refused = http.patch(f"{DEPLOYMENTS}/shop", {"spec": {"replicas": 7}})
    assert refused.status == 503
    assert watcher.join() == []
    live = http.get(f"{DEPLOYMENTS}/shop").body
    assert live["spec"]["replicas"] == 1 and version(live) == version(created)
    (request,) = [r for r in kube.requests() if str(r.method) == "method.PATCH"]
    assert kube.answer(request) == 503


def test_a_conflict_or_an_invalid_write_changes_nothing(http: Http) -> None:
    created = http.post(DEPLOYMENTS, deployment()).body
    watcher = Watcher(http, DEPLOYMENTS, version(created))
    stale = http.patch(f"{DEPLOYMENTS}/shop", {"metadata": {"resourceVersion": "1000"}, "spec": {"replicas": 2}})
    assert stale.status == 409 and "the object has been modified" in stale.message
    invalid = http.patch(f"{DEPLOYMENTS}/shop", {"spec": {"replicas": -1}})
    assert invalid.status == 422
    assert invalid.message.startswith('Deployment.apps "shop" is invalid: spec.replicas: Invalid value: -1')
    assert watcher.join() == []
    assert http.get(f"{DEPLOYMENTS}/shop").body == created


def test_a_write_that_changes_nothing_keeps_the_version_and_sends_no_event(http: Http) -> None:
    created = http.post(DEPLOYMENTS, deployment()).body
    watcher = Watcher(http, DEPLOYMENTS, version(created))
    same = http.patch(
        f"{DEPLOYMENTS}/shop",
        {"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "worker", "image": "shop:1.2"}]}}}},
    )
    assert same.status == 200 and version(same.body) == version(created)
    assert watcher.join() == []


# --- decoding, normalisation, defaults, validation ---------------------------------------------------------


def test_quantities_are_stored_in_their_canonical_form(http: Http) -> None:
    resources = {"requests": {"cpu": 0.5, "memory": "1.5Gi"}, "limits": {"cpu": 2, "memory": "1536Mi"}}
    created = http.post(DEPLOYMENTS, deployment(resources=resources)).body
    stored = created["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert stored == {"requests": {"cpu": "500m", "memory": "1536Mi"}, "limits": {"cpu": "2", "memory": "1536Mi"}}
    above = {"requests": {"cpu": "3"}, "limits": {"cpu": 2}}
    refused = http.post(DEPLOYMENTS, deployment("above", resources=above))
    assert refused.status == 422 and "must be less than or equal to cpu limit of 2" in refused.message


def test_wrong_types_are_refused_as_the_server_decodes_them(http: Http) -> None:
    body = deployment()
    body["spec"]["replicas"] = "lots"
    created = http.post(DEPLOYMENTS, body)
    assert created.status == 400
    assert created.message == (
        'Deployment in version "v1" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct '
        "field DeploymentSpec.spec.replicas of type int32"
    )
    http.post(DEPLOYMENTS, deployment())
    patched = http.patch(f"{DEPLOYMENTS}/shop", {"spec": {"replicas": "lots"}})
    assert patched.status == 422 and patched.message.startswith('"" is invalid: patch: Invalid value: ')
    assert patched.message.endswith(
        "cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
    )
    quantity = http.patch(
        f"{DEPLOYMENTS}/shop",
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": "worker", "resources": {"limits": {"cpu": "lots"}}}]}}
            }
        },
    )
    assert quantity.status == 422 and "quantities must match the regular expression" in quantity.message
    assert http.get(f"{DEPLOYMENTS}/shop").body["spec"]["replicas"] == 1


def test_empty_values_json_omits_are_omitted_and_unknown_fields_dropped(http: Http) -> None:
    body = deployment(
        args=[],
        env=[{"name": "EMPTY", "value": ""}],
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp", "readOnly": False}],
    )
    body["spec"]["template"]["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    body["spec"]["template"]["spec"]["nodeSelector"] = {}
    body["spec"]["surprise"] = True
    created = http.post(DEPLOYMENTS, body).body
    pod = created["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "args" not in container and container["env"] == [{"name": "EMPTY"}]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}] and "nodeSelector" not in pod
    assert "surprise" not in created["spec"]
    strict = http.post(DEPLOYMENTS, {**body, "metadata": {"name": "other"}}, params={"fieldValidation": "Strict"})
    assert strict.status == 400 and 'unknown field "spec.surprise"' in strict.message


def test_a_deployment_gets_the_defaults_of_the_api_server(http: Http) -> None:
    probe = {"exec": {"command": ["true"]}, "periodSeconds": 5}
    body = deployment(
        ports=[{"containerPort": 80}],
        readinessProbe=probe,
        env=[{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    )
    body["spec"]["template"]["spec"]["volumes"] = [{"name": "ca", "secret": {"secretName": "ca"}}]
    spec = http.post(DEPLOYMENTS, body).body["spec"]
    assert spec["replicas"] == 1 and spec["revisionHistoryLimit"] == 10 and spec["progressDeadlineSeconds"] == 600
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    pod = spec["template"]["spec"]
    assert {
        k: pod[k]
        for k in ("restartPolicy", "dnsPolicy", "schedulerName", "terminationGracePeriodSeconds", "securityContext")
    } == {
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
        "terminationGracePeriodSeconds": 30,
        "securityContext": {},
    }
    (container,) = pod["containers"]
    assert container["imagePullPolicy"] == "IfNotPresent" and container["resources"] == {}
    assert (container["terminationMessagePath"], container["terminationMessagePolicy"]) == (
        "/dev/termination-log",
        "File",
    )
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert container["readinessProbe"] == {**probe, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}
    assert container["env"][0]["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name", "apiVersion": "v1"}
    assert pod["volumes"][0]["secret"] == {"secretName": "ca", "defaultMode": 420}
    latest = http.post(DEPLOYMENTS, deployment("latest", image="shop")).body
    assert latest["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    recreate = deployment("recreate")
    recreate["spec"]["strategy"] = {"type": "Recreate"}
    assert http.post(DEPLOYMENTS, recreate).body["spec"]["strategy"] == {"type": "Recreate"}


def test_a_service_gets_its_defaults_and_a_cluster_ip(http: Http) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "flower"},
        "spec": {"selector": {"app": "f"}, "ports": [{"port": 5555}]},
    }
    spec = http.post(SERVICES, body).body["spec"]
    assert spec["ports"] == [{"port": 5555, "protocol": "TCP", "targetPort": 5555}]
    assert (spec["type"], spec["sessionAffinity"], spec["internalTrafficPolicy"]) == ("ClusterIP", "None", "Cluster")
    assert spec["clusterIP"].startswith("10.") and spec["clusterIPs"] == [spec["clusterIP"]]
    bad_name = http.post(SERVICES, {**body, "metadata": {"name": "9flower"}})
    assert bad_name.status == 422 and "a DNS-1035 label must consist of" in bad_name.message


def test_secret_string_data_is_merged_into_data_and_never_returned(http: Http) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"}, "stringData": {"url": "redis://a"}}
    created = http.post(SECRETS, body).body
    assert "stringData" not in created and created["type"] == "Opaque"
    assert base64.b64decode(created["data"]["url"]) == b"redis://a"
    patched = http.patch(f"{SECRETS}/redis", {"stringData": {"url": "redis://b"}}).body
    assert base64.b64decode(patched["data"]["url"]) == b"redis://b" and "stringData" not in patched


def test_invalid_objects_are_refused_with_the_servers_reasons(http: Http) -> None:
    mismatch = deployment()
    mismatch["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    refused = http.post(DEPLOYMENTS, mismatch)
    assert refused.status == 422 and "`selector` does not match template `labels`" in refused.message
    assert http.post(DEPLOYMENTS, deployment("Shop_1")).status == 422
    long_label = deployment()
    long_label["metadata"]["labels"]["queue"] = "q" * 64
    assert "must be no more than 63 characters" in http.post(DEPLOYMENTS, long_label).message
    no_image = http.post(
        PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    )
    assert no_image.status == 422 and "spec.containers[0].image: Required value" in no_image.message
    http.post(DEPLOYMENTS, deployment())
    immutable = http.patch(
        f"{DEPLOYMENTS}/shop",
        {
            "spec": {
                "selector": {"matchLabels": {"app": "shop", "x": "y"}},
                "template": {"metadata": {"labels": {"x": "y"}}},
            }
        },
    )
    assert immutable.status == 422 and "field is immutable" in immutable.message
    invalid_pool = pool()
    invalid_pool["spec"]["queues"][0]["concurrency"] = "lots"
    answer = http.post(POOLS, invalid_pool)
    assert answer.status == 422 and 'WorkerPool.workerpool.dev "shop" is invalid' in answer.message
    http.post(POOLS, pool())
    crossed = http.patch(
        f"{POOLS}/shop", {"spec": {"queues": [{"name": "default", "minReplicas": 5, "maxReplicas": 1}]}}
    )
    assert crossed.status == 422 and "minReplicas must not exceed maxReplicas" in crossed.message  # a CEL rule
    assert http.patch(f"{POOLS}/shop/status", {"status": {"observedGeneration": 1}}).status == 200


def test_a_custom_resource_is_defaulted_and_pruned_by_its_schema(http: Http) -> None:
    body = pool()
    body["spec"]["unknownField"] = 1
    created = http.post(POOLS, body).body
    assert "unknownField" not in created["spec"]
    assert created["spec"]["queues"][0]["concurrency"] > 0  # the CRD's default


# --- metadata -------------------------------------------------------------------------------------------------


def test_generation_moves_with_the_spec_and_not_with_metadata_or_status(http: Http) -> None:
    created = http.post(POOLS, pool()).body
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    labelled = http.patch(f"{POOLS}/shop", {"metadata": {"labels": {"a": "b"}}}).body
    assert labelled["metadata"]["generation"] == 1
    status = http.patch(f"{POOLS}/shop/status", {"status": {"observedGeneration": 1}}).body
    assert status["metadata"]["generation"] == 1
    changed = http.patch(f"{POOLS}/shop", {"spec": {"app": "other.celery:app"}}).body
    assert changed["metadata"]["generation"] == 2
    http.post(DEPLOYMENTS, deployment())
    annotated = http.patch(f"{DEPLOYMENTS}/shop", {"metadata": {"annotations": {"a": "b"}}}).body
    assert annotated["metadata"]["generation"] == 2  # a Deployment's annotations go to its ReplicaSets


def test_finalizers_hold_a_deletion_and_owners_take_their_dependents(http: Http) -> None:
    owner = http.post(POOLS, {**pool(), "metadata": {"name": "shop", "finalizers": ["x/y"]}}).body
    dependent = deployment()
    dependent["metadata"]["ownerReferences"] = [
        {"apiVersion": "workerpool.dev/v1alpha1", "kind": "WorkerPool", "name": "shop", "uid": owner["metadata"]["uid"]}
    ]
    http.post(DEPLOYMENTS, dependent)
    marked = http.delete(f"{POOLS}/shop").body
    assert marked["metadata"]["deletionTimestamp"] and http.get(f"{DEPLOYMENTS}/shop").status == 200
    http.patch(f"{POOLS}/shop", {"metadata": {"finalizers": None}})
    assert http.get(f"{POOLS}/shop").status == 404
    assert http.get(f"{DEPLOYMENTS}/shop").status == 404


# --- lists and watches ----------------------------------------------------------------------------------------


def test_lists_carry_their_version_select_by_label_and_page(http: Http) -> None:
    for name in ("a", "b", "c"):
        http.post(DEPLOYMENTS, deployment(name))
    listed = http.get(DEPLOYMENTS).body
    assert listed["kind"] == "DeploymentList" and listed["metadata"]["resourceVersion"] == "3"
    assert [d["metadata"]["name"] for d in listed["items"]] == ["a", "b", "c"]
    assert "kind" not in listed["items"][0]  # typed lists name the kind once
    assert [d["metadata"]["name"] for d in http.get(DEPLOYMENTS, labelSelector="app in (a,c)").body["items"]] == [
        "a",
        "c",
    ]
    assert [d["metadata"]["name"] for d in http.get(DEPLOYMENTS, labelSelector="app!=a").body["items"]] == ["b", "c"]
    assert [d["metadata"]["name"] for d in http.get(DEPLOYMENTS, fieldSelector="metadata.name=b").body["items"]] == [
        "b"
    ]
    first = http.get(DEPLOYMENTS, limit="2").body
    assert len(first["items"]) == 2 and first["metadata"]["remainingItemCount"] == 1
    rest = http.get(DEPLOYMENTS, limit="2", **{"continue": first["metadata"]["continue"]}).body
    assert [d["metadata"]["name"] for d in rest["items"]] == ["c"] and "continue" not in rest["metadata"]
    assert http.get(DEPLOYMENTS, labelSelector="app in (a").status == 400


def test_a_watch_resumes_from_its_version_and_ends_at_its_timeout(http: Http) -> None:
    for name in ("old1", "old2"):
        http.post(DEPLOYMENTS, deployment(name))
    since = http.get(DEPLOYMENTS).body["metadata"]["resourceVersion"]
    http.patch(f"{DEPLOYMENTS}/old2", {"spec": {"replicas": 3}})
    http.post(DEPLOYMENTS, deployment("new"))
    started = time.monotonic()
    resumed = [(e["type"], e["object"]["metadata"]["name"]) for e in http.watch(DEPLOYMENTS, 1, resourceVersion=since)]
    assert resumed == [("MODIFIED", "old2"), ("ADDED", "new")]
    assert 0.9 < time.monotonic() - started < 5, "the stream ends at timeoutSeconds"
    everything = [(e["type"], e["object"]["metadata"]["name"]) for e in http.watch(DEPLOYMENTS, 1)]
    assert sorted(everything) == [("ADDED", "new"), ("ADDED", "old1"), ("ADDED", "old2")]
    selected = [e["object"]["metadata"]["name"] for e in http.watch(DEPLOYMENTS, 1, labelSelector="app=new")]
    assert selected == ["new"]


def test_a_watch_from_a_forgotten_version_is_gone_and_bookmarks_come_when_asked(strict_watches: Http) -> None:
    http = strict_watches
    for name in ("a", "b", "c", "d", "e"):
        http.post(DEPLOYMENTS, deployment(name))
    (gone,) = list(http.watch(DEPLOYMENTS, 5, resourceVersion="1"))
    assert gone["type"] == "ERROR"
    assert {k: gone["object"][k] for k in ("code", "reason")} == {"code": 410, "reason": "Expired"}
    assert gone["object"]["message"].startswith("too old resource version: 1")
    kept = list(http.watch(DEPLOYMENTS, 1, resourceVersion="3"))
    assert [e["object"]["metadata"]["name"] for e in kept] == ["d", "e"]
    events = list(http.watch(DEPLOYMENTS, 1, resourceVersion="5", allowWatchBookmarks="true"))
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert events[-1]["object"] == {"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"resourceVersion": "5"}}
    assert all(e["type"] != "BOOKMARK" for e in http.watch(DEPLOYMENTS, 1, resourceVersion="5"))


def test_an_object_leaving_a_watchs_selector_is_deleted_for_that_watch(http: Http) -> None:
    created = http.post(DEPLOYMENTS, deployment()).body
    watcher = Watcher(http, DEPLOYMENTS, version(created), labelSelector="tier=front")
    http.patch(f"{DEPLOYMENTS}/shop", {"metadata": {"labels": {"tier": "front"}}})
    http.patch(f"{DEPLOYMENTS}/shop", {"metadata": {"labels": {"tier": "back"}}})
    assert [e["type"] for e in watcher.join()] == ["ADDED", "DELETED"]


# --- subresources ---------------------------------------------------------------------------------------------


def test_status_changes_only_through_status_and_status_changes_only_status(http: Http) -> None:
    http.post(POOLS, pool())
    main = http.patch(f"{POOLS}/shop", {"status": {"observedGeneration": 5}}).body
    assert "status" not in main
    through_status = http.patch(
        f"{POOLS}/shop/status", {"spec": {"app": "x:y"}, "status": {"observedGeneration": 1}}
    ).body
    assert through_status["spec"]["app"] == "shop.celery:app" and through_status["status"] == {"observedGeneration": 1}
    created = http.post(DEPLOYMENTS, {**deployment(), "status": {"replicas": 9}}).body
    assert created["status"] == {}
    status = http.patch(f"{DEPLOYMENTS}/shop/status", {"spec": {"replicas": 4}, "status": {"replicas": 2}}).body
    assert status["spec"]["replicas"] == 1 and status["status"] == {"replicas": 2}
    entry = [e for e in status["metadata"]["managedFields"] if e.get("subresource") == "status"]
    assert entry and entry[0]["fieldsV1"] == {"f:status": {"f:replicas": {}}}
    assert http.patch(f"{SECRETS}/x/status", {}).status == 404


def test_scale_speaks_scale_and_moves_only_the_replicas(http: Http) -> None:
    http.post(DEPLOYMENTS, deployment())
    scale = http.get(f"{DEPLOYMENTS}/shop/scale").body
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 1} and scale["status"] == {"replicas": 0, "selector": "app=shop"}
    patched = http.patch(
        f"{DEPLOYMENTS}/shop/scale", {"spec": {"replicas": 3}, "metadata": {"labels": {"x": "y"}}}
    ).body
    assert patched["kind"] == "Scale" and patched["spec"] == {"replicas": 3}
    live = http.get(f"{DEPLOYMENTS}/shop").body
    assert (
        live["spec"]["replicas"] == 3 and live["metadata"]["generation"] == 2 and "x" not in live["metadata"]["labels"]
    )
    (entry,) = [e for e in live["metadata"]["managedFields"] if e.get("subresource") == "scale"]
    assert entry["operation"] == "Update" and entry["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    put = http.put(f"{DEPLOYMENTS}/shop/scale", {**patched, "spec": {"replicas": 5}}).body
    assert put["spec"] == {"replicas": 5} and http.get(f"{DEPLOYMENTS}/shop").body["metadata"]["generation"] == 3
    stale = http.put(f"{DEPLOYMENTS}/shop/scale", {**patched, "spec": {"replicas": 6}})
    assert stale.status == 409
    strategic = http.patch(f"{DEPLOYMENTS}/shop/scale", {"spec": {"replicas": 0}}, content_type=STRATEGIC).body
    assert strategic["spec"] == {} and http.get(f"{DEPLOYMENTS}/shop").body["spec"]["replicas"] == 0


def test_strategic_merge_patch_merges_lists_by_their_keys(http: Http) -> None:
    http.post(DEPLOYMENTS, deployment(env=[{"name": "A", "value": "1"}]))
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "worker", "env": [{"name": "B", "value": "2"}]},
                        {"name": "side", "image": "side:1"},
                    ]
                }
            }
        }
    }
    pod = http.patch(f"{DEPLOYMENTS}/shop", patch, content_type=STRATEGIC).body["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["worker", "side"]
    assert pod["containers"][0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert http.patch(f"{POOLS}/shop", {"spec": {}}, content_type=STRATEGIC).status == 415


def test_a_replace_needs_no_version_but_a_stale_one_conflicts(http: Http) -> None:
    created = http.post(PODS, pod_manifest("p", NS)).body
    replaced = http.put(f"{PODS}/p", {**created, "metadata": {**created["metadata"], "labels": {"a": "b"}}})
    assert replaced.status == 200 and replaced.body["metadata"]["labels"] == {"a": "b"}
    stale = http.put(f"{PODS}/p", created)
    assert stale.status == 409


def test_a_write_never_changes_the_version_it_replaces(http: Http) -> None:
    """Each version stays as it was answered, whatever writes follow: a watch replays them from the history."""
    http.post(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "before"}})  # version 1
    first = http.post(POOLS, pool()).body
    http.patch(f"{POOLS}/shop/status", {"status": {"observedGeneration": 1}})
    http.patch(f"{POOLS}/shop", {"metadata": {"labels": {"a": "b"}}, "spec": {"app": "x:y"}})
    http.apply(f"{POOLS}/shop", {**pool(), "spec": {"app": "z:w"}}, "gitops", force=True)
    replayed = list(http.watch(POOLS, 1, resourceVersion=str(version(first) - 1)))
    assert [e["type"] for e in replayed] == ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED"]
    assert replayed[0]["object"] == first
