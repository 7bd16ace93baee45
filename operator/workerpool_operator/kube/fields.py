"""Who owns which field of an object: Server-Side Apply's ``managedFields``, read (pure).

The operator applies every object it renders with one field manager, :data:`FIELD_MANAGER` (operation
``Apply``), and a queue Deployment's replica count with another, :data:`SCALER_MANAGER`, so the rendered
manifest never holds ``spec.replicas`` and an apply never takes the count back from the scaler.

Drift is read off the object, not compared value by value: after our apply, our entry owns every field the
manifest sets. A field someone else changed moved to their entry (an ``Update`` takes the fields it changes from
every other manager), a field someone removed left every entry. So :func:`missing` (the manifest's fields our
entry no longer holds) is the hand edit, and :func:`owners` says whose it is now. Values the API server
normalises or defaults (``cpu: 2`` stored as ``"2"``, ``memory: 1.5Gi`` as ``1536Mi``, defaulted ports'
``protocol``) move no ownership, so they are never taken for an edit: this replaced a value comparison that was.

``fieldsV1`` spells a field ``f:<name>``, an item of an associative list ``k:<its keys as JSON>``, an item of a
set ``v:<its value as JSON>``, and ``.`` the item or map itself; an atomic list is a leaf. Items are matched by the
keys the server chose, loosely: a key field our manifest leaves out (one the server defaults, such as a port's
``protocol``) does not make an item missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

FIELD_MANAGER = "workerpool-operator"  # every rendered manifest, operation Apply
SCALER_MANAGER = "workerpool-operator-scaler"  # spec.replicas, operation Apply on the scale subresource
APPLY = "Apply"
UPDATE = "Update"

Tree = Mapping[str, Any]  # a fieldsV1 tree
Step = str | Mapping[str, Any]  # a field name, or a list item (the manifest's)
Path = tuple[Step, ...]


def entry(obj: Mapping[str, Any], manager: str, operation: str = APPLY, subresource: str = "") -> Tree | None:
    """The ``fieldsV1`` tree of ``manager``'s entry for ``operation`` on the object itself (or ``subresource``)."""
    for item in managed_fields(obj):
        if (
            item.get("manager") == manager
            and item.get("operation") == operation
            and (item.get("subresource") or "") == subresource
        ):
            fields = item.get("fieldsV1")
            return fields if isinstance(fields, Mapping) else {}
    return None


def managed_fields(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = (obj.get("metadata") or {}).get("managedFields") or []
    return [item for item in found if isinstance(item, Mapping)]


def missing(manifest: Mapping[str, Any], owned: Tree | None) -> list[Path]:
    """The paths of ``manifest``'s fields that ``owned`` (a fieldsV1 tree) does not hold; everything when ``owned``
    is ``None``. ``apiVersion``, ``kind`` and ``metadata.name``/``namespace`` identify the object: not fields."""
    if owned is None:
        return [()]
    body = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind")}
    meta = {key: value for key, value in (manifest.get("metadata") or {}).items() if key not in ("name", "namespace")}
    if meta:
        body["metadata"] = meta
    else:
        body.pop("metadata", None)
    return list(_missing(body, owned, ()))


def _missing(value: Any, tree: Tree, path: Path) -> Iterator[Path]:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            node = tree.get(f"f:{key}")
            if node is None:
                yield (*path, key)
            elif isinstance(node, Mapping) and node:
                yield from _missing(sub, node, (*path, key))
    elif isinstance(value, list) and tree:
        for item in value:
            found = _item(tree, item)
            if found is None:
                yield (*path, item if isinstance(item, Mapping) else {"value": item})
            elif isinstance(item, Mapping) and found:  # an empty entry: an atomic item (an ownerReference), a leaf
                yield from _missing(item, found, (*path, item))
    # a scalar, an empty map or an atomic list whose key is there: held


def _item(tree: Tree, item: Any) -> Tree | None:
    """The subtree of the list ``tree`` that holds ``item``: its ``k:`` entry (matched on the keys ``item``
    sets), or its ``v:`` entry."""
    if not isinstance(item, Mapping):
        node = tree.get(f"v:{json.dumps(item, separators=(',', ':'))}")
        return node if isinstance(node, Mapping) else None
    for key, node in tree.items():
        if not key.startswith("k:") or not isinstance(node, Mapping):
            continue
        try:
            keys = json.loads(key[2:])
        except ValueError:
            continue
        shared = [name for name in keys if name in item]
        if shared and all(_same(item[name], keys[name]) for name in shared):
            return node
    return None


def _same(ours: Any, theirs: Any) -> bool:
    return bool(ours == theirs) or str(ours) == str(theirs)


def holds(tree: Tree | None, path: Path) -> bool:
    """Whether a fieldsV1 tree holds ``path`` (or a leaf above it: an atomic list, a field set as a whole)."""
    node: Any = tree
    for step in path:
        if not isinstance(node, Mapping):
            return False
        if not node:
            return True  # a leaf above the path: the whole value is owned
        if isinstance(step, Mapping):
            node = _item(node, step.get("value") if set(step) == {"value"} else step)
        else:
            node = node.get(f"f:{step}")
        if node is None:
            return False
    return node is not None


def owners(obj: Mapping[str, Any], path: Path, *, besides: Sequence[str] = (FIELD_MANAGER,)) -> list[str]:
    """The managers (other than ``besides``) whose entries hold ``path`` now, each once."""
    found: list[str] = []
    for item in managed_fields(obj):
        manager = str(item.get("manager") or "?")
        fields = item.get("fieldsV1")
        if manager in besides or manager in found or not isinstance(fields, Mapping):
            continue
        if holds(fields, path):
            found.append(manager)
    return found


def describe(path: Path) -> str:
    """A path as a person reads it: ``spec.template.spec.containers[worker].image``."""
    text = ""
    for step in path:
        if isinstance(step, Mapping):
            label = step.get("name", step.get("mountPath", step.get("containerPort", step.get("value"))))
            text += f"[{label}]"
        else:
            text += f".{step}" if text else str(step)
    return text or "the whole object"


def legacy_entries(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The entries an operator before 0.3 left: merge patches of the object itself under our name (operation
    ``Update``). They co-own every field those versions rendered, so a field the spec later drops would stay; the
    first apply takes them over and removes them (``reconcile.py``)."""
    return [
        item
        for item in managed_fields(obj)
        if item.get("manager") == FIELD_MANAGER and item.get("operation") == UPDATE and not item.get("subresource")
    ]
