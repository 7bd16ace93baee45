"""``metadata.managedFields``: who owns which field, and Server-Side Apply. Pure (the caller passes ``now``).

The model is the API server's field manager (k8s.io/apiserver ``pkg/endpoints/handlers/fieldmanager`` over
structured-merge-diff's ``merge.Updater``):

- Every write is recorded under a manager: an apply (``PATCH`` with ``application/apply-patch+yaml``) as operation
  ``Apply`` under its ``fieldManager`` (required); any other write (create, update, merge or strategic patch,
  ``/scale``, ``/status``) as ``Update`` under its ``fieldManager`` or, without one, the User-Agent up to its first
  ``/`` (``kubectl/v1.36 ...`` is ``kubectl``). An entry is one (manager, operation, subresource).
- An ``Update`` takes every field it adds or changes, from whoever owned it (never a conflict), and every manager
  loses the fields it removes; its time moves only when it changed something.
- An ``Apply`` owns exactly the fields of its configuration. Its configuration is merged over the live object
  (:func:`tests.apiserver.fieldpath.merge`); a field it owned last time and leaves out now is removed from the
  object unless some other manager owns it too (structured-merge-diff's ``prune``); a field it would change that
  another manager owns is a conflict (409, naming each manager and field) unless ``force``, which moves the
  field to the applier. Setting a field to the value it has already takes no field from anyone: both own it.
- ``apiVersion``, ``kind``, ``metadata.name``, ``namespace``, ``uid``, ``resourceVersion``, ``generation``,
  ``creationTimestamp`` and ``managedFields`` are never owned (``stripMetaManager``); nor are the fields a
  subresource resets (``status`` through the main resource, all but ``status`` through ``/status``).
- Entries are written sorted as the server sorts them: operation (``Apply`` first), time, manager, subresource.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from tests.apiserver import fieldpath
from tests.apiserver.fieldpath import EMPTY, FieldSet, Path
from tests.apiserver.schema import Node

APPLY = "Apply"
UPDATE = "Update"
STRIPPED: FieldSet = frozenset(
    {("f:apiVersion",), ("f:kind",), ("f:metadata",)}
    | {
        ("f:metadata", f"f:{name}")
        for name in (
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        )
    }
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ``managedFields`` entry: a manager, how it wrote (``Apply``/``Update``), through which subresource."""

    manager: str
    operation: str
    api_version: str
    time: str
    fields: FieldSet
    subresource: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def named(self) -> str:
        """How a conflict names it (``"kubectl" using apps/v1``)."""
        text = f'"{self.manager}"'
        if self.subresource:
            text += f' with subresource "{self.subresource}"'
        if self.operation == UPDATE:
            text += f" using {self.api_version}"
        return text


class ApplyConflict(Exception):
    """An apply would change fields other managers own: the 409's message and its causes."""

    def __init__(self, conflicts: dict[Entry, FieldSet]) -> None:
        self.causes = [
            {
                "type": "FieldManagerConflict",
                "message": f"conflict with {entry.named()}",
                "field": fieldpath.describe(p),
            }
            for entry, paths in conflicts.items()
            for p in sorted(paths)
        ]
        count = len(self.causes)
        if count == 1:
            ((entry, paths),) = conflicts.items()
            message = f"Apply failed with 1 conflict: conflict with {entry.named()}: {fieldpath.describe(min(paths))}"
        else:
            lines = []
            for entry, paths in sorted(conflicts.items(), key=lambda item: item[0].named()):
                lines.append(f"conflicts with {entry.named()}:")
                lines += [f"- {fieldpath.describe(p)}" for p in sorted(paths)]
            message = f"Apply failed with {count} conflicts: " + "\n".join(lines)
        super().__init__(message)
        self.message = message


def read(managed_fields: Iterable[dict[str, Any]] | None) -> list[Entry]:
    entries = []
    for raw in managed_fields or ():
        entries.append(
            Entry(
                manager=str(raw.get("manager", "")),
                operation=str(raw.get("operation", UPDATE)),
                api_version=str(raw.get("apiVersion", "")),
                time=str(raw.get("time", "")),
                fields=fieldpath.decode(raw.get("fieldsV1")),
                subresource=str(raw.get("subresource", "")),
            )
        )
    return entries


def write(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    ordered = sorted(entries, key=lambda e: (e.operation, e.time, e.manager, e.api_version, e.subresource))
    written = []
    for entry in ordered:
        raw: dict[str, Any] = {"manager": entry.manager, "operation": entry.operation, "apiVersion": entry.api_version}
        if entry.time:
            raw["time"] = entry.time
        raw |= {"fieldsType": "FieldsV1", "fieldsV1": fieldpath.encode(entry.fields)}
        if entry.subresource:
            raw["subresource"] = entry.subresource
        written.append(raw)
    return written


def manager_name(field_manager: str | None, user_agent: str) -> str:
    """The manager of a non-apply write: its ``fieldManager``, else the User-Agent's product (up to ``/``)."""
    if field_manager:
        return field_manager
    return user_agent.split("/", 1)[0][:128]


def owned(paths: FieldSet, ignored: Callable[[Path], bool]) -> FieldSet:
    """The fields a manager may own: none of :data:`STRIPPED`, none the subresource resets."""
    return frozenset(p for p in paths if p not in STRIPPED and not ignored(p))


def _comparable(obj: Any) -> Any:
    """An object without what no manager owns and what must not be compared (``managedFields`` itself)."""
    if not isinstance(obj, dict):
        return obj
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def _without(entries: list[Entry], taken: FieldSet, skip: tuple[str, str, str]) -> list[Entry]:
    """Every other entry without the fields in ``taken``; entries left with nothing go."""
    kept = []
    for entry in entries:
        if entry.key == skip:
            kept.append(entry)
            continue
        remaining = entry.fields - taken
        if remaining:
            kept.append(dataclasses.replace(entry, fields=remaining))
    return kept


def update(
    entries: list[Entry],
    old: Any,
    new: Any,
    node: Node,
    *,
    manager: str,
    subresource: str,
    api_version: str,
    now: str,
    ignored: Callable[[Path], bool],
) -> list[Entry]:
    """The entries after a non-apply write from ``old`` to ``new`` (both as stored, defaults included)."""
    change = fieldpath.compare(_comparable(old), _comparable(new), node)
    taken = owned(change.changed, ignored)
    removed = owned(frozenset(change.removed), ignored)
    key = (manager, UPDATE, subresource)
    kept = _without(entries, taken | removed, skip=key)
    previous = next((e for e in kept if e.key == key), None)
    kept = [e for e in kept if e.key != key]
    fields = ((previous.fields if previous else EMPTY) - removed) | taken
    if not fields:
        return kept
    time = now if taken or previous is None else previous.time
    return [*kept, Entry(manager, UPDATE, api_version, time, fields, subresource)]


def apply(
    entries: list[Entry],
    live: Any,
    config: dict[str, Any],
    node: Node,
    *,
    manager: str,
    subresource: str,
    api_version: str,
    now: str,
    force: bool,
    ignored: Callable[[Path], bool],
    reset: Callable[[Any, Any], Any],
) -> tuple[Any, list[Entry]]:
    """The object and the entries after ``manager`` applies ``config`` to ``live`` (``{}`` when there was none).

    ``reset(live, merged)`` puts back what the subresource may not change (the API server's strategy). Raises
    :class:`ApplyConflict`."""
    key = (manager, APPLY, subresource)
    applied = owned(fieldpath.field_set(config, node), ignored)
    previous = next((e for e in entries if e.key == key), None)
    others = [e for e in entries if e.key != key]
    merged = reset(live, fieldpath.merge(_comparable(live), config, node))
    if previous is not None and previous.fields:
        merged = _prune(merged, previous.fields, applied, others, node)
    change = fieldpath.compare(_comparable(live), merged, node)
    taken = owned(change.changed, ignored)
    conflicts = {e: e.fields & taken for e in others if e.fields & taken}
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    removed = owned(frozenset(change.removed), ignored)
    kept = _without(others, taken | removed, skip=key)
    unchanged = _comparable(live) == merged
    time = previous.time if (previous is not None and unchanged) else now
    if not applied:
        return merged, kept
    return merged, [*kept, Entry(manager, APPLY, api_version, time, applied, subresource)]


def _prune(merged: Any, last: FieldSet, applied: FieldSet, others: list[Entry], node: Node) -> Any:
    """Remove what the applier owned last time and no longer applies, unless another manager owns it."""
    last_named = fieldpath.ensure_named_fields(last, node)
    still_owned: FieldSet = applied.union(*(e.fields for e in others))
    kept = fieldpath.ensure_named_fields(still_owned, node)
    present = fieldpath.ensure_named_fields(fieldpath.field_set(merged, node), node)
    released = frozenset(p for p in last_named & present if p not in kept)
    return fieldpath.remove(merged, released, node)
