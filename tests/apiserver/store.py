"""The objects an API server keeps and how a write goes through it: decode, default, reset what the subresource
may not change, validate, record the managers, store, tell the watchers. No HTTP here: the emulator
(tests/apiserver/server.py) turns requests into these calls, and a simulated controller (bench/api_server.py)
writes through :meth:`Store.write` as a controller's Update would.

Stored objects are never changed in place: every write builds a new version (which may share what did not change
with the one before), so the history a watch replays stays as it was answered.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from tests import crd_rules
from tests.apiserver import defaults, managed, validation
from tests.apiserver.decoding import DecodeError, body_text, decode_builtin, prune_custom
from tests.apiserver.kinds import KindInfo
from tests.apiserver.managed import ApplyConflict
from tests.apiserver.watch import Change, History, Hub

Obj = dict[str, Any]
Key = tuple[Any, str | None, str]  # (resource, namespace, name)


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Obj:
    """An error answer's body: a ``Status`` object, as the API server sends it."""
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    body |= {"reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


class Refusal(Exception):
    """A request the server answers with an error."""

    def __init__(self, code: int, body: Obj) -> None:
        super().__init__(body.get("message"))
        self.code = code
        self.body = body


def refuse(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Refusal:
    return Refusal(code, status(code, reason, message, details))


@dataclasses.dataclass(frozen=True)
class Writer:
    """Who writes and how: the manager of a non-apply write, ``fieldValidation=Strict``, ``dryRun=All``."""

    manager: str
    strict: bool = False
    dry_run: bool = False


def details(kind: KindInfo, name: str | None) -> dict[str, Any]:
    """A Status's ``details`` for one object."""
    return {"name": name, "group": kind.group, "kind": kind.plural}


def modified(kind: KindInfo, name: str | None) -> Refusal:
    """The 409 of a write made against a version that is no longer the object's."""
    message = (
        f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return refuse(409, "Conflict", message, details(kind, name))


def without_managed(obj: Obj) -> Obj:
    """``obj`` without its bookkeeping (a shallow copy: stored objects are never changed in place, a write always
    builds a new one, so versions may share what did not change)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("managedFields", "resourceVersion")}
    return {**obj, "metadata": meta}


class Store:
    """Every live object by key, one ``resourceVersion`` counter, each resource's recent changes and watchers."""

    def __init__(self, *, history_limit: int, managed_fields: bool = True, cel_rules: bool = True) -> None:
        self.objects: dict[Key, Obj] = {}
        self._scopes: dict[tuple[Any, str | None], dict[Key, None]] = defaultdict(dict)
        self.latest = 0
        self.hub = Hub()
        self._histories: dict[Any, History] = {}
        self._allocator = defaults.Allocator()
        self.history_limit = history_limit
        self.managed_fields = managed_fields  # False: no managedFields (small objects, and no apply memory)
        self.cel_rules = cel_rules  # False: custom resources' CEL rules are not evaluated

    def history(self, resource: Any) -> History:
        if resource not in self._histories:
            self._histories[resource] = History(limit=self.history_limit)
        return self._histories[resource]

    def objects_in(self, resource: Any, namespace: str | None) -> Iterator[Obj]:
        if namespace is None:
            yield from (obj for (res, _ns, _name), obj in self.objects.items() if res == resource)
        else:
            yield from (self.objects[key] for key in self._scopes.get((resource, namespace), {}))

    def write(
        self,
        writer: Writer,
        kind: KindInfo,
        key: Key,
        old: Obj | None,
        candidate: Obj,
        *,
        subresource: str | None,
        patch: bool,
        entries: list[managed.Entry] | None,
    ) -> Obj:
        """Decode, default, reset what the subresource may not change, validate, record the managers, store."""
        obj = self._decoded(kind, candidate, writer.strict, patch)
        obj = kind.reset(subresource if subresource != "scale" else None, old, obj)
        if kind.key == ("v1", "Service"):
            self._allocator.service(obj, old)
        meta = obj["metadata"] = dict(obj.get("metadata") or {})  # its own: a reset may have put old's there
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            if kind.has_generation:
                meta["generation"] = 1
            for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(field, None)
        else:
            wanted = meta.get("resourceVersion")
            if wanted not in (None, "") and str(wanted) != old["metadata"]["resourceVersion"]:
                raise modified(kind, key[2])
            if not patch and wanted in (None, "") and not kind.builtin:
                raise refuse(
                    422,
                    "Invalid",
                    validation.message(
                        kind.kind,
                        kind.group,
                        key[2],
                        [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")],
                    ),
                )
            before = old["metadata"]
            for field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                if field in before:
                    meta[field] = before[field]
                else:
                    meta.pop(field, None)
            if subresource != "status" and kind.has_generation and kind.bumps_generation(without_managed(old), obj):
                meta["generation"] = int(before.get("generation", 1)) + 1
        meta["name"] = key[2]
        self._validate(kind, obj, old)
        if not self.managed_fields:
            entries = []
        elif entries is None:
            # managedFields sent with a write (a client resetting or handing over ownership, as kubectl's
            # client-side-apply upgrade does) are the basis; otherwise the stored ones (fieldmanager.go).
            sent = (candidate.get("metadata") or {}).get("managedFields")  # as sent: decoding prunes fieldsV1
            entries = managed.update(
                managed.read(sent or (old or {}).get("metadata", {}).get("managedFields")),
                without_managed(old) if old is not None else kind.zero(),
                obj,
                kind.root,
                manager=writer.manager,
                subresource=subresource or "",
                api_version=kind.api_version,
                now=now(),
                ignored=kind.ignored(subresource),
            )
        meta.pop("managedFields", None)
        meta.pop("resourceVersion", None)
        if entries:
            meta["managedFields"] = managed.write(entries)
        if writer.dry_run:
            return obj
        if old is not None and obj == {
            **old,
            "metadata": {k: v for k, v in old["metadata"].items() if k != "resourceVersion"},
        }:
            return old  # nothing changed: no new version, no event
        return self._store_object(key, obj, old)

    def apply(
        self,
        writer: Writer,
        kind: KindInfo,
        key: Key,
        old: Obj | None,
        config: Obj,
        *,
        subresource: str | None,
        force: bool,
    ) -> tuple[Obj, bool]:
        """The object after ``writer.manager`` applies ``config`` (Server-Side Apply: tests/apiserver/managed.py),
        and whether that created it."""
        if kind.builtin:
            try:
                config, _ = decode_builtin(config, kind.root, keep_empty=True)
            except DecodeError as exc:
                raise refuse(422, "Invalid", f".{exc}") from None
        live = old or {}
        try:
            merged, entries = managed.apply(
                managed.read((live.get("metadata") or {}).get("managedFields")),
                without_managed(live),
                config,
                kind.root,
                manager=writer.manager,
                subresource=subresource or "",
                api_version=kind.api_version,
                now=now(),
                force=force,
                ignored=kind.ignored(subresource),
                reset=lambda _live, merged: kind.reset(subresource if subresource != "scale" else None, old, merged),
            )
        except ApplyConflict as conflict:
            refused = {**details(kind, key[2]), "causes": conflict.causes}
            raise refuse(409, "Conflict", conflict.message, refused) from None
        if old is None:
            if kind.namespaced:
                merged["metadata"] = {**merged.get("metadata", {}), "namespace": key[1]}
            return self.write(writer, kind, key, None, merged, subresource=None, patch=True, entries=entries), True
        stored = self.write(writer, kind, key, old, merged, subresource=subresource, patch=True, entries=entries)
        return stored, False

    def _decoded(self, kind: KindInfo, candidate: Obj, strict: bool, patch: bool) -> Obj:
        """The body decoded and defaulted (unknown fields are dropped: the warnings are not sent)."""
        if not kind.builtin:
            obj, _warnings = prune_custom(candidate, kind.root)
            assert kind.custom_schema is not None
            defaulted: Obj = crd_rules.apply_defaults(obj, kind.custom_schema)
            return defaulted
        try:
            obj, _warnings = decode_builtin(candidate, kind.root, strict=strict)
        except DecodeError as exc:
            if patch:
                message = f'"" is invalid: patch: Invalid value: "{body_text(candidate)}": {exc}'
                raise refuse(422, "Invalid", message) from None
            version = kind.api_version.rsplit("/", 1)[-1]
            message = f'{kind.kind} in version "{version}" cannot be handled as a {kind.kind}: {exc}'
            raise refuse(400, "BadRequest", message) from None
        defaulter = defaults.DEFAULTERS.get(kind.key)
        if defaulter is not None:
            defaulter(obj)
        return obj

    def _validate(self, kind: KindInfo, obj: Obj, old: Obj | None) -> None:
        if kind.builtin:
            found = validation.errors(kind.api_version, kind.kind, obj, old)
        else:
            assert kind.custom_schema is not None
            found = validation.custom(kind.custom_schema, obj, old, cel=self.cel_rules)
        if found:
            name = str((obj.get("metadata") or {}).get("name", ""))
            causes = [{"reason": "FieldValueInvalid", "message": detail, "field": path} for path, detail in found]
            details = {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes}
            raise refuse(422, "Invalid", validation.message(kind.kind, kind.group, name, found), details)

    def _next_version(self) -> int:
        self.latest += 1
        return self.latest

    def _store_object(self, key: Key, obj: Obj, old: Obj | None) -> Obj:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            assert old is not None
            self._remove(key, old)
            return old
        version = self._next_version()
        meta["resourceVersion"] = str(version)
        self.objects[key] = obj
        self._scopes[(key[0], key[1])][key] = None
        change = Change(version, "ADDED" if old is None else "MODIFIED", obj, old)
        self._publish(key[0], change)
        return obj

    def _publish(self, resource: Any, change: Change) -> None:
        self.history(resource).add(change)
        self.hub.publish(resource, change)

    def _remove(self, key: Key, obj: Obj) -> Obj:
        del self.objects[key]
        self._scopes[(key[0], key[1])].pop(key, None)
        gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._next_version())}}
        self._publish(key[0], Change(self.latest, "DELETED", gone, obj))
        self._collect_garbage()
        return gone

    def delete(self, key: Key, obj: Obj) -> Obj:
        """A deletion: held by finalizers (the object marked), else the object gone and its dependents after it."""
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return obj
        if meta.get("finalizers"):
            marked = {**obj, "metadata": {**meta, "deletionTimestamp": now(), "deletionGracePeriodSeconds": 0}}
            version = self._next_version()
            marked["metadata"]["resourceVersion"] = str(version)
            self.objects[key] = marked
            self._publish(key[0], Change(version, "MODIFIED", marked, obj))
            return marked
        return self._remove(key, obj)

    def _collect_garbage(self) -> None:
        """Delete every object whose owners are all gone, as the garbage collector does (at once)."""
        live_uids = {obj["metadata"].get("uid") for obj in self.objects.values()}
        for key, obj in list(self.objects.items()):
            owners = obj["metadata"].get("ownerReferences")
            if key in self.objects and owners and all(ref.get("uid") not in live_uids for ref in owners):
                self.delete(key, obj)
