"""The CRD generated from the model (workerpool_operator.crd) against the hand-written crds/workerpool.yaml.

Every difference is reported as a path and both values; the ones left are each justified below.
"""

from __future__ import annotations

from typing import Any

from tests import crd_rules
from workerpool_operator import crd

SCHEMA = ".spec.versions[0].schema.openAPIV3Schema.properties.spec.properties"
SECRET_REFS = (
    "broker.properties.caFrom",
    "flower.properties.auth.properties.basicFrom",
    "flower.properties.auth.properties.oauth.properties.clientIdFrom",
    "flower.properties.auth.properties.oauth.properties.clientSecretFrom",
)
QUEUE_SCALING = "queues.items.properties.scaling.properties"


def _field(path: str) -> str:
    return f"{SCHEMA}.{path}"


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every place where two YAML documents differ (1 and 1.0 are the same number), as `path: what`."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(expected.keys() | actual.keys(), key=str):
            if key not in actual:
                found.append(f"{path}.{key}: only in the file: {expected[key]!r}")
            elif key not in expected:
                found.append(f"{path}.{key}: only generated: {actual[key]!r}")
            else:
                found += differences(expected[key], actual[key], f"{path}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            line
            for i, pair in enumerate(zip(expected, actual, strict=True))
            for line in differences(*pair, f"{path}[{i}]")
        ]
    same_number = isinstance(expected, int | float) and isinstance(actual, int | float)
    same_number = same_number and not isinstance(expected, bool) and not isinstance(actual, bool)
    if expected != actual or (type(expected) is not type(actual) and not same_number):
        return [f"{path}: {expected!r} in the file, {actual!r} generated"]
    return []


def test_the_comparison_reports_every_kind_of_difference() -> None:
    found = differences(
        {"a": 1, "b": [1, 2], "c": {"d": "x"}, "e": True}, {"a": 1.0, "b": [1], "c": {"d": "y"}, "f": 0}
    )
    assert found == [
        ".b: [1, 2] in the file, [1] generated",
        ".c.d: 'x' in the file, 'y' generated",
        ".e: only in the file: True",
        ".f: only generated: 0",
    ]
    assert differences({"a": True}, {"a": 1}) == [".a: True in the file, 1 generated"]


def _paths(found: list[str]) -> list[str]:
    return [line.split(": ", 1)[0] for line in found]


# Each difference between the hand-written CRD and the generated one, and why it is right.
JUSTIFIED = sorted(
    # SecretKeyRef is one model for every Secret reference: its name and key carry their description everywhere
    # (the hand-written CRD had them under urlFrom only) ...
    [
        _field(f"{ref}.properties.secretKeyRef.properties.{key}.description")
        for ref in SECRET_REFS
        for key in ("name", "key")
    ]
    # ... so urlFrom's key reads "The key in the Secret." instead of "... that holds the URL.".
    + [_field("broker.properties.urlFrom.properties.secretKeyRef.properties.key.description")]
    # The per-queue block is the pool-wide one with every field optional: it carries the same descriptions (the
    # hand-written one described only policy, startupSeconds and schedules).
    + [
        _field(f"{QUEUE_SCALING}.{name}.description")
        for name in (
            "pollIntervalSeconds",
            "targetPerReplica",
            "scaleUp",
            "scaleDownStabilizationSeconds",
            "idleSecondsBeforeZero",
            "activationBacklog",
            "fallback",
            "fallback.properties.failureThreshold",
            "fallback.properties.replicas",
            "paused",
            "drainTimeoutSeconds",
        )
    ]
    # The concurrency rules come from the model's table of pool limits: solo's `concurrency == 1` is written
    # `concurrency <= 1`, the same rule under concurrency's minimum of 1 (same message, same cost).
    + [_field("queues.items.x-kubernetes-validations[1].rule")]
    # No `default: []`: the generator writes no empty-list default (the model reads a missing list as empty,
    # and the API server would otherwise store `schedules: []` in every new pool).
    + [_field("scaling.properties.schedules.default")]
)


def test_the_generated_crd_differs_from_the_hand_written_one_only_where_justified() -> None:
    found = differences(crd_rules.load_crd(), crd.crd())
    assert sorted(_paths(found)) == JUSTIFIED, "\n".join(found)


def _without_defaults(node: Any) -> Any:
    """A schema without its defaults, down its object fields (a list's items keep theirs: the same type)."""
    if not isinstance(node, dict):
        return node
    kept = {key: value for key, value in node.items() if key != "default"}
    if "properties" in kept:
        kept["properties"] = {name: _without_defaults(child) for name, child in kept["properties"].items()}
    return kept


def test_the_per_queue_scaling_block_is_the_pool_wide_one_without_defaults() -> None:
    spec = crd.spec_schema()["properties"]
    pool_wide, per_queue = spec["scaling"], spec["queues"]["items"]["properties"]["scaling"]
    assert "default" in pool_wide["properties"]["scaleUp"]["properties"]["pods"]
    assert _without_defaults(pool_wide) | {"description": per_queue["description"]} == per_queue
    assert "required" not in per_queue
