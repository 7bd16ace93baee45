"""The API server emulator: kmock's HTTP side (request parsing, the request log, reactions) over a store of our own
that answers as a Kubernetes 1.36 API server does (see tests/apiserver/__init__.py for what that covers).

kmock's own emulator stores every write before it looks for a reaction, so a write a test refuses (a reaction
answering 403 or 503) still changes the object and reaches every watcher. Here nothing is stored by kmock: a
reaction, when one matches, answers instead of the server, and only kmock's fallback, reached when no reaction
matches, runs the server (:meth:`ApiServerEmulator._serve_create` and its siblings), so a refused write changes
nothing and sends no event. Every answer's status is kept by request (:meth:`ApiServerEmulator.answer`).

This is the one module that uses kmock beyond its public API: the request hook ``_handle``, kmock's
``RawHandler._handle`` (its reactions), the fallback registrations and the request log ``_requests``. Checked
with kmock 0.8.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import secrets
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import apps

from tests import crd_rules
from tests.apiserver import defaults, managed, patches, validation, watch
from tests.apiserver.decoding import DecodeError, body_text, decode_builtin, json_type, prune_custom
from tests.apiserver.kinds import KindInfo, info
from tests.apiserver.managed import ApplyConflict
from tests.apiserver.watch import Change, Filter, History, Hub, SelectorError, WatchRequest

Obj = dict[str, Any]
Key = tuple[Any, str | None, str]
FIELD_MANAGER_LIMIT = 128


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

    @classmethod
    def of(cls, request: kmock.Request) -> Writer:
        params = request.params
        manager = managed.manager_name(params.get("fieldManager"), str(request.headers.get("User-Agent", "")))
        return cls(manager, params.get("fieldValidation") == "Strict", params.get("dryRun") == "All")


class Answer(Exception):
    """The server's answer, raised through kmock's reaction machinery to :meth:`ApiServerEmulator._handle`.

    (A callable reaction returning a ``kmock.Response`` would set that status on the reaction itself, for every
    later request it answers.)"""

    def __init__(self, code: int, body: Any) -> None:
        super().__init__(code)
        self.code = code
        self.body = body


def answered(produce: Callable[[], Any]) -> Answer:
    """What ``produce()`` answers: its object (200), ``(code, object)``, or the error it raises."""
    try:
        result = produce()
    except Refusal as refusal:
        return Answer(refusal.code, refusal.body)
    if isinstance(result, tuple):
        return Answer(*result)
    return Answer(200, result)


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """A Kubernetes API server for tests (see the module's docstring)."""

    custom_resources: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # "group/version/plural": its schema
    history_limit: int = watch.DEFAULT_HISTORY
    bookmark_interval: float = 60.0  # the real server's bookmark frequency is about a minute
    managed_fields: bool = True  # False: no managedFields (the scale benchmark's small objects; no apply memory)
    cel_rules: bool = True  # False: custom resources' CEL rules are not evaluated (13 ms a pool: the scale benchmark)
    _store: dict[Key, Obj] = attrs.field(factory=dict, init=False)
    _scopes: dict[tuple[Any, str | None], dict[Key, None]] = attrs.field(factory=lambda: defaultdict(dict), init=False)
    _latest: int = attrs.field(default=0, init=False)
    _histories: dict[Any, History] = attrs.field(factory=dict, init=False)
    _hub: Hub = attrs.field(factory=Hub, init=False)
    _answers: dict[int, int] = attrs.field(factory=dict, init=False)
    _kinds: dict[Any, KindInfo] = attrs.field(factory=dict, init=False)
    _allocator: defaults.Allocator = attrs.field(factory=defaults.Allocator, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_put

    # --- kmock internals ---------------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> Any:
        """Reactions first, then the server (kmock's fallback); nothing is stored before. Keeps the answer."""
        try:
            response = await apps.RawHandler._handle(self, request)
        except Answer as answer:
            response = aiohttp.web.json_response(answer.body, status=answer.code)
        except kmock.KubernetesError as exc:
            self._answers[request.id] = exc.status
            raise
        except Exception:
            self._answers[request.id] = 500
            raise
        self._answers[request.id] = int(response.status)
        return response

    def requests(self) -> list[kmock.Request]:
        return list(self._requests)

    def forget_requests(self, count: int) -> None:
        """Drop the oldest ``count`` requests of the log (kmock matches each request against the whole log)."""
        for request in self._requests[:count]:
            self._answers.pop(request.id, None)
        del self._requests[:count]

    def answer(self, request: kmock.Request) -> int | None:
        """The HTTP status the request was answered with (``None`` while it is being answered)."""
        return self._answers.get(request.id)

    # --- reading -------------------------------------------------------------------------------------------------

    def live(self, resource: str, namespace: str | None = None) -> dict[str, Obj]:
        """Live objects of one resource (``"apps/v1/deployments"``), by name, as stored (copies)."""
        found = {}
        for (res, ns, name), obj in list(self._store.items()):
            if f"{res.group}/{res.version}/{res.plural}".lstrip("/") == resource and namespace in (None, ns):
                found[name] = copy.deepcopy(obj)
        return found

    @property
    def latest_version(self) -> int:
        return self._latest

    def controller_write(
        self,
        resource: Any,
        namespace: str | None,
        name: str,
        change: Callable[[Obj], Obj],
        *,
        manager: str,
        subresource: str | None = None,
    ) -> Obj | None:
        """A write by one of the cluster's controllers (not over HTTP), through the same checks and bookkeeping:
        ``change`` gets the live object and returns what to write (a new object: the live one is shared with the
        store and its history). ``None`` when the object is gone."""
        key = (resource, namespace, name)
        old = self._store.get(key)
        if old is None:
            return None
        candidate = change(_without_managed(old))
        kind = self.kind_of(resource)
        return self._write(
            Writer(manager), kind, key, old, candidate, subresource=subresource, patch=True, entries=None
        )

    def kind_of(self, resource: Any) -> KindInfo:
        if resource not in self._kinds:
            try:
                declared = self.resources[resource]
            except KeyError:
                raise refuse(404, "NotFound", "the server could not find the requested resource") from None
            api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
            custom = self.custom_resources.get(f"{resource.group}/{resource.version}/{resource.plural}")
            kind = declared.kind or resource.plural.capitalize()
            self._kinds[resource] = info(
                api_version, kind, resource.plural, bool(declared.namespaced), set(declared.subresources), custom
            )
        return self._kinds[resource]

    def _history(self, resource: Any) -> History:
        if resource not in self._histories:
            self._histories[resource] = History(limit=self.history_limit)
        return self._histories[resource]

    def _key(self, request: kmock.Request, name: str | None = None) -> Key:
        return (request.resource, request.namespace, str(name or request.name))

    def _objects_in(self, resource: Any, namespace: str | None) -> Iterator[Obj]:
        if namespace is None:
            yield from (obj for (res, _ns, _name), obj in self._store.items() if res == resource)
        else:
            yield from (self._store[key] for key in self._scopes.get((resource, namespace), {}))

    async def _serve_list(self, request: kmock.Request) -> Any:
        raise answered(lambda: self._list(request))

    def _list(self, request: kmock.Request) -> Any:
        kind = self.kind_of(request.resource)
        params = request.params
        try:
            wanted = Filter.of(request.namespace, None, dict(params))
            items = [obj for obj in self._objects_in(request.resource, request.namespace) if wanted(obj)]
            shown, meta = watch.page(items, params.get("limit"), params.get("continue"), self._latest)
        except SelectorError as exc:
            raise refuse(400, "BadRequest", str(exc)) from None
        if kind.builtin:  # typed lists name their items' kind once, in the list's
            shown = [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")} for obj in shown]
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta, "items": shown}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        kind = self.kind_of(request.resource)
        try:
            wanted = WatchRequest.of(request.namespace, request.name, dict(request.params))
        except SelectorError as exc:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=str(exc), details={}) from None
        self._answers[request.id] = 200  # answered: the events follow as they come
        yield b""  # the headers go now, even if nothing happens for a while
        resource = request.resource
        async for event in watch.stream(
            wanted,
            hub=self._hub,
            resource=resource,
            history=self._history(resource),
            current=lambda: list(self._objects_in(resource, request.namespace)),
            latest=lambda: self._latest,
            bookmark=lambda version: {
                "kind": kind.kind,
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(version)},
            },
            bookmark_interval=self.bookmark_interval,
        ):
            yield event

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        raise answered(lambda: self._fetch(request))

    def _fetch(self, request: kmock.Request) -> Any:
        kind = self.kind_of(request.resource)
        obj = self._found(request, kind)
        if request.subresource == "scale" and kind.scale_subresource:
            return scale_of(obj)
        if request.subresource is not None:
            self._check_subresource(request, kind)
        return obj

    def _found(self, request: kmock.Request, kind: KindInfo) -> Obj:
        obj = self._store.get(self._key(request))
        if obj is None:
            raise refuse(
                404, "NotFound", f'{kind.qualified} "{request.name}" not found', self._details(kind, request.name)
            )
        return obj

    @staticmethod
    def _details(kind: KindInfo, name: str | None) -> dict[str, Any]:
        return {"name": name, "group": kind.group, "kind": kind.plural}

    # --- writing ---------------------------------------------------------------------------------------------------

    async def _serve_create(self, request: kmock.Request) -> Any:
        raise answered(lambda: self._create(request))

    def _create(self, request: kmock.Request) -> Any:
        kind = self.kind_of(request.resource)
        body = _json_body(request)
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise refuse(400, "BadRequest", "metadata: the body's metadata is not an object")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
        if request.namespace and meta.get("namespace") not in (None, "", request.namespace):
            message = "the namespace of the provided object does not match the namespace sent on the request"
            raise refuse(400, "BadRequest", message)
        if kind.namespaced:
            meta["namespace"] = request.namespace
        self._check_kind(kind, body)
        key = self._key(request, meta.get("name"))
        if meta.get("name") and key in self._store:
            message = f'{kind.qualified} "{meta["name"]}" already exists'
            raise refuse(409, "AlreadyExists", message, self._details(kind, meta["name"]))
        return 201, self._write(Writer.of(request), kind, key, None, body, subresource=None, patch=False, entries=None)

    async def _serve_put(self, request: kmock.Request) -> Any:
        raise answered(lambda: self._put(request))

    def _put(self, request: kmock.Request) -> Any:
        kind = self.kind_of(request.resource)
        if request.name is None:
            raise refuse(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        old = self._found(request, kind)
        body = _json_body(request)
        if request.subresource == "scale" and kind.scale_subresource:
            return self._scale(request, kind, old, body)
        self._check_subresource(request, kind)
        self._check_kind(kind, body)
        self._check_name(request, body)
        return self._write(
            Writer.of(request),
            kind,
            self._key(request),
            old,
            body,
            subresource=request.subresource,
            patch=False,
            entries=None,
        )

    async def _serve_update(self, request: kmock.Request) -> Any:
        """PATCH: apply, merge, strategic merge or JSON patch."""
        raise answered(lambda: self._patch(request))

    def _patch(self, request: kmock.Request) -> Any:
        kind = self.kind_of(request.resource)
        content_type = str(request.headers.get("Content-Type", "")).split(";", 1)[0].strip()
        key = self._key(request)
        old = self._store.get(key)
        if content_type == patches.APPLY:
            return self._apply(request, kind, key, old)
        if content_type not in (patches.MERGE, patches.JSON_PATCH) and not (
            content_type == patches.STRATEGIC and kind.builtin
        ):
            accepted = [patches.JSON_PATCH, patches.MERGE, patches.APPLY] + (
                [patches.STRATEGIC] if kind.builtin else []
            )
            message = "the body of the request was in an unknown format - accepted media types include: "
            raise refuse(415, "UnsupportedMediaType", message + ", ".join(accepted))
        if request.params.get("force"):
            raise refuse(422, "Invalid", "force: Forbidden: may not be specified for non-apply patch")
        old = self._found(request, kind)
        patch = _json_body(request, any_json=True)
        if request.subresource == "scale" and kind.scale_subresource:
            return self._scale(request, kind, old, self._patched(kind, scale_of(old), patch, content_type, scale=True))
        self._check_subresource(request, kind)
        candidate = self._patched(kind, _without_managed(old), patch, content_type)
        if not isinstance(candidate, dict):
            raise refuse(422, "Invalid", "patch: Invalid value: the patch does not give an object")
        self._check_name(request, candidate)
        return self._write(
            Writer.of(request), kind, key, old, candidate, subresource=request.subresource, patch=True, entries=None
        )

    def _patched(self, kind: KindInfo, target: Obj, patch: Any, content_type: str, scale: bool = False) -> Any:
        if content_type == patches.MERGE:
            return patches.merge_patch(target, patch)
        if content_type == patches.JSON_PATCH:
            try:
                return patches.json_patch(target, patch)
            except patches.PatchError as exc:
                raise refuse(422, "Invalid", str(exc)) from None
        if content_type == patches.STRATEGIC and kind.builtin:
            root = kind.root.definitions.named("io.k8s.api.autoscaling.v1.Scale") if scale else kind.root
            try:
                return patches.strategic_merge_patch(target, patch, root)
            except patches.PatchError as exc:
                raise refuse(422, "Invalid", str(exc)) from None
        raise AssertionError(f"unchecked patch type {content_type}")

    def _apply(self, request: kmock.Request, kind: KindInfo, key: Key, old: Obj | None) -> Any:
        manager = request.params.get("fieldManager")
        if not manager:
            raise refuse(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
            )
        if len(manager) > FIELD_MANAGER_LIMIT:
            raise refuse(422, "Invalid", f"fieldManager: Too long: may not be more than {FIELD_MANAGER_LIMIT} bytes")
        try:
            config = yaml.safe_load(request.text or "")
        except yaml.YAMLError as exc:
            raise refuse(400, "BadRequest", f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise refuse(400, "BadRequest", "error decoding YAML: the body is not an object")
        if request.subresource == "scale" and kind.scale_subresource:
            if old is None:
                raise refuse(
                    404, "NotFound", f'{kind.qualified} "{request.name}" not found', self._details(kind, request.name)
                )
            replicas = (config.get("spec") or {}).get("replicas")
            config = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": request.name}}
            if replicas is not None:
                config["spec"] = {"replicas": replicas}
            applied, _ = self._apply_config(request, kind, key, old, config, manager, subresource="scale")
            return scale_of(applied)
        self._check_subresource(request, kind)
        if not config.get("apiVersion") or not config.get("kind"):
            raise refuse(400, "BadRequest", "invalid object type: apiVersion and kind must be set")
        self._check_kind(kind, config)
        self._check_name(request, config)
        if old is None and request.subresource:
            raise refuse(
                404, "NotFound", f'{kind.qualified} "{request.name}" not found', self._details(kind, request.name)
            )
        stored, created = self._apply_config(request, kind, key, old, config, manager, subresource=request.subresource)
        return (201, stored) if created else stored

    def _apply_config(
        self,
        request: kmock.Request,
        kind: KindInfo,
        key: Key,
        old: Obj | None,
        config: Obj,
        manager: str,
        subresource: str | None,
    ) -> tuple[Obj, bool]:
        """The object after ``manager`` applies ``config``, and whether that created it."""
        if kind.builtin:
            try:
                config, _ = decode_builtin(config, kind.root, keep_empty=True)
            except DecodeError as exc:
                raise refuse(422, "Invalid", f".{exc}") from None
        live = old or {}
        entries = managed.read((live.get("metadata") or {}).get("managedFields"))
        try:
            merged, entries = managed.apply(
                entries,
                _without_managed(live),
                config,
                kind.root,
                manager=manager,
                subresource=subresource or "",
                api_version=kind.api_version,
                now=now(),
                force=request.params.get("force") == "true",
                ignored=kind.ignored(subresource),
                reset=lambda _live, merged: kind.reset(subresource if subresource != "scale" else None, old, merged),
            )
        except ApplyConflict as conflict:
            details = {"name": request.name, "group": kind.group, "kind": kind.plural, "causes": conflict.causes}
            raise refuse(409, "Conflict", conflict.message, details) from None
        if old is None:
            meta = merged.setdefault("metadata", {})
            if kind.namespaced:
                meta["namespace"] = request.namespace
            return self._write(
                Writer.of(request), kind, key, None, merged, subresource=None, patch=True, entries=entries
            ), True
        stored = self._write(
            Writer.of(request), kind, key, old, merged, subresource=subresource, patch=True, entries=entries
        )
        return stored, False

    def _scale(self, request: kmock.Request, kind: KindInfo, old: Obj, scale: Any) -> Any:
        """A write of the ``autoscaling/v1`` Scale: only ``spec.replicas`` moves."""
        if not isinstance(scale, dict):
            raise refuse(400, "BadRequest", "the body is not a Scale")
        meta = scale.get("metadata") or {}
        wanted = meta.get("resourceVersion")
        if wanted and str(wanted) != old["metadata"]["resourceVersion"]:
            raise self._modified(kind, request.name)
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            decoding = f"json: cannot unmarshal {json_type(replicas)} into Go struct field ScaleSpec.spec.replicas"
            raise refuse(
                400, "BadRequest", f'Scale in version "v1" cannot be handled as a Scale: {decoding} of type int32'
            )
        candidate = _without_managed(old)
        candidate["spec"] = {**candidate.get("spec", {}), "replicas": replicas}
        stored = self._write(
            Writer.of(request), kind, self._key(request), old, candidate, subresource="scale", patch=True, entries=None
        )
        return scale_of(stored)

    def _write(
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
                raise self._modified(kind, key[2])
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
            if subresource != "status" and kind.has_generation and kind.bumps_generation(_without_managed(old), obj):
                meta["generation"] = int(before.get("generation", 1)) + 1
        meta["name"] = key[2]
        self._validate(kind, obj, old)
        if not self.managed_fields:
            entries = []
        elif entries is None:
            entries = managed.update(
                managed.read((old or {}).get("metadata", {}).get("managedFields")),
                _without_managed(old) if old is not None else kind.zero(),
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

    def _modified(self, kind: KindInfo, name: str | None) -> Refusal:
        message = (
            f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        return refuse(409, "Conflict", message, self._details(kind, name))

    def _check_kind(self, kind: KindInfo, body: Obj) -> None:
        if body.get("apiVersion") not in (None, kind.api_version):
            message = f"the API version in the data ({body['apiVersion']}) does not match the expected API version"
            raise refuse(400, "BadRequest", f"{message} ({kind.api_version})")
        if body.get("kind") not in (None, kind.kind):
            message = f"the kind in the data ({body['kind']}) does not match the expected kind ({kind.kind})"
            raise refuse(400, "BadRequest", message)
        body["kind"], body["apiVersion"] = kind.kind, kind.api_version

    @staticmethod
    def _check_name(request: kmock.Request, body: Obj) -> None:
        name = (body.get("metadata") or {}).get("name")
        if name not in (None, request.name):
            raise refuse(
                400,
                "BadRequest",
                f"the name of the object ({name}) does not match the name on the URL ({request.name})",
            )

    @staticmethod
    def _check_subresource(request: kmock.Request, kind: KindInfo) -> None:
        if request.subresource is not None and not (request.subresource == "status" and kind.status_subresource):
            raise refuse(404, "NotFound", "the server could not find the requested resource")

    # --- storing, deleting -----------------------------------------------------------------------------------

    def _next_version(self) -> int:
        self._latest += 1
        return self._latest

    def _store_object(self, key: Key, obj: Obj, old: Obj | None) -> Obj:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            assert old is not None
            self._remove(key, old)
            return old
        version = self._next_version()
        meta["resourceVersion"] = str(version)
        self._store[key] = obj
        self._scopes[(key[0], key[1])][key] = None
        change = Change(version, "ADDED" if old is None else "MODIFIED", obj, old)
        self._publish(key[0], change)
        return obj

    def _publish(self, resource: Any, change: Change) -> None:
        self._history(resource).add(change)
        self._hub.publish(resource, change)

    def _remove(self, key: Key, obj: Obj) -> Obj:
        del self._store[key]
        self._scopes[(key[0], key[1])].pop(key, None)
        gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._next_version())}}
        self._publish(key[0], Change(self._latest, "DELETED", gone, obj))
        self._collect_garbage()
        return gone

    async def _serve_delete(self, request: kmock.Request) -> Any:
        raise answered(lambda: self._delete_request(request))

    def _delete_request(self, request: kmock.Request) -> Any:
        kind = self.kind_of(request.resource)
        obj = self._found(request, kind)
        return self._delete(self._key(request), obj)

    def _delete(self, key: Key, obj: Obj) -> Obj:
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return obj
        if meta.get("finalizers"):
            marked = {**obj, "metadata": {**meta, "deletionTimestamp": now(), "deletionGracePeriodSeconds": 0}}
            version = self._next_version()
            marked["metadata"]["resourceVersion"] = str(version)
            self._store[key] = marked
            self._publish(key[0], Change(version, "MODIFIED", marked, obj))
            return marked
        return self._remove(key, obj)

    def _collect_garbage(self) -> None:
        """Delete every object whose owners are all gone, as the garbage collector does (at once)."""
        live_uids = {obj["metadata"].get("uid") for obj in self._store.values()}
        for key, obj in list(self._store.items()):
            owners = obj["metadata"].get("ownerReferences")
            if key in self._store and owners and all(ref.get("uid") not in live_uids for ref in owners):
                self._delete(key, obj)


def _json_body(request: kmock.Request, any_json: bool = False) -> Any:
    try:
        body = json.loads(request.text or "null")
    except ValueError as exc:
        raise refuse(400, "BadRequest", f"couldn't get version/kind; json parse error: {exc}") from None
    if not any_json and not isinstance(body, dict):
        raise refuse(400, "BadRequest", "the body of the request is not an object")
    return body


def _without_managed(obj: Obj) -> Obj:
    """``obj`` without its bookkeeping (a shallow copy: stored objects are never changed in place, a write always
    builds a new one, so versions may share what did not change)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("managedFields", "resourceVersion")}
    return {**obj, "metadata": meta}


def selector_text(selector: Obj | None) -> str:
    """A label selector as a string (``a=b,c in (d,e)``), as ``Scale.status.selector`` gives it."""
    parts = [f"{k}={v}" for k, v in sorted(((selector or {}).get("matchLabels") or {}).items())]
    for expression in (selector or {}).get("matchExpressions") or ():
        key, operator, values = (
            expression.get("key"),
            expression.get("operator"),
            sorted(expression.get("values") or ()),
        )
        if operator == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif operator == "Exists":
            parts.append(str(key))
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(sorted(parts))


def scale_of(obj: Obj) -> Obj:
    """The ``autoscaling/v1`` Scale of a Deployment."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    scale_spec = {"replicas": spec["replicas"]} if spec.get("replicas") else {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        },
        "spec": scale_spec,
        "status": {
            "replicas": int((obj.get("status") or {}).get("replicas", 0)),
            "selector": selector_text(spec.get("selector")),
        },
    }
