"""The WorkerPool CRD: a well-formed structural schema, examples it accepts, and mistakes it refuses.

Bad WorkerPools are checked twice: against the CRD as the API server would (tests/crd_rules.py: defaults,
jsonschema, list-map keys, CEL rules evaluated for real) and against the typed model, which must refuse
them too, with the same message where the CRD states the rule in CEL.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import crd_rules
from workerpool_operator import API_GROUP, API_VERSION, KIND, PLURAL
from workerpool_operator import spec as model
from workerpool_operator.spec import SpecError, WorkerPool

CRD = crd_rules.load_crd()
SCHEMA = crd_rules.openapi_schema(CRD)
EXAMPLES = crd_rules.REPO / "examples"
DOCS = crd_rules.REPO / "docs" / "workerpool.md"


def workerpools_in(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == KIND]


def example(name: str) -> dict[str, Any]:
    (pool,) = workerpools_in(EXAMPLES / name)
    return pool


def model_error(obj: dict[str, Any]) -> str | None:
    try:
        WorkerPool.from_object(obj)
    except SpecError as exc:
        return str(exc)
    return None


# --- the CRD itself ---------------------------------------------------------------------------------------


def test_crd_is_a_valid_customresourcedefinition() -> None:
    kubernetes_validate.validate(CRD, "1.33", strict=True)
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == f"{PLURAL}.{API_GROUP}"
    assert (CRD["spec"]["group"], names["kind"], names["plural"]) == (API_GROUP, KIND, PLURAL)
    assert names["shortNames"] == ["wp"]
    assert names["categories"]
    (version,) = CRD["spec"]["versions"]
    assert version["name"] == API_VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_every_node_is_typed_and_bounded() -> None:
    """A structural schema, and every string, list and map bounded so CEL rules fit the cost budget."""
    problems = []
    for path, node in crd_rules.walk_schema(SCHEMA):
        opaque = node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node
        if path in ("", ".metadata", ".apiVersion", ".kind") or opaque:
            continue
        kind = node.get("type")
        if kind is None and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: no type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            problems.append(f"{path}: string without maxLength")
        if node.get("x-kubernetes-int-or-string") and "maxLength" not in node:
            problems.append(f"{path}: int-or-string without maxLength")
        if kind == "array" and "maxItems" not in node:
            problems.append(f"{path}: list without maxItems")
        if kind == "object" and isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            problems.append(f"{path}: map without maxProperties")
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                if key not in item.get("required", []) and "default" not in item["properties"][key]:
                    problems.append(f"{path}: list-map key {key} neither required nor defaulted")
    assert problems == []


def test_every_default_is_valid_for_its_own_schema() -> None:
    """The API server refuses a CRD whose defaults do not validate (after their own nested defaults)."""
    checked = 0
    for path, node in crd_rules.walk_schema(SCHEMA):
        if "default" in node:
            value = crd_rules.apply_defaults(node["default"], node)
            assert crd_rules.schema_errors(value, node) == [], path
            assert crd_rules.cel_errors(value, node) == [], path
            checked += 1
    assert checked >= 15


def test_every_rule_compiles_and_uses_standard_cel_only() -> None:
    rules = [rule for _path, node in crd_rules.walk_schema(SCHEMA) for rule in crd_rules.rules_at(node)]
    assert len(rules) >= 15
    for rule in rules:
        crd_rules.compile_rule(rule.rule)
        if rule.message_expression:
            crd_rules.compile_rule(rule.message_expression)
        assert rule.message, f"rule {rule.rule!r} has no message for the user"
        assert not re.search(r"\b(quantity|url|ip|cidr|isSorted|sum|indexOf)\(", rule.rule), rule.rule


def test_printer_columns_read_declared_fields() -> None:
    (version,) = CRD["spec"]["versions"]
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert [name for name, column in columns.items() if column.get("priority", 0) == 0] == [
        "Ready",
        "Queues",
        "Backlog",
        "Workers",
        "Rollout",
        "Age",
    ]
    declared = {path for path, _node in crd_rules.walk_schema(SCHEMA)}
    for column in columns.values():
        path = re.sub(r"\[\?\(@\.type==\"\w+\"\)\]", "[*]", column["jsonPath"])
        assert path == ".metadata.creationTimestamp" or path in declared, column


def test_status_declares_what_the_operator_writes() -> None:
    status = SCHEMA["properties"]["status"]["properties"]
    fields = {"observedGeneration", "conditions", "queues", "totalBacklog", "totalReplicas", "queueCount"}
    assert fields | {"totalReadyReplicas", "workers"} <= set(status)
    assert status["scalerState"]["type"] == "string"  # one line in kubectl describe, not pages of floats
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert set(status["conditions"]["items"]["properties"]) == {
        "type",
        "status",
        "observedGeneration",
        "lastTransitionTime",
        "reason",
        "message",
    }
    queue = status["queues"]["items"]["properties"]
    assert {
        "name",
        "backlog",
        "inFlight",
        "oldestTaskAgeSeconds",
        "waitSource",
        "waitP95Seconds",
        "targetWaitSeconds",
        "waitAboveTargetSince",
        "replicas",
        "readyReplicas",
        "desiredReplicas",
        "draining",
        "lastScaleTime",
        "lastScaleReason",
        "versions",
    } == set(queue)
    written = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": "shop"},
        "spec": example("minimal.yaml")["spec"],
        "status": {
            "observedGeneration": 2,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "observedGeneration": 2,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "reason": "Scaling",
                    "message": "1 queue, 3 workers",
                },
                {"type": "BrokerReachable", "status": "True", "reason": "Polled", "message": ""},
                {"type": "WaitsWithinTarget", "status": "False", "reason": "MaxReplicasReached", "message": "..."},
            ],
            "queues": [
                {
                    "name": "celery",
                    "backlog": 7,
                    "inFlight": 3,
                    "oldestTaskAgeSeconds": 75.5,
                    "waitSource": "Measured",
                    "waitP95Seconds": 61.0,
                    "targetWaitSeconds": 60,
                    "waitAboveTargetSince": "2026-01-01T00:00:00Z",
                    "replicas": 3,
                    "readyReplicas": 2,
                    "desiredReplicas": 3,
                    "lastScaleTime": "2026-01-01T00:00:00Z",
                    "lastScaleReason": "backlog 10 over 3 replicas",
                }
            ],
            "totalBacklog": 7,
            "totalReplicas": 3,
            "totalReadyReplicas": 2,
            "workers": "2/3",
            "queueCount": 1,
            "scalerState": '{"celery":{"anything":[1,2],"the":{"engine":"keeps"}}}',
        },
    }
    assert crd_rules.validate(written) == []


# --- examples ---------------------------------------------------------------------------------------------

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_the_three_examples_exist() -> None:
    assert {"minimal.yaml", "multi-queue.yaml", "full.yaml"} <= {path.name for path in EXAMPLE_FILES}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_is_accepted_by_the_crd_and_the_model(path: Path) -> None:
    pools = workerpools_in(path)
    assert pools
    for pool in pools:
        assert crd_rules.validate(pool) == []
        parsed = WorkerPool.from_object(pool)
        for queue in parsed.spec.queues:
            parsed.spec.policy_for(queue.name)


def test_multi_queue_example_uses_every_pool_type() -> None:
    pools = {queue["pool"] for queue in example("multi-queue.yaml")["spec"]["queues"]}
    assert pools == {pool.value for pool in model.CeleryPool}


def _paths_set(value: Any, schema: crd_rules.Schema, path: str = "") -> set[str]:
    paths = {path}
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return paths
    if "additionalProperties" in schema:
        return paths
    for suffix, child, child_schema in crd_rules.child_schemas(schema, value):
        paths |= _paths_set(child, child_schema, path + re.sub(r"\[\d+\]", "[*]", suffix))
    return paths


# Fields the full example cannot set together with the ones it shows: an inline url (it reads the URL from a
# Secret), a sentinel master (its URL is rediss://) and Flower's basic auth (it signs in with OAuth).
NOT_IN_FULL_EXAMPLE = {
    ".spec.broker.url",
    ".spec.broker.sentinelMaster",
    ".spec.flower.auth.basicFrom",
    ".spec.flower.auth.basicFrom.secretKeyRef",
    ".spec.flower.auth.basicFrom.secretKeyRef.name",
    ".spec.flower.auth.basicFrom.secretKeyRef.key",
}


def test_full_example_sets_every_field() -> None:
    spec_schema = SCHEMA["properties"]["spec"]
    declared = {
        path
        for path, _node in crd_rules.walk_schema(spec_schema, ".spec")
        if not re.search(r"\.(env|volumes|volumeMounts|imagePullSecrets)\[\*\]\.", path) and not path.endswith("[*]")
    }
    used = _paths_set(example("full.yaml")["spec"], spec_schema, ".spec")
    assert declared - used == NOT_IN_FULL_EXAMPLE


# --- bad WorkerPools ----------------------------------------------------------------------------------------

VALID: dict[str, Any] = {
    "apiVersion": f"{API_GROUP}/{API_VERSION}",
    "kind": KIND,
    "metadata": {"name": "shop", "namespace": "apps"},
    "spec": {
        "broker": {"urlFrom": {"secretKeyRef": {"name": "shop-broker", "key": "url"}}},
        "app": "shop.celery:app",
        "template": {"image": "registry.example/shop-worker:1.4.2"},
        "queues": [{"name": "emails", "pool": "gevent", "concurrency": 100}, {"name": "reports"}],
    },
}

DELETE = object()
BASIC = {"secretKeyRef": {"name": "flower-users", "key": "users"}}
OAUTH = {
    "provider": "github",
    "allowedEmails": ".*@shop.example",
    "redirectUri": "https://flower.shop.example/login",
    "clientIdFrom": {"secretKeyRef": {"name": "oauth", "key": "id"}},
    "clientSecretFrom": {"secretKeyRef": {"name": "oauth", "key": "secret"}},
}


def edit(*changes: tuple[str, Any]) -> dict[str, Any]:
    """VALID with changes at dotted paths (`spec.queues.0.concurrency`); DELETE removes a field."""
    obj = copy.deepcopy(VALID)
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return obj


def inline_url(url: str) -> tuple[str, Any]:
    return ("spec.broker", {"url": url})


@dataclass(frozen=True)
class Bad:
    name: str
    obj: dict[str, Any]
    crd_says: str  # what the API server answers (the whole error line, or the part after the field path)
    model_says: str  # what SpecError says
    crd_errors: int = 1  # how many errors the API server answers with

    def __str__(self) -> str:
        return self.name


BAD: list[Bad] = [
    Bad(
        "min above max",
        edit(("spec.queues.1.minReplicas", 5), ("spec.queues.1.maxReplicas", 2)),
        'spec.queues[1].minReplicas: Invalid value: "object": minReplicas must not exceed maxReplicas',
        "spec.queues[1]: minReplicas (5) must not exceed maxReplicas (2)",
    ),
    Bad(
        "min above the default max",
        edit(("spec.queues.1.minReplicas", 12)),
        'spec.queues[1].minReplicas: Invalid value: "object": minReplicas must not exceed maxReplicas',
        "minReplicas (12) must not exceed maxReplicas (10)",
    ),
    Bad(
        "concurrency 0",
        edit(("spec.queues.0.concurrency", 0)),
        "spec.queues[0].concurrency: Invalid value: 0: spec.queues[0].concurrency in body should be greater than "
        "or equal to 1",
        "spec.queues[0].concurrency: Input should be greater than or equal to 1",
    ),
    Bad(
        "concurrency as a string",
        edit(("spec.queues.0.concurrency", "100")),
        'spec.queues[0].concurrency: Invalid value: "100": spec.queues[0].concurrency in body must be of type integer',
        "spec.queues[0].concurrency: Input should be a valid integer",
    ),
    Bad(
        "duplicate queue names",
        edit(("spec.queues.1.name", "emails")),
        'spec.queues[1]: Duplicate value: {"name": "emails"}',
        "duplicate queue name 'emails': queue names must be unique",
    ),
    Bad(
        "bad pool name",
        edit(("spec.queues.1.pool", "processes")),
        'spec.queues[1].pool: Unsupported value: "processes": supported values: "prefork", "threads", "solo", '
        '"gevent", "eventlet"',
        "spec.queues[1].pool: Input should be 'prefork', 'threads', 'solo', 'gevent' or 'eventlet'",
    ),
    Bad(
        "queue name with capitals and a space",
        edit(("spec.queues.1.name", "Monthly Reports")),
        f'spec.queues[1].name: Invalid value: "str": {model.MSG_QUEUE_NAME}',
        f"spec.queues[1].name: {model.MSG_QUEUE_NAME}",
    ),
    Bad(
        "queue name that is a kombu key",
        edit(("spec.queues.1.name", "unacked")),
        f'spec.queues[1].name: Invalid value: "str": {model.MSG_RESERVED_QUEUE}',
        f"spec.queues[1].name: {model.MSG_RESERVED_QUEUE}",
    ),
    Bad(
        "queue name containing the priority separator",
        edit(("spec.broker.separator", "."), ("spec.queues.1.name", "emails.3")),
        f'spec.queues: Invalid value: "object": {model.MSG_SEPARATOR}',
        model.MSG_SEPARATOR,
    ),
    Bad(
        "password in the URL",
        edit(inline_url("redis://:s3cret@redis.apps.svc:6379/0")),
        f'spec.broker.url: Invalid value: "str": {model.MSG_URL_PASSWORD}',
        f"spec.broker.url: {model.MSG_URL_PASSWORD}",
    ),
    Bad(
        "user and password in the URL",
        edit(inline_url("rediss://app:s3cret@redis.apps.svc:6380/0")),
        model.MSG_URL_PASSWORD,
        model.MSG_URL_PASSWORD,
    ),
    Bad(
        "password as a URL parameter",
        edit(inline_url("redis://redis.apps.svc:6379/0?password=s3cret")),
        model.MSG_URL_PASSWORD,
        model.MSG_URL_PASSWORD,
    ),
    Bad(
        "both url and urlFrom",
        edit(("spec.broker.url", "redis://redis.apps.svc:6379/0")),
        f'spec.broker: Invalid value: "object": {model.MSG_URL_BOTH}',
        f"spec.broker: {model.MSG_URL_BOTH}",
    ),
    Bad(
        "neither url nor urlFrom",
        edit(("spec.broker", {"globalKeyprefix": "shop:"})),
        f'spec.broker: Invalid value: "object": {model.MSG_URL_MISSING}',
        f"spec.broker: {model.MSG_URL_MISSING}",
    ),
    Bad(
        "not a Redis URL",
        edit(inline_url("amqp://rabbit.apps.svc:5672//")),
        f'spec.broker.url: Invalid value: "str": {model.MSG_URL_SCHEME}',
        f"spec.broker.url: {model.MSG_URL_SCHEME}",
    ),
    Bad(
        "sentinel without a master name",
        edit(inline_url("sentinel://s1.apps.svc:26379;sentinel://s2.apps.svc:26379")),
        f'spec.broker.sentinelMaster: Invalid value: "object": {model.MSG_SENTINEL_MASTER_MISSING}',
        model.MSG_SENTINEL_MASTER_MISSING,
    ),
    Bad(
        "a master name without sentinel",
        edit(("spec.broker", {"url": "redis://redis.apps.svc:6379/0", "sentinelMaster": "mymaster"})),
        model.MSG_SENTINEL_MASTER_UNUSED,
        model.MSG_SENTINEL_MASTER_UNUSED,
    ),
    Bad(
        "a CA for a plain redis:// URL",
        edit(
            (
                "spec.broker",
                {"url": "redis://redis.apps.svc:6379/0", "caFrom": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}},
            )
        ),
        f'spec.broker.caFrom: Invalid value: "object": {model.MSG_CA_UNUSED}',
        model.MSG_CA_UNUSED,
    ),
    Bad(
        "urlFrom without secretKeyRef",
        edit(("spec.broker.urlFrom", {"name": "shop-broker", "key": "url"})),
        "spec.broker.urlFrom.secretKeyRef: Required value",
        "spec.broker.urlFrom: must be {secretKeyRef: {name: ..., key: ...}}",
        crd_errors=3,  # and the two fields it does not know
    ),
    Bad(
        "priority steps out of order",
        edit(("spec.broker.prioritySteps", [0, 6, 3, 9])),
        f'spec.broker.prioritySteps: Invalid value: "list": {model.MSG_PRIORITY_STEPS}',
        f"spec.broker.prioritySteps: {model.MSG_PRIORITY_STEPS}",
    ),
    Bad(
        "priority steps not starting at 0",
        edit(("spec.broker.prioritySteps", [3, 6, 9])),
        model.MSG_PRIORITY_STEPS,
        model.MSG_PRIORITY_STEPS,
    ),
    Bad(
        "too many queues",
        edit(("spec.queues", [{"name": f"q{i}"} for i in range(33)])),
        "spec.queues: Too many: 33: must have at most 32 items",
        "spec.queues: List should have at most 32 items",
    ),
    Bad(
        "no queues",
        edit(("spec.queues", [])),
        "spec.queues: Invalid value: []: spec.queues in body should have at least 1 items",
        "spec.queues: List should have at least 1 item",
    ),
    Bad(
        "solo with concurrency 4",
        edit(("spec.queues.1.pool", "solo"), ("spec.queues.1.concurrency", 4)),
        f'spec.queues[1].concurrency: Invalid value: "object": {model.MSG_SOLO}',
        model.MSG_SOLO,
    ),
    Bad(
        "prefork with 100 processes",
        edit(("spec.queues.1.concurrency", 100)),
        model.MSG_PREFORK,
        model.MSG_PREFORK,
    ),
    Bad(
        "threads with 5000 threads",
        edit(("spec.queues.1.pool", "threads"), ("spec.queues.1.concurrency", 5000)),
        model.MSG_THREADS,
        model.MSG_THREADS,
    ),
    Bad(
        "maxTasksPerChild on gevent",
        edit(("spec.queues.0.maxTasksPerChild", 100)),
        f'spec.queues[0].maxTasksPerChild: Invalid value: "object": {model.MSG_MAX_TASKS_PER_CHILD}',
        model.MSG_MAX_TASKS_PER_CHILD,
    ),
    Bad(
        "app that is not a module path",
        edit(("spec.app", "celery -A shop worker")),
        f'spec.app: Invalid value: "str": {model.MSG_APP}',
        f"spec.app: {model.MSG_APP}",
    ),
    Bad(
        "no image",
        edit(("spec.template.image", DELETE)),
        "spec.template.image: Required value",
        "spec.template.image: required field is missing",
    ),
    Bad(
        "misspelled field",
        edit(("spec.queues.0.concurency", 4)),
        'unknown field "spec.queues[0].concurency"',
        "spec.queues[0].concurency: unknown field",
    ),
    Bad(
        "bad resource quantity",
        edit(("spec.template.resources", {"limits": {"memory": "lots"}})),
        'spec.template.resources.limits.memory: Invalid value: "lots"',
        "spec.template.resources.limits.memory: 'lots' is not a Kubernetes quantity",
    ),
    Bad(
        "bad image pull policy",
        edit(("spec.template.imagePullPolicy", "Sometimes")),
        'spec.template.imagePullPolicy: Unsupported value: "Sometimes"',
        "spec.template.imagePullPolicy: Input should be 'Always', 'IfNotPresent' or 'Never'",
    ),
    Bad(
        "poll interval too short",
        edit(("spec.scaling", {"pollIntervalSeconds": 0.1})),
        "spec.scaling.pollIntervalSeconds: Invalid value: 0.1: spec.scaling.pollIntervalSeconds in body should be "
        "greater than or equal to 0.5",
        "spec.scaling.pollIntervalSeconds: Input should be greater than or equal to 0.5",
    ),
    Bad(
        "a queue's scale-up step of 0 pods",
        edit(("spec.queues.1.scaling", {"scaleUp": {"pods": 0}})),
        "spec.queues[1].scaling.scaleUp.pods: Invalid value: 0",
        "spec.queues[1].scaling.scaleUp.pods: Input should be greater than or equal to 1",
    ),
    Bad(
        "a queue named like beat's Deployment",
        edit(("spec.beat", {}), ("spec.queues.1.name", "celery-beat")),
        f'spec.queues: Invalid value: "object": {model.MSG_QUEUE_BEAT}',
        model.MSG_QUEUE_BEAT,
    ),
    Bad(
        "a queue named like Flower's Deployment",
        edit(("spec.flower", {"auth": {"basicFrom": BASIC}}), ("spec.queues.1.name", "flower")),
        f'spec.queues: Invalid value: "object": {model.MSG_QUEUE_FLOWER}',
        model.MSG_QUEUE_FLOWER,
    ),
    Bad(
        "a beat scheduler that is not a class path",
        edit(("spec.beat", {"scheduler": "django celery beat"})),
        f'spec.beat.scheduler: Invalid value: "str": {model.MSG_SCHEDULER}',
        f"spec.beat.scheduler: {model.MSG_SCHEDULER}",
    ),
    Bad(
        "Flower without auth",
        edit(("spec.flower", {"taskEvents": True})),
        "spec.flower.auth: Required value",
        "spec.flower.auth: required field is missing",
    ),
    Bad(
        "Flower with both kinds of auth",
        edit(("spec.flower", {"auth": {"basicFrom": BASIC, "oauth": OAUTH}})),
        f'spec.flower.auth: Invalid value: "object": {model.MSG_FLOWER_AUTH}',
        model.MSG_FLOWER_AUTH,
    ),
    Bad(
        "Flower's state volume without persistence",
        edit(("spec.flower", {"auth": {"oauth": OAUTH}, "stateVolume": {"emptyDir": {}}})),
        f'spec.flower.stateVolume: Invalid value: "object": {model.MSG_FLOWER_STATE_VOLUME}',
        model.MSG_FLOWER_STATE_VOLUME,
    ),
    Bad(
        "Flower's URL prefix with a leading slash",
        edit(("spec.flower", {"auth": {"basicFrom": BASIC}, "urlPrefix": "/flower"})),
        f'spec.flower.urlPrefix: Invalid value: "str": {model.MSG_URL_PREFIX}',
        model.MSG_URL_PREFIX,
    ),
    Bad(
        "a Flower password in the spec",
        edit(("spec.flower", {"auth": {"basic": "ops:s3cret"}})),
        'unknown field "spec.flower.auth.basic"',
        "spec.flower.auth.basic: unknown field",
    ),
    Bad(
        "a cron expression with four fields",
        edit(("spec.scaling", {"schedules": [{"cron": "0 * * *", "durationSeconds": 60, "replicas": 2}]})),
        'spec.scaling.schedules[0].cron: Invalid value: "0 * * *"',
        f"spec.scaling.schedules[0].cron: {model.MSG_CRON}",
    ),
    Bad(
        "a policy that does not exist",
        edit(("spec.queues.1.scaling", {"policy": "predictive"})),
        'spec.queues[1].scaling.policy: Unsupported value: "predictive"',
        "spec.queues[1].scaling.policy: Input should be 'throughput' or 'demand'",
    ),
    Bad(
        "a schedule without replicas",
        edit(("spec.scaling", {"schedules": [{"cron": "0 * * * *", "durationSeconds": 60}]})),
        "spec.scaling.schedules[0].replicas: Required value",
        "spec.scaling.schedules[0].replicas: required field is missing",
    ),
    Bad(
        "pool name too long for a label",
        edit(("metadata.name", "a" * 64)),
        f'Invalid value: "object": {model.MSG_POOL_NAME}',
        f"metadata.name: {model.MSG_POOL_NAME}",
    ),
]


def test_at_least_fifteen_bad_workerpools() -> None:
    assert len(BAD) >= 15
    assert len({bad.name for bad in BAD}) == len(BAD)


@pytest.mark.parametrize("bad", BAD, ids=str)
def test_bad_workerpool_is_refused_by_the_crd(bad: Bad) -> None:
    errors = crd_rules.validate(bad.obj)
    assert len(errors) == bad.crd_errors, errors
    assert any(bad.crd_says in error for error in errors), errors


@pytest.mark.parametrize("bad", BAD, ids=str)
def test_bad_workerpool_is_refused_by_the_model(bad: Bad) -> None:
    message = model_error(bad.obj)
    assert message is not None, "the model accepted it"
    assert bad.model_says in message


GOOD: list[tuple[str, dict[str, Any]]] = [
    ("the base case", edit()),
    ("inline URL without a password", edit(inline_url("redis://redis.apps.svc:6379/0"))),
    ("inline URL with a user but no password", edit(inline_url("redis://worker@redis.apps.svc:6379/0"))),
    (
        "sentinels with a master",
        edit(("spec.broker", {"url": "sentinel://s1:26379;sentinel://s2:26379", "sentinelMaster": "mymaster"})),
    ),
    (
        "rediss with a CA",
        edit(("spec.broker", {"url": "rediss://r:6380/0", "caFrom": {"secretKeyRef": {"name": "ca", "key": "c"}}})),
    ),
    (
        "urlFrom with a sentinel master (the URL's scheme is only known at run time)",
        edit(("spec.broker.sentinelMaster", "mymaster")),
    ),
    ("every priority step", edit(("spec.broker.prioritySteps", list(range(10))))),
    ("solo with concurrency 1", edit(("spec.queues.1.pool", "solo"))),
    ("prefork at its limit", edit(("spec.queues.1.concurrency", 64))),
    ("min equal to max", edit(("spec.queues.1.minReplicas", 3), ("spec.queues.1.maxReplicas", 3))),
    ("queue names with dots and underscores", edit(("spec.queues.1.name", "reports.monthly_v2"))),
    ("32 queues", edit(("spec.queues", [{"name": f"q{i}"} for i in range(32)]))),
    ("a module-only app", edit(("spec.app", "proj"))),
    ("pool name of 63 characters", edit(("metadata.name", "a" * 63))),
    ("integer and string quantities", edit(("spec.template.resources", {"requests": {"cpu": 2, "memory": "1.5Gi"}}))),
    ("beat with every default", edit(("spec.beat", {}))),
    (
        "Flower with OAuth, persistent on a volume",
        edit(("spec.flower", {"auth": {"oauth": OAUTH}, "persistent": True, "stateVolume": {"emptyDir": {}}})),
    ),
    (
        "queues named celery-beat and flower without beat and Flower",
        edit(("spec.queues.0.name", "celery-beat"), ("spec.queues.1.name", "flower")),
    ),
]


@pytest.mark.parametrize(("name", "obj"), GOOD, ids=[name for name, _ in GOOD])
def test_good_workerpool_is_accepted_by_both(name: str, obj: dict[str, Any]) -> None:
    assert crd_rules.validate(obj) == []
    assert model_error(obj) is None


# --- the CRD and the model agree on every queue and broker, not only on the listed cases ------------------

queues = st.fixed_dictionaries(
    {"name": st.sampled_from(["emails", "Emails", "unacked", "a_b.c", "-x", "x-", "q" * 63, "q" * 64])},
    optional={
        "pool": st.sampled_from([*(pool.value for pool in model.CeleryPool), "processes"]),
        "concurrency": st.integers(-1, 12_000),
        "minReplicas": st.integers(-1, 1001),
        "maxReplicas": st.integers(0, 1001),
        "prefetchMultiplier": st.integers(0, 1001),
        "maxTasksPerChild": st.integers(0, 3),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queue=queues)
def test_crd_and_model_agree_on_any_queue(queue: dict[str, Any]) -> None:
    obj = edit(("spec.queues", [queue]))
    assert (crd_rules.validate(obj) == []) == (model_error(obj) is None), (crd_rules.validate(obj), model_error(obj))


brokers = st.fixed_dictionaries(
    {},
    optional={
        "url": st.sampled_from(
            [
                "redis://r:6379/0",
                "redis://:pw@r:6379/0",
                "redis://u@r",
                "rediss://r:6380",
                "sentinel://a:26379;sentinel://b:26379",
                "sentinel://a:26379;redis://b",
                "http://r",
                "redis://r/0?password=x",
            ]
        ),
        "urlFrom": st.just({"secretKeyRef": {"name": "s", "key": "url"}}),
        "caFrom": st.just({"secretKeyRef": {"name": "s", "key": "ca"}}),
        "sentinelMaster": st.just("mymaster"),
        "prioritySteps": st.sampled_from([[0], [0, 3, 6, 9], [0, 0], [1, 2], [0, 9, 5], list(range(11))]),
        "separator": st.sampled_from([":", "\x06\x16", "", "_"]),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broker=brokers)
def test_crd_and_model_agree_on_any_broker(broker: dict[str, Any]) -> None:
    obj = edit(("spec.broker", broker), ("spec.queues.1.name", "reports_monthly"))
    assert (crd_rules.validate(obj) == []) == (model_error(obj) is None), (crd_rules.validate(obj), model_error(obj))


# --- the reference documents every field ------------------------------------------------------------------


def test_docs_describe_every_field() -> None:
    text = DOCS.read_text()
    missing = []
    for root in ("spec", "status"):
        for path, _node in crd_rules.walk_schema(SCHEMA["properties"][root], root):
            if "[*]." in path.replace("queues[*].", "queues[].").replace("conditions[*].", "conditions[]."):
                continue  # inside a Kubernetes sub-object (env, volumes, ...) or a map value
            if path.endswith("[*]") or path == "spec":
                continue
            shown = path.replace("[*]", "[]")
            if f"`{shown}`" not in text:
                missing.append(shown)
    assert missing == []


def test_docs_state_every_default() -> None:
    """The Default column shows the CRD's default for every field that has a scalar or list default."""
    rows = dict(re.findall(r"^\| `(spec[^`]*)` \| [^|]* \| ([^|]*) \|", DOCS.read_text(), flags=re.M))
    checked = 0
    for path, node in crd_rules.walk_schema(SCHEMA["properties"]["spec"], "spec"):
        if "default" not in node or isinstance(node["default"], dict):
            continue
        default = node["default"]
        shown = {f"`{json.dumps(default)}`", f"`{default}`"}  # "" and "\u0006\u0016" need their quotes
        assert any(form in rows[path.replace("[*]", "[]")] for form in shown), path
        checked += 1
    assert checked >= 15


def test_docs_example_is_accepted() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    pools = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc and doc.get("kind") == KIND]
    assert pools
    for pool in pools:
        assert crd_rules.validate(pool) == []
        assert model_error(pool) is None
