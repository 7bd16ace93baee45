"""The API emulator for the scale benchmarks: the test emulator (tests/apiserver), and with ``realistic`` a
simulated controller-manager, so objects are as big and change as often as on a real cluster.

The test emulator already answers as a real API server does where it matters at tens of thousands of objects:
objects found by key and namespace lists by index, only the latest version of each object kept, and watches
that resume from their ``resourceVersion`` with only later changes (kmock's own emulator sends every object again
as ADDED on every watch; kopf watches again from its last version whenever a watch ends, so at 1,000 pools each
re-watch of Deployments fed the operator 3,000 objects it already had: a flood a real server never sends, which
cost the benchmark's operator seconds of CPU and about 100 MiB of RSS each time it fell in a measurement). Its
objects carry what a real server adds: ``metadata.managedFields`` (one entry per writer) and the defaults.

``realistic`` adds what the deployment controller does: after a Deployment is created or its spec changes, it
writes the Deployment's status twice, as a real one does while the ReplicaSet's pods start (observedGeneration,
replicas, updated/ready/available/unavailable replicas, the Progressing and Available conditions) and the
revision annotation (through ``/status``, as the controller's ``UpdateStatus``), each write a new
resourceVersion, a MODIFIED event and a ``kube-controller-manager`` entry in ``managedFields``. Without it,
objects carry no ``managedFields`` (small objects, for the figures that measure the operator rather than the
objects).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from typing import Any

import attrs
import kmock
from tests.kube import CUSTOM_RESOURCES, ApiServerEmulator

CONTROLLER_MANAGER = "kube-controller-manager"
DEPLOYMENTS = "deployments"
# Seconds from a Deployment's change to the controller-manager's two status writes (pods created, then ready).
STATUS_STEPS = (0.5, 3.0)


@attrs.define(kw_only=True)
class BenchApiServer(ApiServerEmulator):
    """See the module's docstring."""

    realistic: bool = False
    status_writes: int = attrs.field(default=0, init=False)  # by the simulated controller-manager
    _writing: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        self.custom_resources = dict(CUSTOM_RESOURCES)
        self.managed_fields = self.realistic
        self.cel_rules = False  # the benchmark's pools are valid by construction; 13 ms of CEL each measures us
        super().__attrs_post_init__()  # the store takes the settings above

    async def _handle(self, request: kmock.Request) -> Any:
        before = self.latest_version
        response = await super()._handle(request)
        changed = self.latest_version != before and int(response.status) < 300
        if changed and self.realistic and self._controller_writes_after(request):
            name = request.name or ((request.data or {}).get("metadata") or {}).get("name")
            self._schedule_status((request.resource, request.namespace, str(name)))
        return response

    @staticmethod
    def _controller_writes_after(request: kmock.Request) -> bool:
        """A Deployment created or its spec changed: the controller-manager will write its status."""
        if request.resource is None or request.resource.plural != DEPLOYMENTS or request.subresource is not None:
            return False
        return request.action == kmock.action.CREATE or (
            request.action == kmock.action.UPDATE and "spec" in (request.data or {})
        )

    def _schedule_status(self, key: tuple[Any, str | None, str]) -> None:
        loop = asyncio.get_running_loop()
        for step, delay in enumerate(STATUS_STEPS):
            loop.call_later(delay, self._start_writing, key, step)

    def _start_writing(self, key: tuple[Any, str | None, str], step: int) -> None:
        task = asyncio.get_running_loop().create_task(self._write_status(key, step))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write_status(self, key: tuple[Any, str | None, str], step: int) -> None:
        """What the deployment controller writes while the ReplicaSet's pods start (step 0) and are ready (1)."""

        def written(live: dict[str, Any]) -> dict[str, Any]:
            annotations = {**(live["metadata"].get("annotations") or {}), "deployment.kubernetes.io/revision": "1"}
            meta = {**live["metadata"], "annotations": annotations}
            return {**live, "metadata": meta, "status": controller_status(live, ready=step > 0)}

        resource, namespace, name = key
        # Through /status, as the controller does (UpdateStatus): the annotation with it, no new generation.
        if self.controller_write(resource, namespace, name, written, manager=CONTROLLER_MANAGER, subresource="status"):
            self.status_writes += 1


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def controller_status(deployment: dict[str, Any], ready: bool) -> dict[str, Any]:
    """The status the deployment controller writes: pods created (``ready`` False), then ready."""
    meta = deployment.get("metadata") or {}
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    stamp = _now()
    revision = hashlib.sha256(json.dumps((deployment.get("spec") or {}).get("template"), sort_keys=True).encode())
    replica_set = f"{meta.get('name')}-{revision.hexdigest()[:10]}"
    available = ready or replicas == 0
    status: dict[str, Any] = {
        "observedGeneration": int(meta.get("generation", 1)),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas if ready else 0,
        "availableReplicas": replicas if ready else 0,
        "unavailableReplicas": 0 if ready else replicas,
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp,
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp,
                "reason": "NewReplicaSetAvailable" if ready else "ReplicaSetUpdated",
                "message": f'ReplicaSet "{replica_set}" has successfully progressed.'
                if ready
                else f'ReplicaSet "{replica_set}" is progressing.',
            },
        ],
    }
    return {key: value for key, value in status.items() if value != 0 or key == "observedGeneration"}
