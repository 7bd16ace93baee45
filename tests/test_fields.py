"""Reading managedFields (kube/fields.py): which fields of a manifest our field manager still holds, and whose
they are now. The fieldsV1 trees here are spelled as a Kubernetes API server writes them (k: keys with every key
field, defaulted ones included; "." for an item itself; atomic lists as leaves)."""

from __future__ import annotations

import copy
from typing import Any

from workerpool_operator.kube import fields

MANIFEST: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "shop-mail",
        "namespace": "apps",
        "labels": {"workerpool.dev/pool": "shop"},
        "ownerReferences": [
            {"apiVersion": "workerpool.dev/v1alpha1", "kind": "WorkerPool", "name": "shop", "uid": "u1"}
        ],
    },
    "spec": {
        "selector": {"matchLabels": {"workerpool.dev/pool": "shop"}},
        "template": {
            "metadata": {"labels": {"workerpool.dev/pool": "shop"}},
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "image": "shop:1",
                        "args": ["--queues", "mail"],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "ports": [{"name": "metrics", "containerPort": 9808}],
                        "resources": {"requests": {"cpu": 2, "memory": "1.5Gi"}},
                        "securityContext": {},
                    }
                ],
                "finalizersLike": ["a"],
            },
        },
    },
}


def owned_tree() -> dict[str, Any]:
    """What our Apply entry holds right after applying MANIFEST."""
    return {
        "f:metadata": {
            "f:labels": {"f:workerpool.dev/pool": {}},
            "f:ownerReferences": {
                'k:{"uid":"u1"}': {".": {}, "f:apiVersion": {}, "f:kind": {}, "f:name": {}, "f:uid": {}}
            },
        },
        "f:spec": {
            "f:selector": {},
            "f:template": {
                "f:metadata": {"f:labels": {"f:workerpool.dev/pool": {}}},
                "f:spec": {
                    "f:containers": {
                        'k:{"name":"worker"}': {
                            ".": {},
                            "f:name": {},
                            "f:image": {},
                            "f:args": {},
                            "f:env": {
                                'k:{"name":"A"}': {".": {}, "f:name": {}, "f:value": {}},
                                'k:{"name":"B"}': {".": {}, "f:name": {}, "f:value": {}},
                            },
                            "f:ports": {
                                'k:{"containerPort":9808,"protocol":"TCP"}': {
                                    ".": {},
                                    "f:containerPort": {},
                                    "f:name": {},
                                }
                            },
                            "f:resources": {"f:requests": {"f:cpu": {}, "f:memory": {}}},
                            "f:securityContext": {},
                        }
                    },
                    "f:finalizersLike": {'v:"a"': {}},
                },
            },
        },
    }


def with_fields(*entries: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    obj = copy.deepcopy(MANIFEST)
    obj["metadata"]["managedFields"] = [
        {
            "manager": manager,
            "operation": operation,
            "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": tree,
        }
        for manager, operation, tree in entries
    ]
    return obj


def test_a_freshly_applied_object_misses_nothing_whatever_the_server_normalised() -> None:
    obj = with_fields((fields.FIELD_MANAGER, "Apply", owned_tree()))
    obj["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "2", "memory": "1536Mi"}
    assert fields.missing(MANIFEST, fields.entry(obj, fields.FIELD_MANAGER)) == []


def test_a_changed_field_is_missing_from_our_entry_and_owned_by_whoever_changed_it() -> None:
    ours = owned_tree()
    container = ours["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"worker"}']
    del container["f:image"]
    theirs: dict[str, Any] = {
        "f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"worker"}': {"f:image": {}}}}}}
    }
    obj = with_fields((fields.FIELD_MANAGER, "Apply", ours), ("kubectl-edit", "Update", theirs))
    lost = fields.missing(MANIFEST, fields.entry(obj, fields.FIELD_MANAGER))
    assert [fields.describe(path) for path in lost] == ["spec.template.spec.containers[worker].image"]
    assert fields.owners(obj, lost[0]) == ["kubectl-edit"]


def test_a_removed_list_item_is_missing_and_owned_by_nobody() -> None:
    ours = owned_tree()
    env = ours["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"worker"}']["f:env"]
    del env['k:{"name":"B"}']
    obj = with_fields((fields.FIELD_MANAGER, "Apply", ours))
    lost = fields.missing(MANIFEST, fields.entry(obj, fields.FIELD_MANAGER))
    assert [fields.describe(path) for path in lost] == ["spec.template.spec.containers[worker].env[B]"]
    assert fields.owners(obj, lost[0]) == []


def test_a_key_field_the_server_defaulted_does_not_hide_the_item() -> None:
    tree = owned_tree()
    ports = tree["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"worker"}']["f:ports"]
    assert fields.holds(tree, ("spec", "template", "spec", "containers", {"name": "worker"}, "ports"))
    assert fields.holds(ports, ({"containerPort": 9808},))
    assert not fields.holds(ports, ({"containerPort": 9809},))
    assert not fields.holds(ports, ({"containerPort": 9808, "protocol": "UDP"},))


def test_atomic_lists_and_maps_are_held_whole() -> None:
    changed = copy.deepcopy(MANIFEST)
    changed["spec"]["template"]["spec"]["containers"][0]["args"] = ["--queues", "other"]
    changed["spec"]["selector"] = {"matchLabels": {"x": "y"}}
    assert fields.missing(changed, owned_tree()) == []


def test_set_items_are_matched_by_value() -> None:
    changed = copy.deepcopy(MANIFEST)
    changed["spec"]["template"]["spec"]["finalizersLike"] = ["a", "b"]
    lost = fields.missing(changed, owned_tree())
    assert [fields.describe(path) for path in lost] == ["spec.template.spec.finalizersLike[b]"]


def test_a_whole_subtree_gone_is_reported_once_at_its_root() -> None:
    ours = owned_tree()
    del ours["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"worker"}']["f:resources"]
    lost = fields.missing(MANIFEST, ours)
    assert [fields.describe(path) for path in lost] == ["spec.template.spec.containers[worker].resources"]


def test_an_object_we_never_applied_misses_everything() -> None:
    obj = with_fields(("kubectl-client-side-apply", "Update", owned_tree()))
    assert fields.entry(obj, fields.FIELD_MANAGER) is None
    assert fields.missing(MANIFEST, None) == [()]
    assert fields.describe(()) == "the whole object"


def test_entries_of_merge_patches_before_0_3_are_legacy_and_ours_are_not() -> None:
    obj = with_fields(
        (fields.FIELD_MANAGER, "Update", owned_tree()),
        (fields.FIELD_MANAGER, "Apply", owned_tree()),
        ("kube-controller-manager", "Update", {"f:status": {}}),
    )
    obj["metadata"]["managedFields"].append(
        {"manager": fields.FIELD_MANAGER, "operation": "Update", "subresource": "status", "fieldsV1": {}}
    )
    legacy = fields.legacy_entries(obj)
    assert len(legacy) == 1 and legacy[0]["operation"] == "Update" and not legacy[0].get("subresource")
    assert fields.entry(obj, fields.FIELD_MANAGER, "Update", "status") == {}
