"""The patch formats the API server takes besides apply (which is :mod:`tests.apiserver.managed`'s). Pure.

- ``application/merge-patch+json``: RFC 7386 (maps merge, ``null`` removes a key, lists are replaced);
- ``application/strategic-merge-patch+json`` (built-in kinds only; a custom resource answers 415): lists whose
  schema says ``x-kubernetes-patch-strategy: merge`` are merged item by item on ``x-kubernetes-patch-merge-key``
  (or as a set of values when there is no key), ``{"$patch": "delete"}`` removes an item, ``"$patch": "replace"``
  replaces; ``$setElementOrder`` and ``$retainKeys`` directives are accepted and not modelled;
- ``application/json-patch+json``: RFC 6902, by the jsonpatch library (kopf's own dependency).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from tests.apiserver.schema import Node

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


class PatchError(ValueError):
    """A patch the server cannot apply (its message)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    try:
        return jsonpatch.apply_patch(target, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
        raise PatchError(str(exc)) from None


def strategic_merge_patch(target: Any, patch: Any, node: Node) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        child = node.field(key) or node.definitions.any
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and child.kind == "list" and child.patch_merge_key is not None:
            result[key] = _merge_list(result.get(key) or [], value, child)
        else:
            merged = strategic_merge_patch(result.get(key), value, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_list(target: list[Any], patch: list[Any], node: Node) -> list[Any]:
    key = node.patch_merge_key
    if not key:  # a set of values
        merged = list(target)
        for item in patch:
            if isinstance(item, dict) and item.get("$patch") == "delete":
                continue
            if item not in merged:
                merged.append(item)
        return merged
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [item for item in patch if not (isinstance(item, dict) and "$patch" in item)]
    merged = [copy.deepcopy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        position = next(
            (i for i, old in enumerate(merged) if isinstance(old, dict) and old.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del merged[position]
            continue
        if position is None:
            merged.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            merged[position] = strategic_merge_patch(merged[position], item, node.items)
    return merged
