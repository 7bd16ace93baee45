"""Validate custom resources against a CRD the way the API server does, without an API server.

In the API server's order: prune nothing but report unknown fields (kubectl's default strict field
validation), apply the schema's defaults, check the structural schema (jsonschema), list-map and set keys,
then evaluate every ``x-kubernetes-validations`` CEL rule at its own node with ``self`` bound to that
node's value (cel-python). Errors read like the API server's: ``<field path>: <what is wrong>``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

REPO = Path(__file__).resolve().parent.parent
CRD_PATH = REPO / "crds" / "workerpool.yaml"

Schema = dict[str, Any]


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    return crd


@cache
def _project_schema() -> Schema:
    return openapi_schema(load_crd())


def openapi_schema(crd: dict[str, Any], version: str = "v1alpha1") -> Schema:
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema: Schema = served["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"the CRD has no version {version}")


# --- walking a schema and an object together --------------------------------------------------------------


def child_schemas(schema: Schema, value: Any) -> Iterator[tuple[str, Any, Schema]]:
    """(path suffix, child value, child schema) for each child of ``value`` the schema describes."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            if key in properties:
                yield f".{key}", child, properties[key]
            elif isinstance(extra, dict):
                yield f".{key}", child, extra
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, child in enumerate(value):
            yield f"[{index}]", child, schema["items"]


def apply_defaults(value: Any, schema: Schema) -> Any:
    """The schema's defaults filled in (a copy), parents before children, like the API server."""
    value = copy.deepcopy(value)
    _default_in_place(value, schema)
    return value


def _default_in_place(value: Any, schema: Schema) -> None:
    if isinstance(value, dict):
        for key, prop in schema.get("properties", {}).items():
            if (key not in value or value[key] is None) and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
    for _suffix, child, child_schema in child_schemas(schema, value):
        _default_in_place(child, child_schema)


def walk_schema(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every node of a schema with its path (``.spec.queues[*].name``)."""
    yield path, schema
    for key, prop in schema.get("properties", {}).items():
        yield from walk_schema(prop, f"{path}.{key}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk_schema(schema["additionalProperties"], f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        yield from walk_schema(schema["items"], f"{path}[*]")


# --- the checks --------------------------------------------------------------------------------------------


def unknown_fields(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Fields the schema does not declare (kubectl's strict field validation refuses them)."""
    errors: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        known = schema.get("properties", {})
        if isinstance(value, dict):
            for key in value.keys() & known.keys():
                errors += unknown_fields(value[key], known[key], f"{path}.{key}")
        return errors
    if isinstance(value, dict) and "properties" in schema and "additionalProperties" not in schema:
        for key in value:
            if key not in schema["properties"] and not (path == "" and key == "metadata"):
                errors.append(f'unknown field "{(path + "." + key).lstrip(".")}"')
    if path == ".metadata":
        return errors
    for suffix, child, child_schema in child_schemas(schema, value):
        errors += unknown_fields(child, child_schema, path + suffix)
    return errors


def _field_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".")


def _go_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value) if not isinstance(value, bool) else str(value)


def _describe_schema_error(error: jsonschema.ValidationError) -> str:
    """A jsonschema error worded like the API server's."""
    path = _field_path(error.absolute_path)
    value = error.instance
    kind = error.validator
    if kind == "required":
        missing = [name for name in error.validator_value if name not in value]
        return f"{_field_path([*error.absolute_path, missing[0]])}: Required value"
    if kind == "enum":
        supported = ", ".join(json.dumps(v) for v in error.validator_value)
        return f"{path}: Unsupported value: {json.dumps(value)}: supported values: {supported}"
    if kind == "maxItems":
        return f"{path}: Too many: {len(value)}: must have at most {error.validator_value} items"
    if kind == "maxLength":
        return f"{path}: Too long: may not be more than {error.validator_value} bytes"
    if kind == "maxProperties":
        return f"{path}: Too many: {len(value)}: must have at most {error.validator_value} items"
    if kind == "type":
        return f"{path}: Invalid value: {_go_value(value)}: {path} in body must be of type {error.validator_value}"
    if kind == "anyOf":
        return f"{path}: Invalid value: {_go_value(value)}: must be an integer or a string"
    wording = {
        "minimum": "should be greater than or equal to {}",
        "maximum": "should be less than or equal to {}",
        "minLength": "should be at least {} chars long",
        "minItems": "should have at least {} items",
        "pattern": "should match '{}'",
    }.get(str(kind))
    if wording is None:
        return f"{path}: {error.message}"
    return f"{path}: Invalid value: {_go_value(value)}: {path} in body {wording.format(error.validator_value)}"


def schema_errors(value: Any, schema: Schema) -> list[str]:
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    return [_describe_schema_error(error) for error in errors]


def duplicate_keys(value: Any, schema: Schema, path: str = "") -> list[str]:
    """``x-kubernetes-list-type: map`` and ``set``: the API server refuses duplicate keys."""
    errors: list[str] = []
    list_type = schema.get("x-kubernetes-list-type")
    if isinstance(value, list) and list_type in ("map", "set"):
        seen: set[str] = set()
        for index, item in enumerate(value):
            if list_type == "map" and isinstance(item, dict):
                key = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys", [])}
            else:
                key = item
            marker = json.dumps(key, sort_keys=True)
            if marker in seen:
                errors.append(f"{path.lstrip('.')}[{index}]: Duplicate value: {marker}")
            seen.add(marker)
    for suffix, child, child_schema in child_schemas(schema, value):
        errors += duplicate_keys(child, child_schema, path + suffix)
    return errors


@cache
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


@dataclass(frozen=True)
class Rule:
    rule: str
    message: str | None
    message_expression: str | None
    field_path: str | None


@cache
def _program(expression: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(expression))


def compile_rule(expression: str) -> celpy.Runner:
    """Compile a CEL expression (raises celpy.CELParseError for a rule the API server would refuse)."""
    return _program(expression)


def rules_at(schema: Schema) -> list[Rule]:
    return [
        Rule(r["rule"], r.get("message"), r.get("messageExpression"), r.get("fieldPath"))
        for r in schema.get("x-kubernetes-validations", [])
    ]


def cel_errors(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Evaluate every rule at its node, ``self`` bound to that node's value (after defaulting)."""
    errors: list[str] = []
    rules = rules_at(schema)
    if rules:
        activation = {"self": json_to_cel(value)}
        for rule in rules:
            where = (path + (rule.field_path or "")).lstrip(".")
            try:
                passed = _program(rule.rule).evaluate(activation)
            except CELEvalError as exc:
                errors.append(f"{where}: Invalid value: rule {rule.rule!r} could not be evaluated: {exc}")
                continue
            if not passed:
                message = rule.message or f"failed rule: {rule.rule}"
                if rule.message_expression:
                    message = str(_program(rule.message_expression).evaluate(activation))
                kind = "object" if isinstance(value, dict) else type(value).__name__
                errors.append(f"{where}: Invalid value: {json.dumps(kind)}: {message}")
    for suffix, child, child_schema in child_schemas(schema, value):
        errors += cel_errors(child, child_schema, path + suffix)
    return errors


def validate(obj: dict[str, Any], crd: dict[str, Any] | None = None) -> list[str]:
    """Every error the API server would answer a create with; empty when it would accept the object."""
    schema = openapi_schema(crd) if crd is not None else _project_schema()
    errors = unknown_fields(obj, schema)
    defaulted = apply_defaults(obj, schema)
    errors += schema_errors(defaulted, schema) + duplicate_keys(defaulted, schema)
    if errors:
        return errors  # rules run on well-typed objects only; the structural errors say it all
    return cel_errors(defaulted, schema)
