"""The WorkerPool CRD, generated from the model: ``python -m workerpool_operator.crd FILE...`` (``make crd``).

Why: the spec's schema used to be written four times (the CRD's pool-wide and per-queue scaling blocks, the
chart's copy, the model), with tests policing the copies. Now ``spec.py`` is the source. pydantic's JSON schema
of ``WorkerPoolSpec`` (types, bounds, enums, defaults, each field's docstring as its description, and the
Kubernetes keywords and CEL rules declared with ``crd_keywords.py``) becomes the structural schema of
``spec``; the rest of the CRD (names, printer columns, the status the operator writes) is declared here.
crds/workerpool.yaml and the chart's files/workerpool-crd.yaml are this module's output, byte for byte;
tests/test_crd_generated.py fails when either is stale.

From JSON schema to a structural schema (``structural``):
- ``$ref`` is inlined; a model's docstring is for Python readers, so only a field's description is kept;
- ``X | None`` becomes ``X``: an optional field is one left out (structural schemas have no null type);
- pydantic's ``title`` and ``additionalProperties: false`` go (the API server prunes or refuses unknown fields
  by itself; ``extra="forbid"`` is the model's side of that);
- defaults are written as the API server applies them: none for None or an empty list or map (the model reads
  a missing field the same way, and the API server would store the empty value in every object); an object's
  default keeps only what its own fields' defaults do not give, so ``{}`` where it exists to have the API
  server fill in nested defaults (``spec.scaling``), and none where nothing inside has a default;
- whole floats are written as integers (``2``, not ``2.0``), and descriptions on one line (a docstring's line
  breaks are the source file's);
- a keyword this module does not know is an error, not passed through: structural schemas allow few.
Pure apart from ``main``, which writes the files.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from workerpool_operator import API_GROUP, API_VERSION, KIND, PLURAL
from workerpool_operator.crd_keywords import Rule, list_map, rules
from workerpool_operator.spec import MAX_POOL_NAME, MAX_QUEUES, MSG_POOL_NAME, WorkerPoolSpec

__all__ = ["HEADER", "crd", "main", "render", "spec_schema", "structural"]

Schema = dict[str, Any]

HEADER = """\
# WorkerPool: run and autoscale Celery workers, one Deployment per queue. Reference: docs/workerpool.md.
# Generated from the model (operator/workerpool_operator/spec.py) by operator/workerpool_operator/crd.py:
# do not edit by hand; change the model and run `make crd` (tests/test_crd_generated.py fails when stale).
"""

# The order keywords are written in (a readable file; the API server does not care), and the only ones allowed.
KEYWORDS = (
    "type",
    "format",
    "description",
    "default",
    "required",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-int-or-string",
    "anyOf",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
    "additionalProperties",
    "items",
    "properties",
)
DROPPED = ("title", "$defs")
RULE_KEYS = ("rule", "messageExpression", "message", "fieldPath", "reason", "optionalOldSelf")
NUMBERS = ("default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")

WIDTH, FOLD_AT = 116, 100  # text longer than FOLD_AT is folded at WIDTH columns

SPEC_DESCRIPTION = "What the user wants."
ROOT_DESCRIPTION = "A pool of Celery workers, one Deployment per queue, scaled on what the broker holds."


# --- from pydantic's JSON schema to a structural schema ------------------------------------------------------


def structural(node: Mapping[str, Any], defs: Mapping[str, Schema]) -> Schema:
    """``node`` (a pydantic JSON-schema node, its ``$ref`` targets in ``defs``) as a structural schema."""
    node = _resolved(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in DROPPED:
            continue
        if key not in KEYWORDS:
            raise ValueError(f"{key!r} has no place in a structural schema (or this generator): {dict(node)}")
        if key == "properties":
            out[key] = {name: structural(child, defs) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if value is not False:  # dict[str, Any]: declare it with crd_keywords.raw_object instead
                raise ValueError(f"an open object must say what it holds (crd_keywords.raw_object): {dict(node)}")
        elif key == "anyOf":
            out[key] = [structural(option, defs) for option in value]
        elif key == "x-kubernetes-validations":
            out[key] = [{name: rule[name] for name in RULE_KEYS if name in rule} for rule in value]
        elif key == "description":
            out[key] = " ".join(value.split())  # a docstring's line breaks are the source's, not the text's
        else:
            out[key] = _whole(value) if key in NUMBERS else value
    if "default" in out:
        default = _written_default(out.pop("default"), out)
        if default is not _UNSET:
            out["default"] = default
    return {key: out[key] for key in KEYWORDS if key in out}


def _resolved(node: Mapping[str, Any], defs: Mapping[str, Schema]) -> Mapping[str, Any]:
    """``$ref`` followed (the field's own keywords win) and ``X | None`` unwrapped, until neither is left."""
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            own = {key: value for key, value in node.items() if key != "$ref"}
            node = {**{key: value for key, value in target.items() if key != "description"}, **own}
            continue
        options = node.get("anyOf", [])
        if {"type": "null"} in options:
            (option,) = [option for option in options if option != {"type": "null"}]
            node = {**option, **{key: value for key, value in node.items() if key != "anyOf"}}
            continue
        return node


class _Unset:
    pass


_UNSET = _Unset()


def _written_default(value: Any, schema: Schema) -> Any:
    """The default as the CRD should state it, or ``_UNSET`` for none (see the module docstring)."""
    if value is None:
        return _UNSET
    properties = schema.get("properties")
    if isinstance(value, dict) and properties is not None:
        kept = {key: item for key, item in value.items() if not _implied(item, properties.get(key, {}))}
        if kept or any("default" in child for child in properties.values()):
            return kept
        return _UNSET
    if value == [] or value == {}:
        return _UNSET
    return value


def _implied(value: Any, schema: Schema) -> bool:
    """Whether the API server's defaulting (or the model reading a missing field) already gives ``value``."""
    written = _written_default(_whole(value), schema)
    return bool(written == schema.get("default", _UNSET))


def _whole(value: Any) -> Any:
    """Whole floats as integers, inside lists and objects too (YAML `2`, not `2.0`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    return value


def spec_schema() -> Schema:
    """The structural schema of ``spec``, from the model."""
    generated = WorkerPoolSpec.model_json_schema(by_alias=True, mode="validation")
    defs = generated.get("$defs", {})
    root = {key: value for key, value in generated.items() if key != "description"}
    return {"type": "object", "description": SPEC_DESCRIPTION, **structural(root, defs)}


# --- the rest of the CRD: what the model does not describe ------------------------------------------------


def _condition_status(condition: str) -> str:
    return f'.status.conditions[?(@.type=="{condition}")].status'


PRINTER_COLUMNS: list[Schema] = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": _condition_status("Ready"),
        "description": "Whether every queue's Deployment exists and the broker answers.",
    },
    {
        "name": "Queues",
        "type": "integer",
        "jsonPath": ".status.queueCount",
        "description": "Queues (one Deployment each).",
    },
    {
        "name": "Backlog",
        "type": "integer",
        "jsonPath": ".status.totalBacklog",
        "description": "Tasks waiting in the broker, summed over every queue.",
    },
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.workers",
        "description": "Ready worker pods / wanted (the Deployments' spec.replicas), summed over every queue, as "
        "kubectl get deploy shows READY.",
    },
    {
        "name": "Rollout",
        "type": "string",
        "jsonPath": ".status.rollout",
        "description": "Workers of an earlier pod template still finishing their tasks (empty: none).",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Reason",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why the pool is (not) ready.",
    },
    {
        "name": "Broker",
        "type": "string",
        "priority": 1,
        "jsonPath": _condition_status("BrokerReachable"),
        "description": "Whether the last poll of the broker succeeded.",
    },
    {"name": "App", "type": "string", "priority": 1, "jsonPath": ".spec.app"},
    {"name": "Paused", "type": "boolean", "priority": 1, "jsonPath": ".spec.scaling.paused"},
    {
        "name": "Waits",
        "type": "string",
        "priority": 1,
        "jsonPath": _condition_status("WaitsWithinTarget"),
        "description": "Whether every queue with a target wait keeps it (empty without targetWaitSeconds).",
    },
    {
        "name": "Beat",
        "type": "string",
        "priority": 1,
        "jsonPath": _condition_status("BeatReady"),
        "description": "Whether the beat pod is ready and the only beat of its app and broker (empty without "
        "spec.beat).",
    },
]


def _count(description: str | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if description:
        schema["description"] = description
    schema["minimum"] = 0
    return schema


def _seconds(description: str) -> Schema:
    return {"type": "number", "description": description, "minimum": 0}


def _text(max_length: int, description: str | None = None, **more: Any) -> Schema:
    schema: Schema = {"type": "string", **({"format": more.pop("format")} if "format" in more else {})}
    if description:
        schema["description"] = description
    return {**schema, **more, "maxLength": max_length}


GENERATION: Schema = {"type": "integer", "format": "int64", "minimum": 0}
TIMESTAMP = _text(64, format="date-time")

CONDITION: Schema = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": _text(316),
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "observedGeneration": GENERATION,
        "lastTransitionTime": TIMESTAMP,
        "reason": _text(1024),
        "message": _text(32768),
    },
}

QUEUE_STATUS: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _text(63),
        "backlog": _count("Tasks waiting in the broker (every priority list)."),
        "inFlight": _count("Tasks the workers report as running or reserved."),
        "oldestTaskAgeSeconds": _seconds(
            "Seconds the oldest waiting task has waited, measured or estimated (see waitSource); 0 when nothing waits."
        ),
        "waitSource": {
            "type": "string",
            "enum": ["Measured", "Estimated"],
            "description": "Measured: from the oldest message's timestamp (queues with a target wait, when the "
            "producers stamp their messages). Estimated: from the backlog and the arrival rate the engine learned, "
            "at most the time since the backlog was last seen empty.",
        },
        "waitP95Seconds": _seconds(
            "p95 of the oldest waiting task's age over the last 5 minutes of polls that found tasks waiting (0: "
            "none did); the window starts again with a new leader."
        ),
        "targetWaitSeconds": _seconds("The queue's targetWaitSeconds."),
        "waitAboveTargetSince": {
            **TIMESTAMP,
            "description": "Since when the oldest waiting task's age is above the target (absent: within it). "
            "Above it for longer than a start-up delay sets the WaitsWithinTarget condition to False.",
        },
        "replicas": _count(),
        "readyReplicas": _count(),
        "desiredReplicas": _count(),
        "draining": _count("Workers asked to drain - they take no new task and are removed once idle."),
        "lastScaleTime": TIMESTAMP,
        "lastScaleReason": _text(1024),
        "versions": {
            "type": "array",
            "maxItems": 16,
            "description": "During a rollout (a new pod template): the workers of each version, the current one "
            "first. Absent when every worker runs the current version.",
            "items": {
                "type": "object",
                "required": ["version"],
                "properties": {
                    "version": _text(16, "The pod template's version (its workerpool.dev/version label)."),
                    "current": {"type": "boolean", "description": "The version the queue's Deployment runs."},
                    "serving": _count("Workers of this version taking tasks."),
                    "stopping": _count("Workers of this version stopping: they finish what they run, then exit."),
                },
            },
        },
    },
}

STATUS: Schema = {
    "type": "object",
    "description": "What the operator observed.",
    "properties": {
        "observedGeneration": GENERATION,
        "conditions": {"type": "array", "maxItems": 16, **list_map("type"), "items": CONDITION},
        "queues": {"type": "array", "maxItems": MAX_QUEUES, **list_map("name"), "items": QUEUE_STATUS},
        "totalBacklog": _count(),
        "totalReplicas": _count("The queues' Deployments' spec.replicas, summed (Pending pods count)."),
        "totalReadyReplicas": _count("The queues' ready worker pods, summed."),
        "workers": _text(32, "totalReadyReplicas/totalReplicas, for the WORKERS column."),
        "rollout": _text(
            128, "Workers of an earlier pod template still finishing their tasks, for the ROLLOUT column."
        ),
        "queueCount": _count(),
        "beat": {
            "type": "object",
            "description": "The beat Deployment, when spec.beat is set.",
            "properties": {"deployment": _text(253), "replicas": _count(), "readyReplicas": _count()},
        },
        "scalerState": _text(
            1048576,
            "The scaling engine's memory per queue, kept across operator restarts, as one compact JSON document "
            "(not for people).",
        ),
    },
}


def openapi_schema() -> Schema:
    """The whole object's schema: the model's ``spec``, the operator's ``status``."""
    return {
        "type": "object",
        "description": ROOT_DESCRIPTION,
        "required": ["spec"],
        **rules(Rule(f"size(self.metadata.name) <= {MAX_POOL_NAME}", MSG_POOL_NAME)),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": STATUS,
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition, as crds/workerpool.yaml holds it."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {
                "app.kubernetes.io/name": "workerpool-operator",
                "app.kubernetes.io/part-of": "workerpool-operator",
            },
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["wp"],
                "categories": ["celery"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


# --- the file --------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block lists indented under their key, lists of plain values on one line, long text folded, rules
    double-quoted on one line."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    # Only folded text (long descriptions) is wrapped; a rule, a message or a pattern stays on its line.
    def write_plain(self, text: str, split: bool = True) -> None:
        super().write_plain(text, split=False)

    def write_single_quoted(self, text: str, split: bool = True) -> None:
        super().write_single_quoted(text, split=False)

    def write_double_quoted(self, text: str, split: bool = True) -> None:
        super().write_double_quoted(text, split=False)


class _Quoted(str):
    """Text written in double quotes (a CEL rule reads better without YAML's doubled single quotes)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(item, str | int | float | bool) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = ">" if len(data) > FOLD_AT and data.isprintable() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _represent_quoted(dumper: yaml.SafeDumper, data: _Quoted) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(_Quoted, _represent_quoted)


def _quoted_rules(node: Any) -> Any:
    """``node`` with every CEL rule and its message as ``_Quoted``."""
    if isinstance(node, list):
        return [_quoted_rules(item) for item in node]
    if not isinstance(node, dict):
        return node
    quoted = {key: _quoted_rules(value) for key, value in node.items()}
    for rule in quoted.get("x-kubernetes-validations", []):
        for key in ("rule", "message"):
            rule[key] = _Quoted(rule[key])
    return quoted


def render() -> str:
    """crds/workerpool.yaml's text: the header, then the CRD."""
    body = yaml.dump(_quoted_rules(crd()), Dumper=_Dumper, sort_keys=False, width=WIDTH, allow_unicode=False)
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    """Write the CRD to each path given (none: to standard output)."""
    paths = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if not paths:
        sys.stdout.write(text)
    for path in paths:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
