"""Field sets, the way structured-merge-diff (sigs.k8s.io/structured-merge-diff, the API server's Server-Side Apply)
sees an object. Pure.

A field is a path of elements written as ``managedFields`` writes them: ``f:<name>`` (a field of a struct or a key
of a map), ``k:{"name":"worker"}`` (an item of an associative list, by its keys), ``v:"x"`` (an item of a set),
``i:3`` (an item of a list without keys). Lists are associative (``x-kubernetes-list-type: map``), sets, or atomic
(replaced whole, the default); maps and structs are granular unless ``x-kubernetes-map-type: atomic``.

What is ported from structured-merge-diff (``typed/tofieldset.go``, ``compare.go``, ``merge.go``, ``remove.go``,
``fieldpath/serialize.go``):

- :func:`field_set`: every scalar, every item of a granular list, every atomic list or map, every empty or null
  value, and every key of a map that is not a struct's declared field;
- :func:`compare`: added, modified and removed fields between two versions (a map that appears or goes is itself
  added or removed; a list is not);
- :func:`merge`: an apply's configuration over the live object (associative lists merged by key, in
  structured-merge-diff's order);
- :func:`remove`: an object without some fields (each with what it holds);
- :func:`encode` / :func:`decode`: the ``fieldsV1`` form (``.`` marks a field that is itself in the set and has
  fields under it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tests.apiserver.schema import Node

Path = tuple[str, ...]
FieldSet = frozenset[Path]
EMPTY: FieldSet = frozenset()


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def item_element(item: Any, index: int, node: Node) -> str:
    """The path element of one item of the list ``node`` describes."""
    if node.list_type == "map" and isinstance(item, dict):
        keys = {}
        for key in node.map_keys:
            if key in item:
                keys[key] = item[key]
            else:
                default = (node.items.field(key) or node.definitions.any).raw.get("default")
                if default is not None:
                    keys[key] = default
        return "k:" + _compact(keys)
    if node.list_type == "set":
        return "v:" + _compact(item)
    return f"i:{index}"


# --- the fields of an object -------------------------------------------------------------------------------


def field_set(value: Any, node: Node) -> FieldSet:
    """Every field ``value`` sets (structured-merge-diff's ``ToFieldSet``)."""
    found: set[Path] = set()
    _fields(value, node, (), found)
    return frozenset(found)


def _fields(value: Any, node: Node, path: Path, found: set[Path]) -> None:
    if isinstance(value, dict) and node.kind in ("struct", "map", "any"):
        if node.atomic:
            found.add(path)
            return
        for key, item in value.items():
            child = node.field(key) or node.definitions.any
            child_path = (*path, f"f:{key}")
            _fields(item, child, child_path, found)
            if item is None or item == {} or not node.is_named_field(key):
                found.add(child_path)
    elif isinstance(value, list) and node.kind in ("list", "any"):
        if node.kind == "any" or node.atomic:
            found.add(path)
            return
        for index, item in enumerate(value):
            child_path = (*path, item_element(item, index, node))
            _fields(item, node.items, child_path, found)
            found.add(child_path)
    elif path:
        found.add(path)


# --- comparing two versions ----------------------------------------------------------------------------------


class Comparison:
    """What changed between two versions of an object."""

    def __init__(self) -> None:
        self.added: set[Path] = set()
        self.modified: set[Path] = set()
        self.removed: set[Path] = set()

    @property
    def changed(self) -> FieldSet:
        """Added or modified: what a writer takes from the others."""
        return frozenset(self.added | self.modified)


_ABSENT = object()


def compare(old: Any, new: Any, node: Node) -> Comparison:
    comparison = Comparison()
    _compare(old, new, node, (), comparison)
    return comparison


def _empty(value: Any) -> bool:
    return value is _ABSENT or value is None or value in ({}, [])


def _shape(value: Any) -> str:
    return "map" if isinstance(value, dict) else "list" if isinstance(value, list) else "scalar"


def _compare(old: Any, new: Any, node: Node, path: Path, out: Comparison) -> None:
    shapes = {_shape(v) for v in (old, new) if v is not _ABSENT and v is not None}
    shape = shapes.pop() if len(shapes) == 1 else "scalar"
    granular_list = node.kind == "list" and not node.atomic
    leaf = shape == "scalar" or (_empty(old) and _empty(new))
    if leaf or (shape == "map" and node.atomic) or (shape == "list" and not granular_list):
        _leaf(old, new, path, out)
    elif shape == "map":
        old_map = old if isinstance(old, dict) else {}
        new_map = new if isinstance(new, dict) else {}
        if path and not isinstance(old, dict):
            out.added.add(path)
        elif path and not isinstance(new, dict):
            out.removed.add(path)
        for key in old_map.keys() | new_map.keys():
            child = node.field(key) or node.definitions.any
            _compare(old_map.get(key, _ABSENT), new_map.get(key, _ABSENT), child, (*path, f"f:{key}"), out)
    else:
        old_items = _indexed(old if isinstance(old, list) else [], node)
        new_items = _indexed(new if isinstance(new, list) else [], node)
        for element in old_items.keys() | new_items.keys():
            before, after = old_items.get(element, _ABSENT), new_items.get(element, _ABSENT)
            _compare(before, after, node.items, (*path, element), out)


def _leaf(old: Any, new: Any, path: Path, out: Comparison) -> None:
    if old is _ABSENT and new is _ABSENT:
        return
    if old is _ABSENT:
        out.added.add(path)
    elif new is _ABSENT:
        out.removed.add(path)
    elif old != new or type(old) is not type(new):
        out.modified.add(path)


def _indexed(items: list[Any], node: Node) -> dict[str, Any]:
    return {item_element(item, index, node): item for index, item in enumerate(items)}


# --- removing fields -----------------------------------------------------------------------------------------


def prefixes(paths: Iterable[Path]) -> frozenset[Path]:
    """Every proper prefix of every path (where a walk must go on to find them)."""
    return frozenset(path[:end] for path in paths for end in range(len(path)))


def remove(value: Any, paths: FieldSet, node: Node) -> Any:
    """``value`` without the fields in ``paths`` (each with everything under it)."""
    if not paths:
        return value
    return _removed(value, node, (), paths, prefixes(paths))


def _removed(value: Any, node: Node, path: Path, paths: FieldSet, above: frozenset[Path]) -> Any:
    if path not in above:
        return value
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            child_path = (*path, f"f:{key}")
            if child_path in paths:
                continue
            kept[key] = _removed(item, node.field(key) or node.definitions.any, child_path, paths, above)
        return kept
    if isinstance(value, list):
        kept_items = []
        for index, item in enumerate(value):
            child_path = (*path, item_element(item, index, node))
            if child_path in paths:
                continue
            kept_items.append(_removed(item, node.items, child_path, paths, above))
        return kept_items
    return value


def ensure_named_fields(paths: FieldSet, node: Node) -> FieldSet:
    """``paths`` with every struct field on the way to them (structured-merge-diff's
    ``EnsureNamedFieldsAreMembers``): owning ``spec.replicas`` means owning ``spec`` too, not a map's key."""
    found = set(paths)
    for path in paths:
        current: Node | None = node
        for end, element in enumerate(path[:-1]):
            if current is None:
                break
            if element.startswith("f:"):
                name = element[2:]
                if current.is_named_field(name):
                    found.add(path[: end + 1])
                current = current.field(name)
            else:
                current = current.items if current.kind == "list" else None
    return frozenset(found)


# --- merging an apply ----------------------------------------------------------------------------------------


def merge(live: Any, config: Any, node: Node) -> Any:
    """``config`` applied over ``live`` (structured-merge-diff's ``Merge``): the configuration's values win; maps
    and associative lists merge; atomic lists and maps are replaced."""
    if isinstance(live, dict) and isinstance(config, dict) and not node.atomic:
        merged = dict(live)
        for key, item in config.items():
            child = node.field(key) or node.definitions.any
            merged[key] = merge(live[key], item, child) if key in live else item
        return {k: v for k, v in merged.items() if v is not None}
    if isinstance(live, list) and isinstance(config, list) and node.kind == "list" and not node.atomic:
        return _merge_items(live, config, node)
    return config


def _merge_items(live: list[Any], config: list[Any], node: Node) -> list[Any]:
    """Items of both, in structured-merge-diff's order (``visitListItems`` of merge.go): the live order, with the
    configuration's new items placed where its order puts them."""
    lhs = [item_element(item, index, node) for index, item in enumerate(live)]
    rhs = [item_element(item, index, node) for index, item in enumerate(config)]
    by_lhs = dict(zip(lhs, live, strict=True))
    by_rhs = dict(zip(rhs, config, strict=True))
    shared = [element for element in rhs if element in by_lhs]
    out: list[Any] = []
    done: set[str] = set()
    next_shared = shared.pop(0) if shared else None
    left = right = 0
    while left < len(lhs) or right < len(rhs):
        if left < len(lhs) and right < len(rhs):
            element = lhs[left]
            if element == rhs[right]:
                done.add(element)
                out.append(merge(by_lhs[element], by_rhs[element], node.items))
                left += 1
                right += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if element in by_rhs and next_shared is not None and next_shared != element:
                left += 1
                continue
        if left < len(lhs):
            element = lhs[left]
            if element not in by_rhs:
                out.append(by_lhs[element])
                left += 1
                continue
            if element in done:
                left += 1
                continue
        if right < len(rhs):
            element = rhs[right]
            done.add(element)
            out.append(merge(by_lhs[element], by_rhs[element], node.items) if element in by_lhs else by_rhs[element])
            right += 1
            if next_shared is not None and next_shared == element:
                next_shared = shared.pop(0) if shared else None
    return out


# --- fieldsV1 ------------------------------------------------------------------------------------------------

_ORDER = {"f": 0, "k": 1, "v": 2, "i": 3}


def encode(paths: FieldSet) -> dict[str, Any]:
    """The ``fieldsV1`` tree of a field set."""
    tree: dict[str, Any] = {}
    for path in paths:
        branch = tree
        for element in path:
            branch = branch.setdefault(element, {})
    return _sorted_tree(tree, (), paths)


def _sorted_tree(tree: dict[str, Any], path: Path, members: FieldSet) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if path in members and tree:
        out["."] = {}
    for element in sorted(tree, key=lambda e: (_ORDER.get(e[:1], 9), e)):
        out[element] = _sorted_tree(tree[element], (*path, element), members)
    return out


def decode(tree: dict[str, Any] | None, path: Path = ()) -> FieldSet:
    """The field set of a ``fieldsV1`` tree."""
    found: set[Path] = set()
    for element, child in (tree or {}).items():
        if element == ".":
            found.add(path)
            continue
        child_path = (*path, element)
        if not child:
            found.add(child_path)
        else:
            found |= decode(child, child_path)
    return frozenset(found)


def describe(path: Path) -> str:
    """A field as the API server names it in a conflict (``.spec.template.spec.containers[name="worker"].image``)."""
    text = ""
    for element in path:
        kind, rest = element[:1], element[2:]
        if kind == "f":
            text += f".{rest}"
        elif kind == "k":
            keys = json.loads(rest)
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif kind == "v":
            text += f"[={rest}]"
        else:
            text += f"[{rest}]"
    return text
