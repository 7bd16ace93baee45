"""Decoding a request body as the API server does, before it stores anything (pure).

Built-in kinds are decoded into Go structs and encoded again, which

- refuses a value of the wrong type (400 ``... cannot be handled as a Deployment: json: cannot unmarshal string
  into Go struct field DeploymentSpec.spec.replicas of type int32``; a patch whose result does not decode is a
  422 instead, see :mod:`tests.apiserver.server`);
- drops unknown fields (the default ``fieldValidation=Warn``: a warning, not an error; ``Strict`` refuses them);
- writes every quantity in its canonical form (:mod:`tests.apiserver.quantity`);
- omits what Go's ``omitempty`` omits: nulls, empty lists, empty maps, and empty strings of optional fields (a
  struct stays, even empty: ``resources: {}``, ``emptyDir: {}``). Zero numbers and ``false`` stay: whether a
  field is a pointer (kept) or a value (omitted) is not in the OpenAPI; :data:`tests.apiserver.defaults.ZERO_IS_UNSET`
  lists the value fields we render.

Custom resources are stored as JSON: unknown fields and nulls are pruned (unless the schema preserves unknown
fields or says ``nullable``), nothing else; their types are checked against the CRD (tests/crd_rules.py).
"""

from __future__ import annotations

import json
from typing import Any

from tests.apiserver import quantity
from tests.apiserver.schema import Node

_DROP = object()


class DecodeError(ValueError):
    """The body does not decode into the kind's Go type: the message is Go's."""


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def decode_builtin(
    obj: dict[str, Any], root: Node, *, strict: bool = False, keep_empty: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """``obj`` as the API server stores it (see the module's docstring), and the warnings it answers with.

    ``keep_empty`` checks types and writes quantities canonically but keeps nulls and empty values: an apply's
    configuration, whose fields say what its manager owns."""
    warnings: list[str] = []
    decoded = _builtin(obj, root, (), root.go_type.rsplit(".", 1)[-1], _Options(strict, keep_empty, warnings))
    return (decoded if isinstance(decoded, dict) else {}), warnings


class _Options:
    def __init__(self, strict: bool, keep_empty: bool, warnings: list[str]) -> None:
        self.strict = strict
        self.keep_empty = keep_empty
        self.warnings = warnings


def _builtin(value: Any, node: Node, path: tuple[str, ...], parent: str, options: _Options) -> Any:
    where = ".".join(path)

    def refuse() -> DecodeError:
        go_type = "[]" + node.items.go_type if node.kind == "list" else node.go_type
        return DecodeError(
            f"json: cannot unmarshal {json_type(value)} into Go struct field {parent}.{where} of type {go_type}"
        )

    kind = node.kind
    if value is None:
        return None if options.keep_empty else _DROP
    if kind == "any":
        return value
    if kind == "quantity":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise refuse()
        try:
            return quantity.canonical(value)
        except quantity.QuantityError as exc:
            raise DecodeError(str(exc)) from None
    if kind == "int-or-string":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise refuse()
        return value
    if kind in ("string", "integer", "number", "boolean"):
        if not _scalar_fits(kind, value):
            raise refuse()
        return value
    if kind == "list":
        if not isinstance(value, list):
            raise refuse()
        items = node.items
        return [_builtin(item, items, path, parent, options) for item in value if item is not None]
    if not isinstance(value, dict):
        raise refuse()
    struct = node.go_type.rsplit(".", 1)[-1] if node.name else parent
    decoded: dict[str, Any] = {}
    for key, item in value.items():
        child = node.field(key)
        if child is None:
            message = f'unknown field "{".".join((*path, key))}"'
            if options.strict:
                raise DecodeError(f"strict decoding error: {message}")
            options.warnings.append(message)
            continue
        result = _builtin(item, child, (*path, key), struct, options)
        if result is _DROP:
            continue
        if not options.keep_empty and key not in node.required and _omitted_when_empty(result, child):
            continue
        decoded[key] = result
    return decoded


def _scalar_fits(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int)
    return isinstance(value, int | float)


def _omitted_when_empty(value: Any, node: Node) -> bool:
    """Go's ``omitempty`` for optional fields: empty strings, lists and maps (never structs)."""
    if value == "" and node.kind in ("string", "int-or-string"):
        return True
    return value in ([], {}) and node.kind in ("list", "map")


def prune_custom(obj: dict[str, Any], root: Node) -> tuple[dict[str, Any], list[str]]:
    """A custom resource as stored: unknown fields and (unless ``nullable``) nulls pruned; the warnings."""
    warnings: list[str] = []
    pruned = _pruned(obj, root, (), warnings)
    return (pruned if isinstance(pruned, dict) else {}), warnings


def _pruned(value: Any, node: Node, path: tuple[str, ...], warnings: list[str]) -> Any:
    if isinstance(value, dict) and node.kind in ("struct", "map"):
        kept: dict[str, Any] = {}
        for key, item in value.items():
            child = node.field(key)
            if child is None:
                warnings.append(f'unknown field "{".".join((*path, key))}"')
                continue
            if item is None and not child.nullable:
                continue
            kept[key] = _pruned(item, child, (*path, key), warnings)
        return kept
    if isinstance(value, list) and node.kind == "list":
        return [_pruned(item, node.items, path, warnings) for item in value]
    return value


def body_text(obj: Any) -> str:
    """A body in the compact JSON a patch error quotes."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)
