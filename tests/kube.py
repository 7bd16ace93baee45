"""A Kubernetes API for tests: the emulator of tests/apiserver (an API server as strict as a real 1.36 one),
served on a loopback port in a thread of its own by :class:`KubeCluster`, with a kubeconfig, so tests (sync code)
and the operator (kopf in another thread, or a process of its own) talk to it over HTTP as to a cluster.

What the emulator does and what only a real server shows: tests/apiserver/__init__.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import kubernetes
import yaml

from tests import crd_rules
from tests.apiserver.server import ApiServerEmulator

__all__ = ["CUSTOM_RESOURCES", "RESOURCES", "ApiServerEmulator", "KubeCluster", "default_emulator", "pod_manifest"]

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


# The custom resources' schemas, from their CRDs: the emulator validates, defaults and prunes them as a server does.
CUSTOM_RESOURCES: dict[str, dict[str, Any]] = {
    "workerpool.dev/v1alpha1/workerpools": crd_rules.openapi_schema(crd_rules.load_crd()),
}


def default_emulator() -> ApiServerEmulator:
    """The emulator the ``kube`` fixture serves: every resource of :data:`RESOURCES`, the project's CRD."""
    return ApiServerEmulator(custom_resources=CUSTOM_RESOURCES)


def pod_manifest(
    name: str, namespace: str, labels: dict[str, str] | None = None, image: str = "registry.example/worker:1"
) -> dict[str, Any]:
    """A Pod as a ReplicaSet would create it: one container (the API server refuses a Pod without one)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "worker", "image": image}]},
    }


class KubeCluster:
    """The emulator served on a loopback port from a thread of its own, with a kubeconfig for clients."""

    def __init__(self, workdir: Path, emulator: Callable[[], ApiServerEmulator] = default_emulator) -> None:
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
        """Live objects of one resource (e.g. ``"apps/v1/deployments"``), by name (copies)."""
        assert self.emulator is not None
        return self.emulator.live(resource, namespace)

    def requests(self) -> list[kmock.Request]:
        assert self.emulator is not None
        return self.emulator.requests()

    def answer(self, request: kmock.Request) -> int | None:
        """The HTTP status a request was answered with (``None`` while it is being answered)."""
        assert self.emulator is not None
        return self.emulator.answer(request)
