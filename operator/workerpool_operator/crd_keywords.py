"""What the WorkerPool CRD says beyond pydantic's JSON schema, declared beside the model's fields. Pure.

The model (spec.py) is the one source of the CRD's spec schema: crd.py generates crds/workerpool.yaml from
pydantic's JSON schema of it. Types, bounds, enums, defaults and descriptions (the fields' docstrings) come
from pydantic as they are; what a Kubernetes structural schema needs on top is declared with these helpers,
on the field or model it concerns, so that a rule and the validator that enforces it in Python sit together:

- ``rules(Rule(...), ...)``: CEL ``x-kubernetes-validations`` (a field's ``json_schema_extra``, or a model's
  ``model_config`` for rules across its fields). The message is the model's own constant, so the API server
  and ``SpecError`` say the same thing.
- ``list_map(key)``: a list of named objects the API server keeps unique by ``key``; ``ATOMIC`` for a list
  replaced as a whole.
- ``raw_object(...)``: a Kubernetes sub-object kept as a plain dict (a volume, an env var): the fields the
  API server must see, and ``x-kubernetes-preserve-unknown-fields`` for the rest.
- ``UnderKey(key)``: a value YAML nests under one key (``urlFrom: {secretKeyRef: {...}}``) while Python holds it
  bare.

Keep CEL rules to standard CEL (no ``quantity``, ``url``, ``ip``): tests/test_crd.py evaluates them with
cel-python and tests/test_crd_cost.py holds them to the API server's cost budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

__all__ = ["ATOMIC", "Rule", "UnderKey", "list_map", "matches", "raw_object", "rules"]

ATOMIC: dict[str, Any] = {"x-kubernetes-list-type": "atomic"}


@dataclass(frozen=True)
class Rule:
    """One CEL rule: ``rule`` must hold for ``self`` (the node it is declared on), else ``message``.

    ``field_path`` (``.minReplicas``) points the API server's error at a field below the node.
    """

    rule: str
    message: str
    field_path: str | None = None

    def to_json(self) -> dict[str, str]:
        rule = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            rule["fieldPath"] = self.field_path
        return rule


def rules(*declared: Rule) -> dict[str, Any]:
    """The ``x-kubernetes-validations`` keyword, for ``Field(json_schema_extra=...)`` or a model's config."""
    return {"x-kubernetes-validations": [rule.to_json() for rule in declared]}


def matches(pattern: str, subject: str = "self") -> str:
    """A CEL ``matches`` call on the model's own pattern constant (a CEL single-quoted string)."""
    if "'" in pattern or "\\" in pattern:
        raise ValueError(f"write this pattern as a schema `pattern` instead of a CEL string: {pattern!r}")
    return f"{subject}.matches('{pattern}')"


def list_map(*keys: str) -> dict[str, Any]:
    """A list the API server treats as a map: one item per key, merged by key."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def raw_object(required: Mapping[str, int] | None = None, *, preserve_unknown: bool = True) -> dict[str, Any]:
    """The schema of a Kubernetes sub-object the model keeps as a plain dict.

    ``required`` names the string fields the API server must find, with their longest length; with
    ``preserve_unknown`` every other field is kept as given (the pod spec's own validation judges it).
    """
    schema: dict[str, Any] = {"type": "object"}
    if required:
        schema["required"] = list(required)
    if preserve_unknown:
        schema["x-kubernetes-preserve-unknown-fields"] = True
    if required:
        schema["properties"] = {
            name: {"type": "string", "minLength": 1, "maxLength": length} for name, length in required.items()
        }
    return schema


@dataclass(frozen=True)
class UnderKey:
    """``Annotated`` metadata: the CRD nests the value under ``key``, as in ``urlFrom: {secretKeyRef: ...}``.

    The model unwraps and wraps the key itself (a validator and a serializer beside this marker).
    """

    key: str

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "object", "required": [self.key], "properties": {self.key: handler(schema)}}
