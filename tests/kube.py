"""A Kubernetes API for tests: kmock's emulator, taught the few things a real API server does that we rely on.

kmock stores JSON as given. A real API server also assigns ``uid``, ``resourceVersion``,
``generation`` and ``creationTimestamp``, bumps ``generation`` on spec changes only, and
garbage-collects objects whose owner is gone. :class:`ApiServerEmulator` adds exactly that, and
:class:`KubeCluster` runs it on a loopback port in a thread of its own, so tests (sync code) and the
operator (kopf in another thread) talk to it over HTTP like they would to a cluster.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import kmock
import kubernetes
import yaml
from kmock._internal import rendering

# What our operator and kopf itself touch. kopf needs its backbone (CRDs, namespaces, peerings,
# events) or it discovers our resource and silently never watches it.
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
    "v1/secrets": kmock.ResourceInfo(
        kind="Secret", namespaced=True, verbs={"list", "watch", "get", "patch", "create", "delete"}
    ),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, verbs={"list", "watch", "get", "create"}),
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs={"list", "watch", "get"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch", "get"}
    ),
    "kopf.dev/v1/clusterkopfpeerings": kmock.ResourceInfo(
        kind="ClusterKopfPeering", namespaced=False, verbs={"list", "watch", "get", "patch", "create"}
    ),
    "kopf.dev/v1/kopfpeerings": kmock.ResourceInfo(
        kind="KopfPeering", namespaced=True, verbs={"list", "watch", "get", "patch", "create"}
    ),
}


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus object metadata bookkeeping and owner-reference garbage collection."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _handle(self, request: rendering.Request) -> Any:
        action = request.action
        if request.resource is not None and isinstance(request.data, dict):
            if action == kmock.action.CREATE:
                self._stamp_created(request)
            elif action == kmock.action.UPDATE and request.name is not None:
                self._stamp_updated(request)
        response = await super()._handle(request)
        # A delete, or a patch removing the last finalizer of an object being deleted, may orphan objects.
        if action in (kmock.action.DELETE, kmock.action.UPDATE) and request.resource is not None:
            await self._collect_garbage()
        return response

    def _stamp_created(self, request: rendering.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", _now())
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["resourceVersion"] = str(next(self._versions))

    def _stamp_updated(self, request: rendering.Request) -> None:
        if request.resource is None or request.name is None:
            return
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # the emulator itself answers 404
        current = self.objects[key]
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
                await self._buses[resource].put({"type": "DELETED", "object": raw})


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

    def requests(self) -> list[rendering.Request]:
        assert self.emulator is not None
        return list(self.emulator._requests)
