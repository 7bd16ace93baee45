"""The API server emulator: kmock's HTTP side (request parsing, the request log, reactions) in front of a store of
our own (tests/apiserver/store.py) that answers as a Kubernetes 1.36 API server does (see
tests/apiserver/__init__.py for what that covers). This module turns requests into the store's reads and writes:
paths and verbs, bodies, patch types, subresources, and the errors a server answers for them.

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
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import apps

from tests.apiserver import managed, patches, watch
from tests.apiserver.decoding import json_type
from tests.apiserver.kinds import KindInfo, info
from tests.apiserver.scale import scale_of
from tests.apiserver.store import Key, Obj, Refusal, Store, Writer, details, modified, refuse, without_managed
from tests.apiserver.watch import Filter, SelectorError, WatchRequest

FIELD_MANAGER_LIMIT = 128


def writer_of(request: kmock.Request) -> Writer:
    """Who writes: ``fieldManager`` or the User-Agent's product; ``fieldValidation``; ``dryRun``."""
    params = request.params
    manager = managed.manager_name(params.get("fieldManager"), str(request.headers.get("User-Agent", "")))
    return Writer(manager, params.get("fieldValidation") == "Strict", params.get("dryRun") == "All")


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
    store: Store = attrs.field(init=False)
    _answers: dict[int, int] = attrs.field(factory=dict, init=False)
    _kinds: dict[Any, KindInfo] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store = Store(
            history_limit=self.history_limit, managed_fields=self.managed_fields, cel_rules=self.cel_rules
        )
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
        """Live objects of one resource (``"apps/v1/deployments"``), by name, as stored (copies: a test may change
        them, the store's are never changed)."""
        found = {}
        for (res, ns, name), obj in list(self.store.objects.items()):
            if f"{res.group}/{res.version}/{res.plural}".lstrip("/") == resource and namespace in (None, ns):
                found[name] = copy.deepcopy(obj)
        return found

    @property
    def latest_version(self) -> int:
        return self.store.latest

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
        old = self.store.objects.get(key)
        if old is None:
            return None
        candidate = change(without_managed(old))
        kind = self.kind_of(resource)
        return self.store.write(
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

    def _key(self, request: kmock.Request, name: str | None = None) -> Key:
        return (request.resource, request.namespace, str(name or request.name))

    async def _serve_list(self, request: kmock.Request) -> Any:
        raise answered(lambda: self._list(request))

    def _list(self, request: kmock.Request) -> Any:
        kind = self.kind_of(request.resource)
        params = request.params
        try:
            wanted = Filter.of(request.namespace, None, dict(params))
            items = [obj for obj in self.store.objects_in(request.resource, request.namespace) if wanted(obj)]
            shown, meta = watch.page(items, params.get("limit"), params.get("continue"), self.store.latest)
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
            hub=self.store.hub,
            resource=resource,
            history=self.store.history(resource),
            current=lambda: list(self.store.objects_in(resource, request.namespace)),
            latest=lambda: self.store.latest,
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
        obj = self.store.objects.get(self._key(request))
        if obj is None:
            raise refuse(404, "NotFound", f'{kind.qualified} "{request.name}" not found', details(kind, request.name))
        return obj

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
        if meta.get("name") and key in self.store.objects:
            message = f'{kind.qualified} "{meta["name"]}" already exists'
            raise refuse(409, "AlreadyExists", message, details(kind, meta["name"]))
        return 201, self.store.write(
            writer_of(request), kind, key, None, body, subresource=None, patch=False, entries=None
        )

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
        return self.store.write(
            writer_of(request),
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
        old = self.store.objects.get(key)
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
        candidate = self._patched(kind, without_managed(old), patch, content_type)
        if not isinstance(candidate, dict):
            raise refuse(422, "Invalid", "patch: Invalid value: the patch does not give an object")
        self._check_name(request, candidate)
        return self.store.write(
            writer_of(request), kind, key, old, candidate, subresource=request.subresource, patch=True, entries=None
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
        force = request.params.get("force") == "true"
        config = _apply_body(request.text or "")
        if not isinstance(config, dict):
            raise refuse(400, "BadRequest", "error decoding YAML: the body is not an object")
        if request.subresource == "scale" and kind.scale_subresource:
            if old is None:
                raise refuse(
                    404, "NotFound", f'{kind.qualified} "{request.name}" not found', details(kind, request.name)
                )
            replicas = (config.get("spec") or {}).get("replicas")
            config = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": request.name}}
            if replicas is not None:
                config["spec"] = {"replicas": replicas}
            applied, _ = self.store.apply(writer_of(request), kind, key, old, config, subresource="scale", force=force)
            return scale_of(applied)
        self._check_subresource(request, kind)
        if not config.get("apiVersion") or not config.get("kind"):
            raise refuse(400, "BadRequest", "invalid object type: apiVersion and kind must be set")
        self._check_kind(kind, config)
        self._check_name(request, config)
        if old is None and request.subresource:
            raise refuse(404, "NotFound", f'{kind.qualified} "{request.name}" not found', details(kind, request.name))
        stored, created = self.store.apply(
            writer_of(request), kind, key, old, config, subresource=request.subresource, force=force
        )
        return (201, stored) if created else stored

    def _scale(self, request: kmock.Request, kind: KindInfo, old: Obj, scale: Any) -> Any:
        """A write of the ``autoscaling/v1`` Scale: only ``spec.replicas`` moves."""
        if not isinstance(scale, dict):
            raise refuse(400, "BadRequest", "the body is not a Scale")
        meta = scale.get("metadata") or {}
        wanted = meta.get("resourceVersion")
        if wanted and str(wanted) != old["metadata"]["resourceVersion"]:
            raise modified(kind, request.name)
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            decoding = f"json: cannot unmarshal {json_type(replicas)} into Go struct field ScaleSpec.spec.replicas"
            raise refuse(
                400, "BadRequest", f'Scale in version "v1" cannot be handled as a Scale: {decoding} of type int32'
            )
        candidate = without_managed(old)
        candidate["spec"] = {**candidate.get("spec", {}), "replicas": replicas}
        stored = self.store.write(
            writer_of(request), kind, self._key(request), old, candidate, subresource="scale", patch=True, entries=None
        )
        return scale_of(stored)

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

    async def _serve_delete(self, request: kmock.Request) -> Any:
        raise answered(lambda: self._delete_request(request))

    def _delete_request(self, request: kmock.Request) -> Any:
        kind = self.kind_of(request.resource)
        obj = self._found(request, kind)
        return self.store.delete(self._key(request), obj)


def _apply_body(text: str) -> Any:
    """An apply's body: YAML, of which JSON is a part. The server converts YAML to JSON and decodes that; JSON,
    what clients send (kopf, the official client, kubectl), is decoded as JSON here too, without the YAML
    parser (whose YAML 1.1 rules differ from JSON's on a few numbers, and which, in pure Python, took 180 times as
    long on a small Deployment)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise refuse(400, "BadRequest", f"error decoding YAML: {exc}") from None


def _json_body(request: kmock.Request, any_json: bool = False) -> Any:
    try:
        body = json.loads(request.text or "null")
    except ValueError as exc:
        raise refuse(400, "BadRequest", f"couldn't get version/kind; json parse error: {exc}") from None
    if not any_json and not isinstance(body, dict):
        raise refuse(400, "BadRequest", "the body of the request is not an object")
    return body
