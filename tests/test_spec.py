"""The typed WorkerPool model: defaults, merging of per-queue scaling, broker settings, and agreement with the
CRD (defaults, enums, bounds, required fields), so the two cannot drift apart."""

from __future__ import annotations

import copy
import dataclasses
import typing
from types import MappingProxyType
from typing import Any

import pytest
from pydantic import BaseModel

from tests import crd_rules
from tests.test_crd import VALID, edit, example
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.crd_keywords import UnderKey
from workerpool_operator.engine import ScalingPolicy, Schedule
from workerpool_operator.spec import (
    QUANTITY_PATTERN,
    CeleryPool,
    PolicyField,
    QueueSpec,
    ScalingOverride,
    ScalingSpec,
    SecretKeyRef,
    SpecError,
    WorkerPool,
    WorkerPoolSpec,
    policy_values,
)

SCHEMA = crd_rules.openapi_schema(crd_rules.load_crd())
SPEC_SCHEMA = SCHEMA["properties"]["spec"]


def parse(obj: dict[str, Any]) -> WorkerPool:
    return WorkerPool.from_object(obj)


# --- agreement with the CRD ----------------------------------------------------------------------------------


def _without_empties(value: Any) -> Any:
    """None, [] and {} mean "not set" on both sides: drop them (recursively) before comparing."""
    if isinstance(value, dict):
        cleaned = {key: _without_empties(item) for key, item in value.items()}
        return {key: item for key, item in cleaned.items() if item not in (None, [], {})}
    if isinstance(value, list):
        return [_without_empties(item) for item in value]
    return value


@pytest.mark.parametrize("name", ["minimal.yaml", "multi-queue.yaml", "full.yaml"])
def test_model_applies_exactly_the_crds_defaults(name: str) -> None:
    """What the API server stores (the CRD's defaults filled in) is what the model parses, field for field."""
    obj = example(name)
    stored = crd_rules.apply_defaults(obj, SCHEMA)["spec"]
    parsed = parse(obj).spec.model_dump(mode="json", by_alias=True)
    assert _without_empties(parsed) == _without_empties(stored)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON-schema node with its $ref followed and an `X | None` union unwrapped."""
    if "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    options = [option for option in node.get("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:
        node = {**_resolve(options[0], defs), **{k: v for k, v in node.items() if k != "anyOf"}}
    return node


BOUNDS = ("enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "maxProperties")


def _compare(crd: dict[str, Any], mine: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    mine = _resolve(mine, defs)
    if crd.get("x-kubernetes-int-or-string"):  # a quantity: the model checks it with the CRD's own pattern
        return [] if crd["pattern"] == QUANTITY_PATTERN else [f"{path}: the quantity pattern differs"]
    problems = [
        f"{path}: {key} is {crd.get(key)!r} in the CRD, {mine.get(key)!r} in the model"
        for key in BOUNDS
        if crd.get(key) != mine.get(key)
    ]
    crd_default = crd_rules.apply_defaults(crd["default"], crd) if "default" in crd else None
    if _without_empties({"d": crd_default}) != _without_empties({"d": mine.get("default")}):
        problems.append(f"{path}: default is {crd_default!r} in the CRD, {mine.get('default')!r} in the model")
    if "properties" in crd and "properties" in mine:
        if set(crd["properties"]) != set(mine["properties"]):
            problems.append(f"{path}: fields {sorted(crd['properties'])} in the CRD, {sorted(mine['properties'])}")
        if set(crd.get("required", [])) != set(mine.get("required", [])):
            problems.append(f"{path}: required {crd.get('required')} in the CRD, {mine.get('required')} in the model")
        for key in crd["properties"].keys() & mine["properties"].keys():
            problems += _compare(crd["properties"][key], mine["properties"][key], defs, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(crd.get(key), dict) and isinstance(mine.get(key), dict):
            problems += _compare(crd[key], mine[key], defs, f"{path}[*]")
    return problems


def test_model_and_crd_declare_the_same_fields_defaults_enums_and_bounds() -> None:
    mine = WorkerPoolSpec.model_json_schema(by_alias=True)
    assert _compare(SPEC_SCHEMA, mine, mine.get("$defs", {}), "spec") == []


def test_the_comparison_notices_a_drift() -> None:
    """The agreement test is not vacuous: a changed default, bound or enum in the CRD is reported."""
    mine = WorkerPoolSpec.model_json_schema(by_alias=True)
    drifted = copy.deepcopy(SPEC_SCHEMA)
    queue = drifted["properties"]["queues"]["items"]["properties"]
    queue["maxReplicas"]["default"] = 100
    queue["concurrency"]["maximum"] = 500
    queue["pool"]["enum"] = ["prefork", "solo"]
    drifted["properties"]["scaling"]["properties"]["scaleUp"]["properties"]["pods"]["default"] = 2
    problems = "\n".join(_compare(drifted, mine, mine.get("$defs", {}), "spec"))
    assert "spec.queues[*].maxReplicas: default is 100 in the CRD, 10 in the model" in problems
    assert "spec.queues[*].concurrency: maximum is 500 in the CRD, 10000 in the model" in problems
    assert "spec.queues[*].pool: enum is ['prefork', 'solo'] in the CRD" in problems
    assert "spec.scaling.scaleUp.pods: default is 2 in the CRD, 4 in the model" in problems


def _markers(model: type[BaseModel]) -> list[PolicyField]:
    """The PolicyField markers of a model's fields and of the models it holds."""
    found = []
    for field in model.model_fields.values():
        found += [meta for meta in field.metadata if isinstance(meta, PolicyField)]
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _markers(field.annotation)
    return found


def test_every_engine_setting_is_fed_by_exactly_one_spec_field() -> None:
    fed = [marker.name for marker in _markers(QueueSpec) + _markers(ScalingSpec)]
    assert sorted(fed) == sorted(field.name for field in dataclasses.fields(ScalingPolicy))
    assert _markers(ScalingOverride) == []  # only the merged spec feeds the engine


def test_crd_defaults_are_the_engines() -> None:
    """What the API server stores for a queue and a pool that set nothing feeds the engine its own defaults."""
    scaling = crd_rules.apply_defaults({}, SPEC_SCHEMA["properties"]["scaling"])
    queue = crd_rules.apply_defaults({"name": "q"}, SPEC_SCHEMA["properties"]["queues"]["items"])
    fed = policy_values(QueueSpec.model_validate(queue)) | policy_values(ScalingSpec.model_validate(scaling))
    assert fed.pop("target_per_replica") is None  # unset: the queue's concurrency (policy_for)
    engine = ScalingPolicy()
    assert fed == {
        name: getattr(engine, name) for name in {f.name for f in dataclasses.fields(engine)} - {"target_per_replica"}
    }


def test_queue_overrides_are_the_pool_wide_settings_each_optional() -> None:
    assert ScalingOverride.model_fields.keys() == ScalingSpec.model_fields.keys()
    assert all(field.default is None for field in ScalingOverride.model_fields.values())
    assert ScalingOverride().model_dump(exclude_none=True) == {}
    override = ScalingOverride.model_validate({"scaleUp": {"pods": 6}, "fallback": {"replicas": 0}, "paused": True})
    assert override.model_dump(exclude_none=True) == {
        "scaleUp": {"pods": 6},
        "fallback": {"replicas": 0},
        "paused": True,
    }
    merged = ScalingSpec().merged(override)
    assert (merged.scale_up.pods, merged.scale_up.percent, merged.fallback.replicas, merged.paused) == (6, 100, 0, True)


# --- parsing --------------------------------------------------------------------------------------------------


def test_minimal_pool_gets_every_default() -> None:
    pool = parse(example("minimal.yaml"))
    spec = pool.spec
    assert (pool.name, pool.namespace, pool.generation, pool.uid) == ("shop", "default", 0, None)
    assert spec.broker.url is None
    assert spec.broker.url_from == SecretKeyRef(name="shop-broker", key="url")
    assert spec.broker.priority_steps == [0, 3, 6, 9]
    assert spec.broker.separator == "\x06\x16"
    assert spec.broker.global_keyprefix == ""
    (queue,) = spec.queues
    assert (queue.name, queue.pool, queue.concurrency) == ("celery", CeleryPool.PREFORK, 1)
    assert (queue.min_replicas, queue.max_replicas, queue.prefetch_multiplier) == (0, 10, 1)
    assert queue.max_tasks_per_child is None and queue.resources is None
    assert spec.template.termination_grace_period_seconds == 30
    assert spec.template.env == [] and spec.template.affinity is None and spec.template.command is None
    assert spec.scaling == ScalingSpec()
    assert spec.policy_for("celery") == ScalingPolicy(min_replicas=0, max_replicas=10, target_per_replica=1)
    assert spec.poll_interval_for("celery") == 2.0


def test_metadata_is_read() -> None:
    obj = edit(("metadata", {"name": "shop", "namespace": "apps", "generation": 4, "uid": "1234-abcd"}))
    pool = parse(obj)
    assert (pool.name, pool.namespace, pool.generation, pool.uid) == ("shop", "apps", 4, "1234-abcd")


def test_kubernetes_sub_objects_stay_plain_data() -> None:
    template = parse(example("full.yaml")).spec.template
    raw = example("full.yaml")["spec"]["template"]
    assert template.env == raw["env"]
    assert template.affinity == raw["affinity"]
    assert template.volumes == raw["volumes"] and template.volume_mounts == raw["volumeMounts"]
    assert template.tolerations == raw["tolerations"]
    assert template.topology_spread_constraints == raw["topologySpreadConstraints"]
    assert template.image_pull_secrets == [{"name": "registry-credentials"}]
    assert template.resources.model_dump() == raw["resources"]
    assert template.extra_args == ["--without-mingle", "--without-gossip"]
    assert isinstance(template.affinity, dict)


def test_queue_overrides_are_merged_over_pool_wide_scaling() -> None:
    spec = parse(example("full.yaml")).spec
    reports = spec.policy_for("reports")
    assert reports == ScalingPolicy(
        min_replicas=1,
        max_replicas=20,
        target_per_replica=8,
        scale_up_pods=2,
        scale_up_percent=50,
        scale_up_period=30.0,
        scale_down_window=600.0,
        idle_before_zero=900.0,
        activation_backlog=5,
        fallback_failure_threshold=5,
        fallback_replicas=2,
        paused=False,
        drain_timeout=7200.0,
        policy="demand",
        startup_seconds=90.0,
        schedules=(Schedule("0 2 * * *", 3600.0, 6, "Europe/Paris"),),  # replaces the pool-wide list
        target_wait=300.0,  # pool-wide
    )
    assert spec.poll_interval_for("reports") == 5.0
    emails = spec.policy_for("emails")  # only the targets are overridden; the rest is pool-wide
    assert emails == ScalingPolicy(
        min_replicas=0,
        max_replicas=10,
        target_per_replica=150,
        fallback_replicas=1,
        schedules=(Schedule("0 * * * *", 300.0, 2, "UTC"),),
        target_wait=30.0,
    )
    assert spec.poll_interval_for("emails") == 2.0


def test_partial_nested_override_keeps_the_rest_of_the_pool_wide_object() -> None:
    obj = edit(
        ("spec.scaling", {"scaleUp": {"pods": 6, "percent": 200}, "fallback": {"replicas": 2}, "paused": True}),
        ("spec.queues.1.scaling", {"scaleUp": {"periodSeconds": 5}, "fallback": {"failureThreshold": 9}}),
    )
    spec = parse(obj).spec
    policy = spec.policy_for("reports")
    assert (policy.scale_up_pods, policy.scale_up_percent, policy.scale_up_period) == (6, 200, 5.0)
    assert (policy.fallback_failure_threshold, policy.fallback_replicas, policy.paused) == (9, 2, True)
    untouched = spec.policy_for("emails")
    assert (untouched.scale_up_period, untouched.fallback_failure_threshold) == (10.0, 3)


def test_target_defaults_to_concurrency_unless_set_pool_wide_or_per_queue() -> None:
    spec = parse(example("multi-queue.yaml")).spec
    targets = {queue.name: spec.policy_for(queue.name).target_per_replica for queue in spec.queues}
    assert targets == {"reports": 4, "thumbnails": 16, "billing": 1, "emails": 200, "webhooks": 50}
    pool_wide = parse(edit(("spec.scaling", {"targetPerReplica": 7}))).spec
    assert [pool_wide.policy_for(q.name).target_per_replica for q in pool_wide.queues] == [7, 7]


def test_unknown_queue_is_a_key_error_naming_the_queues() -> None:
    spec = parse(VALID).spec
    with pytest.raises(KeyError, match=r"no queue 'billing'.*emails, reports"):
        spec.policy_for("billing")
    assert spec.queue("reports").name == "reports"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "a WorkerPool must be a mapping"),
        ({"spec": VALID["spec"]}, "metadata.name: a WorkerPool needs a name"),
        ({"metadata": {"name": "shop"}}, "spec: a WorkerPool needs a spec"),
        ({"metadata": {"name": "shop"}, "spec": "queues: [a]"}, "spec: Input should be a valid dictionary"),
    ],
)
def test_malformed_objects_get_a_readable_error(obj: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        WorkerPool.from_object(obj)


def test_every_problem_is_reported_at_once() -> None:
    obj = edit(("spec.queues.0.concurrency", 0), ("spec.queues.1.pool", "fork"), ("spec.app", ""))
    with pytest.raises(SpecError) as caught:
        parse(obj)
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["spec.app", "spec.queues[0].concurrency", "spec.queues[1].pool"]


def test_serialises_back_to_the_resource_shape() -> None:
    spec = parse(example("full.yaml")).spec
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["broker"]["urlFrom"] == {"secretKeyRef": {"name": "shop-broker", "key": "url"}}
    assert WorkerPoolSpec.model_validate(dumped) == spec


# --- broker settings -------------------------------------------------------------------------------------------


def test_to_config_carries_the_transport_options() -> None:
    obj = edit(("spec.broker.globalKeyprefix", "shop:"), ("spec.broker.prioritySteps", [0, 5]))
    broker = parse(obj).spec.broker
    config = broker.to_config("redis://:s3cret@redis:6379/0\n", None)  # from a Secret: passwords are fine
    assert config == BrokerConfig(
        url="redis://:s3cret@redis:6379/0", global_keyprefix="shop:", priority_steps=(0, 5), separator="\x06\x16"
    )
    hash(config)


def test_to_config_for_sentinel_and_tls() -> None:
    sentinel = parse(edit(("spec.broker.sentinelMaster", "mymaster"))).spec.broker
    config = sentinel.to_config("sentinel://a:26379;sentinel://b:26379", None)
    assert (config.url, config.sentinel_master) == ("sentinel://a:26379;sentinel://b:26379", "mymaster")
    tls = parse(edit(("spec.broker.caFrom", {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}))).spec.broker
    assert tls.ca_from == SecretKeyRef(name="ca", key="ca.crt")
    assert tls.to_config("rediss://r:6380/0", "-----BEGIN CERTIFICATE-----").ca_pem == "-----BEGIN CERTIFICATE-----"


@pytest.mark.parametrize(
    ("changes", "url", "ca", "message"),
    [
        ((), "sentinel://a:26379", None, "needs broker.sentinelMaster"),
        ((("spec.broker.sentinelMaster", "m"),), "redis://r:6379", None, "sentinelMaster only applies"),
        ((), "redis://r:6379", "PEM", "caFrom only applies to a rediss://"),
        ((), "amqp://guest@rabbit//", None, "the broker URL must be redis://, rediss:// or sentinel://"),
        ((), "", None, "the broker URL must be"),
    ],
)
def test_to_config_refuses_a_secret_url_that_does_not_fit(
    changes: tuple[tuple[str, Any], ...], url: str, ca: str | None, message: str
) -> None:
    broker = parse(edit(*changes)).spec.broker
    with pytest.raises(SpecError, match=message):
        broker.to_config(url, ca)


def test_accepts_any_mapping_like_kopfs_body() -> None:
    raw = example("full.yaml")
    views = {"metadata": MappingProxyType(raw["metadata"]), "spec": MappingProxyType(raw["spec"])}
    frozen = MappingProxyType({**raw, **views})
    assert WorkerPool.from_object(frozen) == WorkerPool.from_object(raw)


def test_cron_and_time_zone_are_checked_beyond_what_the_crd_can_say() -> None:
    """The CRD checks the shape (five fields); the model also refuses a minute 61 and an unknown zone."""
    schedule = {"cron": "61 * * * *", "durationSeconds": 60, "replicas": 2}
    with pytest.raises(SpecError, match=r"spec.scaling.schedules\[0\].cron: not a cron expression: Bad minute"):
        parse(edit(("spec.scaling", {"schedules": [schedule]})))
    schedule = {"cron": "0 * * * *", "durationSeconds": 60, "replicas": 2, "timeZone": "Mars/Olympus"}
    with pytest.raises(SpecError, match="unknown time zone 'Mars/Olympus'"):
        parse(edit(("spec.queues.0.scaling", {"schedules": [schedule]})))


# --- the reference documents every field of the model --------------------------------------------------------


def _model_in(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model an annotation holds (``X``, ``X | None``, ``list[X]``, ``Annotated[X, UnderKey(k)]``), and what
    the YAML path adds on the way to its fields (``[]`` for a list's items, ``.k`` for a key it is nested under)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    args = typing.get_args(annotation)
    for arg in args:
        found = _model_in(arg)
        if found is not None:
            model, suffix = found
            if typing.get_origin(annotation) is list:
                suffix = "[]" + suffix
            suffix = "".join(f".{meta.key}" for meta in args if isinstance(meta, UnderKey)) + suffix
            return model, suffix
    return None


def model_paths(model: type[BaseModel], prefix: str) -> list[str]:
    """Every field of a model and of the models it holds, spelled as docs/workerpool.md does (`spec.queues[].name`)."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}"
        paths.append(path)
        inner = _model_in(field.rebuild_annotation())
        if inner is not None:
            if inner[1].startswith("."):
                paths.append(path + inner[1])
            paths += model_paths(inner[0], path + inner[1])
    return paths


def test_docs_name_every_field_of_the_model() -> None:
    paths = model_paths(WorkerPoolSpec, "spec")
    assert {"spec.queues[].scaling.scaleUp.pods", "spec.scaling.schedules[].timeZone", "spec.broker.urlFrom"} <= set(
        paths
    )
    text = (crd_rules.REPO / "docs" / "workerpool.md").read_text()
    assert [path for path in paths if f"`{path}`" not in text] == []
