"""Server-Side Apply and ``managedFields`` on the API emulator, over HTTP, as the Kubernetes documentation describes
them ("Server-Side Apply": field management, conflicts, merge strategy) and structured-merge-diff implements them.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.http_client import Http
from tests.kube import KubeCluster

NS = "apps"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
POOLS = f"/apis/workerpool.dev/v1alpha1/namespaces/{NS}/workerpools"
SHOP = f"{DEPLOYMENTS}/shop"


def config(**container: Any) -> dict[str, Any]:
    """What a controller applies: the fields it has an opinion on (no replicas)."""
    labels = {"app": "shop"}
    worker = {"name": "worker", "image": "shop:1.2", **container}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [worker]}},
        },
    }


def entries(obj: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"], e.get("subresource", "")): e for e in obj["metadata"]["managedFields"]}


def container(obj: dict[str, Any], name: str = "worker") -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == name)
    return found


@pytest.fixture
def http(kube: KubeCluster) -> Http:
    return Http(kube)


def test_apply_creates_the_object_and_records_its_manager(http: Http) -> None:
    created = http.apply(SHOP, config(), "workerpool-operator")
    assert created.status == 201
    (entry,) = created.body["metadata"]["managedFields"]
    assert {k: entry[k] for k in ("manager", "operation", "apiVersion", "fieldsType")} == {
        "manager": "workerpool-operator",
        "operation": "Apply",
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
    }
    assert entry["time"].endswith("Z") and "subresource" not in entry
    assert entry["fieldsV1"] == {
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {
            "f:selector": {},
            "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:containers": {'k:{"name":"worker"}': {".": {}, "f:image": {}, "f:name": {}}}},
            },
        },
    }
    assert created.body["spec"]["replicas"] == 1  # defaults fill what nobody applied; nobody owns them
    again = http.apply(SHOP, config(), "workerpool-operator")
    assert (
        again.status == 200 and again.body["metadata"]["resourceVersion"] == created.body["metadata"]["resourceVersion"]
    )


def test_apply_needs_a_field_manager_and_takes_yaml(http: Http) -> None:
    refused = http.apply(SHOP, config(), None)
    assert refused.status == 422 and "fieldManager: Required value: is required for apply patch" in refused.message
    as_yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\n" + json.dumps(
        {"spec": config()["spec"]}
    )[1:-1].replace('"spec": ', "spec: ")
    assert http.apply(SHOP, as_yaml, "a").status == 201
    assert http.patch(SHOP, {"spec": {"replicas": 2}}, params={"force": "true"}).status == 422


def test_fields_left_out_of_an_apply_are_released_and_removed_unless_another_manager_owns_them(http: Http) -> None:
    http.apply(SHOP, config(args=["--a"], env=[{"name": "A", "value": "1"}], workingDir="/w"), "operator")
    http.patch(
        SHOP,
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "worker",
                                "image": "shop:1.2",
                                "args": ["--a"],
                                "env": [{"name": "A", "value": "1"}],
                                "workingDir": "/w",
                                "stdin": True,
                            }
                        ]
                    }
                }
            }
        },
        agent="kubectl-edit/v1.36",
    )
    # kubectl-edit wrote the same values (it owns nothing of them) and added stdin.
    live = http.get(SHOP).body
    assert set(
        entries(live)["kubectl-edit", "Update", ""]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"][
            'k:{"name":"worker"}'
        ]
    ) == {"f:stdin"}
    http.patch(SHOP, {"metadata": {"labels": {"team": "a"}}}, agent="kubectl-label/v1.36")
    applied = http.apply(SHOP, config(), "operator").body  # no args, no env, no workingDir any more
    worker = container(applied)
    assert "args" not in worker and "env" not in worker and "workingDir" not in worker
    assert worker["stdin"] is True and applied["metadata"]["labels"] == {"app": "shop", "team": "a"}


def test_a_field_another_manager_owns_is_a_conflict_unless_forced(http: Http) -> None:
    http.apply(SHOP, config(), "operator")
    http.patch(f"{SHOP}/scale", {"spec": {"replicas": 3}}, agent="kube-controller-manager/v1.36")
    mine = copy.deepcopy(config())
    mine["spec"]["replicas"] = 5
    refused = http.apply(SHOP, mine, "operator")
    assert refused.status == 409 and refused.body["reason"] == "Conflict"
    assert refused.message == (
        'Apply failed with 1 conflict: conflict with "kube-controller-manager" with subresource "scale" using apps/v1: '
        ".spec.replicas"
    )
    assert refused.body["details"]["causes"] == [
        {
            "type": "FieldManagerConflict",
            "message": 'conflict with "kube-controller-manager" with subresource "scale" using apps/v1',
            "field": ".spec.replicas",
        }
    ]
    assert http.get(SHOP).body["spec"]["replicas"] == 3
    forced = http.apply(SHOP, mine, "operator", force=True).body
    assert forced["spec"]["replicas"] == 5
    owners = entries(forced)
    assert ("kube-controller-manager", "Update", "scale") not in owners  # it owned nothing else
    assert "f:replicas" in owners["operator", "Apply", ""]["fieldsV1"]["f:spec"]


def test_two_appliers_of_one_value_share_it_and_neither_may_change_it_alone(http: Http) -> None:
    http.apply(SHOP, config(), "a")
    shared = http.apply(SHOP, config(), "b")
    assert shared.status == 200
    assert {key[0] for key in entries(shared.body)} == {"a", "b"}
    other = http.apply(SHOP, config(image="shop:2"), "b")
    assert (
        other.status == 409
        and 'conflict with "a": .spec.template.spec.containers[name="worker"].image' in other.message
    )
    released = copy.deepcopy(config())
    del released["spec"]["template"]["spec"]["containers"][0]["image"]
    http.apply(SHOP, released, "a")  # a lets go of the image: b alone owns it
    assert container(http.get(SHOP).body)["image"] == "shop:1.2"
    assert http.apply(SHOP, config(image="shop:2"), "b").status == 200


def test_an_update_takes_the_fields_it_changes_from_their_appliers(http: Http) -> None:
    http.apply(SHOP, config(), "operator")
    edit = {"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "shop:hotfix"}]}}}}
    edited = http.patch(SHOP, edit, agent="kubectl-edit/v1.36").body
    owners = entries(edited)
    assert (
        "f:image"
        not in owners["operator", "Apply", ""]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"][
            'k:{"name":"worker"}'
        ]
    )
    assert owners["kubectl-edit", "Update", ""]["apiVersion"] == "apps/v1"
    back = http.apply(SHOP, config(), "operator")
    assert back.status == 409 and 'conflict with "kubectl-edit" using apps/v1' in back.message
    assert container(http.apply(SHOP, config(), "operator", force=True).body)["image"] == "shop:1.2"


def test_a_write_without_a_field_manager_is_recorded_under_its_user_agent(http: Http) -> None:
    created = http.post(DEPLOYMENTS, config(), agent="workerpool-operator/0.1.0 (pod-a)").body
    (entry,) = created["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == ("workerpool-operator", "Update")
    named = http.patch(SHOP, {"metadata": {"labels": {"x": "y"}}}, params={"fieldManager": "mine"}).body
    assert entries(named)["mine", "Update", ""]["fieldsV1"] == {"f:metadata": {"f:labels": {"f:x": {}}}}
    # A create owns what the server defaulted too, and marks with "." the maps it added (not the spec itself).
    fields = entry["fieldsV1"]["f:spec"]
    assert "." not in fields and fields["f:strategy"]["f:rollingUpdate"]["."] == {}
    assert "f:imagePullPolicy" in fields["f:template"]["f:spec"]["f:containers"]['k:{"name":"worker"}']


def test_associative_lists_merge_by_their_keys_and_atomic_lists_do_not(http: Http) -> None:
    http.apply(SHOP, config(env=[{"name": "A", "value": "1"}], ports=[{"containerPort": 80}], args=["--a"]), "a")
    sidecar = copy.deepcopy(config(env=[{"name": "B", "value": "2"}], ports=[{"containerPort": 80, "protocol": "UDP"}]))
    sidecar["spec"]["template"]["spec"]["containers"][0].pop("image")
    sidecar["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "side:1"})
    merged = http.apply(SHOP, sidecar, "b").body
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["worker", "side"]
    worker = container(merged)
    assert worker["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert worker["ports"] == [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 80, "protocol": "UDP"}]
    b_fields = entries(merged)["b", "Apply", ""]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert 'k:{"containerPort":80,"protocol":"UDP"}' in b_fields['k:{"name":"worker"}']["f:ports"]
    assert set(b_fields) == {'k:{"name":"worker"}', 'k:{"name":"side"}'}
    atomic = http.apply(SHOP, config(args=["--b"]), "c")
    assert atomic.status == 409 and '.spec.template.spec.containers[name="worker"].args' in atomic.message
    again = http.apply(
        SHOP, config(env=[{"name": "A", "value": "1"}], ports=[{"containerPort": 80}], args=["--a"]), "a"
    )
    assert [c["name"] for c in again.body["spec"]["template"]["spec"]["containers"]] == ["worker", "side"]


def test_a_custom_resources_lists_are_atomic_unless_its_schema_says_map(http: Http) -> None:
    pool = {
        "apiVersion": "workerpool.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "shop"},
        "spec": {
            "broker": {"url": "redis://redis:6379/0"},
            "app": "shop.celery:app",
            "template": {"image": "shop:1", "command": ["run"]},
            "queues": [{"name": "default"}],
        },
    }
    http.apply(f"{POOLS}/shop", pool, "gitops")
    extra = {"apiVersion": pool["apiVersion"], "kind": "WorkerPool", "metadata": {"name": "shop"}}
    merged = http.apply(f"{POOLS}/shop", {**extra, "spec": {"queues": [{"name": "mail"}]}}, "team").body
    assert [q["name"] for q in merged["spec"]["queues"]] == ["default", "mail"]  # a map keyed by name
    command = http.apply(f"{POOLS}/shop", {**extra, "spec": {"template": {"command": ["other"]}}}, "team")
    assert command.status == 409 and ".spec.template.command" in command.message  # atomic
    status = {**extra, "status": {"observedGeneration": 1}, "spec": {"app": "ignored:app"}}
    applied = http.apply(f"{POOLS}/shop/status", status, "workerpool-operator").body
    assert applied["status"] == {"observedGeneration": 1} and applied["spec"]["app"] == "shop.celery:app"
    owner = entries(applied)["workerpool-operator", "Apply", "status"]
    assert owner["subresource"] == "status" and owner["fieldsV1"] == {"f:status": {"f:observedGeneration": {}}}
    main = http.apply(f"{POOLS}/shop", {**extra, "status": {"observedGeneration": 9}}, "other").body
    assert main["status"] == {"observedGeneration": 1}


def test_apply_to_scale_owns_the_replicas_through_scale(http: Http) -> None:
    http.apply(SHOP, config(), "operator")
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "shop"}, "spec": {"replicas": 4}}
    answered = http.apply(f"{SHOP}/scale", scale, "scaler").body
    assert answered["kind"] == "Scale" and answered["spec"] == {"replicas": 4}
    owner = entries(http.get(SHOP).body)["scaler", "Apply", "scale"]
    assert owner["fieldsV1"] == {"f:spec": {"f:replicas": {}}}


def test_managed_fields_sent_with_a_write_replace_the_stored_ones(http: Http) -> None:
    """How an object hands its fields from one manager to another (kubectl's upgrade from client-side apply, and
    ours from the merge patches before 0.3): managedFields sent with an update are the basis it is recorded on."""
    http.post(DEPLOYMENTS, config(), agent="workerpool-operator/0.2.0 (pod-a)")
    applied = http.apply(SHOP, config(), "workerpool-operator", force=True).body
    assert set(entries(applied)) == {("workerpool-operator", "Update", ""), ("workerpool-operator", "Apply", "")}
    kept = [e for e in applied["metadata"]["managedFields"] if e["operation"] == "Apply"]
    handed = http.patch(SHOP, {"metadata": {"managedFields": kept}}, params={"fieldManager": "workerpool-operator"})
    assert set(entries(handed.body)) == {("workerpool-operator", "Apply", "")}
    assert entries(handed.body)["workerpool-operator", "Apply", ""]["fieldsV1"] == kept[0]["fieldsV1"]
    dropped = copy.deepcopy(config())
    dropped["spec"]["template"]["metadata"]["labels"] = {"app": "shop"}
    del dropped["metadata"]["labels"]
    released = http.apply(SHOP, dropped, "workerpool-operator").body
    assert "labels" not in released["metadata"], "the applier alone owned them: released, and removed"
