"""A Kubernetes API for tests: kmock's emulator, taught the few things a real API server does that we rely on.

kmock stores JSON as given. A real API server also

- assigns ``uid``, ``resourceVersion``, ``generation`` and ``creationTimestamp``, and a name from
  ``generateName``;
- bumps ``generation`` on spec changes only;
- refuses an update whose ``metadata.resourceVersion`` is not the current one (409 Conflict): optimistic
  concurrency, which leader election relies on;
- garbage-collects objects whose owners are all gone.

:class:`ApiServerEmulator` adds exactly that, and :class:`KubeCluster` serves it on a loopback port in a thread of
its own, so tests (sync code) and the operator (kopf in another thread) talk to it over HTTP as to a cluster.

Everything that touches kmock beyond its public API lives in the one section marked "kmock internals" below
(the request hook ``_handle``, its ``rendering.Request``, the watch buses ``_buses`` and the request log
``_requests``), so a kmock upgrade changes that section only. Checked with kmock 0.8.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import kmock
import kubernetes
import yaml

# What our operator and kopf itself touch. kopf needs its backbone (CRDs, namespaces, events) or it discovers
# our resource and silently never watches it.
RESOURCES: dict[str, kmock.ResourceInfo] = {
    "workerpool.dev/v1alpha1/workerpools": kmock.ResourceInfo(
        kind="WorkerPool",
        singular="workerpool",
        namespaced=True,
        shortnames={"wp"},
        categories={"all", "celery"},
        verbs={"list", "watch", "get", "patch", "create", "delete", "update"},
        subresources={"status"},
    ),
    "apps/v1/deployments": kmock.ResourceInfo(
        kind="Deployment",
        namespaced=True,
        verbs={"list", "watch", "get", "patch", "create", "delete", "update"},
        subresources={"status", "scale"},
    ),
    "v1/pods": kmock.ResourceInfo(
        kind="Pod", namespaced=True, verbs={"list", "watch", "get", "patch", "create", "delete"}
    ),
    "v1/services": kmock.ResourceInfo(
        kind="Service", namespaced=True, verbs={"list", "watch", "get", "patch", "create", "delete"}
    ),
    "v1/secrets": kmock.ResourceInfo(
        kind="Secret", namespaced=True, verbs={"list", "watch", "get", "patch", "create", "delete"}
    ),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, verbs={"list", "watch", "get", "create"}),
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs={"list", "watch", "get"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch", "get"}
    ),
    "coordination.k8s.io/v1/leases": kmock.ResourceInfo(
        kind="Lease", namespaced=True, verbs={"list", "watch", "get", "create", "update", "patch", "delete"}
    ),
}


# --- kmock internals (the only place that uses kmock beyond its public API) --------------------------------


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus object metadata bookkeeping, optimistic concurrency and garbage collection."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _handle(self, request: kmock.Request) -> Any:
        """Runs before kmock stores anything: stamp what a real server stamps, refuse stale updates."""
        action = request.action
        if request.resource is not None and isinstance(request.data, dict):
            if action == kmock.action.CREATE:
                self._stamp_created(request)
            elif action == kmock.action.UPDATE and request.name is not None:
                conflict = self._stale(request)
                if conflict is not None:
                    return await self._render_error(conflict)
                self._stamp_updated(request)
        response = await super()._handle(request)
        # A delete, or a patch removing the last finalizer of an object being deleted, may orphan objects.
        if action in (kmock.action.DELETE, kmock.action.UPDATE) and request.resource is not None:
            await self._collect_garbage()
        return response

    async def publish(self, resource: Any, event: dict[str, Any]) -> None:
        """Send a watch event to every watcher of ``resource``."""
        await self._buses[resource].put(event)

    def requests(self) -> list[kmock.Request]:
        return list(self._requests)

    def forget_requests(self, count: int) -> None:
        """Drop the oldest ``count`` requests of the log (kmock matches each request against the whole log)."""
        del self._requests[:count]

    # --- what a real API server does --------------------------------------------------------------------------

    def _stamp_created(self, request: kmock.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)}"
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", _now())
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["resourceVersion"] = str(next(self._versions))

    def _current(self, request: kmock.Request) -> Any:
        if request.resource is None or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key]

    def _stale(self, request: kmock.Request) -> kmock.KubernetesError | None:
        """A 409 Conflict when the update names a resourceVersion that is no longer the object's."""
        wanted = (request.data.get("metadata") or {}).get("resourceVersion")
        current = self._current(request)
        if wanted is None or current is None:
            return None
        if str(wanted) == str((current.get("metadata") or {}).get("resourceVersion")):
            return None
        message = f"Operation cannot be fulfilled on {request.name}: the object has been modified"
        return kmock.KubernetesError(status=409, reason="Conflict", message=message)

    def _stamp_updated(self, request: kmock.Request) -> None:
        current = self._current(request)
        if current is None:
            return  # the emulator itself answers 404
        meta = request.data.setdefault("metadata", {})
        if meta is None:  # a merge patch may say "metadata": null; a real server refuses it
            request.data["metadata"] = meta = {}
        meta["resourceVersion"] = str(next(self._versions))
        spec_changed = (
            request.subresource is None
            and "spec" in request.data
            and _changes(current.get("spec"), request.data["spec"])
        )
        if spec_changed:
            meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
        # Identity fields are immutable on a real server.
        for field in ("uid", "creationTimestamp"):
            meta.pop(field, None)

    async def _collect_garbage(self) -> None:
        """Delete (in cascade) every object whose owners are all gone, like the garbage collector."""
        while True:
            live_uids = {obj.get("metadata", {}).get("uid") for obj in self.objects.values() if not obj.deleted}
            orphans = [
                (key, obj)
                for key, obj in self.objects.items()
                if not obj.deleted
                and (owners := obj.get("metadata", {}).get("ownerReferences"))
                and all(ref.get("uid") not in live_uids for ref in owners)
            ]
            if not orphans:
                return
            for (resource, _ns, _name), obj in orphans:
                raw = obj.raw
                obj.delete()
                await self.publish(resource, {"type": "DELETED", "object": raw})


# --- end of kmock internals --------------------------------------------------------------------------------


def _changes(old: Any, patch: Any) -> bool:
    """Whether a merge patch changes the value it is applied to."""
    if isinstance(patch, dict) and isinstance(old, dict):
        return any(_changes(old.get(k), v) if v is not None else k in old for k, v in patch.items())
    return bool(old != patch)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeCluster:
    """The emulator served on a loopback port from a thread of its own, with a kubeconfig for clients."""

    def __init__(self, workdir: Path, emulator: Callable[[], ApiServerEmulator] = ApiServerEmulator) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        self._make_emulator = emulator
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.emulator: ApiServerEmulator | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._serve, name="kube-emulator", daemon=True)

    def start(self) -> KubeCluster:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start in 30 s")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._error
        self._write_kubeconfig()
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, function: Any, *args: Any) -> None:
        """Run ``function(*args)`` in the emulator's own thread (its state is not thread-safe)."""
        self._loop.call_soon_threadsafe(function, *args)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self._make_emulator() as emulator, kmock.Server(emulator) as server:
            for name, info in RESOURCES.items():
                emulator.resources[name] = info
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
            "current-context": "emulator",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def api_client(self) -> kubernetes.client.ApiClient:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.verify_ssl = False
        return kubernetes.client.ApiClient(configuration)

    # --- conveniences for assertions ---------------------------------------------------------------

    def objects(self, resource: str, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        """Live objects of one resource (e.g. ``"apps/v1/deployments"``), by name."""
        assert self.emulator is not None
        found = {}
        for (res, ns, name), obj in list(self.emulator.objects.items()):
            if obj.deleted or f"{res.group}/{res.version}/{res.plural}".lstrip("/") != resource:
                continue
            if namespace is None or ns == namespace:
                found[name] = obj.raw
        return found

    def requests(self) -> list[kmock.Request]:
        assert self.emulator is not None
        return self.emulator.requests()
