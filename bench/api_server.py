"""The API emulator for the scale benchmarks: fast at tens of thousands of objects, and, with ``realistic``,
answering with objects as big as a real API server's.

kmock finds an object by scanning every stored object (for each GET, PATCH, POST and DELETE), keeps every
version of every object, and the test emulator collects garbage (a scan of every object) after each
update. At 10,000 pools (30,000 Deployments, 10,000 Secrets...) that measures the emulator, not the
operator: here objects are found by key, lists of a namespace use an index, only the latest version is
kept, and garbage is collected after deletes only (the benchmarks delete nothing).

Watches resume as a real API server's do: a list answers with the latest resourceVersion, and a watch from
version N sends only the objects changed after N (the watch cache), then what changes. kmock sends every
object again as ADDED on every watch; kopf watches again from its last version whenever a watch ends (a
real server ends them after kopf's 300 s ``timeoutSeconds``), so at 1,000 pools each re-watch of Deployments
fed the operator 3,000 objects it already had: a flood a real server never sends, which cost the benchmark's
operator seconds of CPU and about 100 MiB of RSS (its high-water mark) each time it fell in a measurement.

``realistic`` makes the objects what a real API server returns (what the operator's watches then parse
and keep):

- ``metadata.managedFields`` on every object: one entry per writer (field manager from its user agent,
  ``kube-controller-manager`` for Deployment status), each with the ``fieldsV1`` tree of the fields it set;
- a Deployment's defaulted fields (strategy, revision history, progress deadline, the pod template's DNS
  policy, restart policy, scheduler, termination message, pull policy, probe and port defaults...) and its
  revision annotation;
- a simulated controller-manager: after a Deployment is created or its spec changes, it writes the
  Deployment's status twice, as a real one does while the ReplicaSet's pods start (observedGeneration,
  replicas, updated/ready/available/unavailable replicas, the Progressing and Available conditions), each
  write a new resourceVersion and a MODIFIED event on the watch.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from collections import defaultdict
from typing import Any

import attrs
import kmock
from kmock._internal import rendering
from kmock._internal.k8s_dicts import Object
from tests.kube import ApiServerEmulator

CONTROLLER_MANAGER = "kube-controller-manager"
DEPLOYMENTS = "deployments"
# Seconds from a Deployment's change to the controller-manager's two status writes (pods created, then ready).
STATUS_STEPS = (0.5, 3.0)

Key = tuple[Any, Any, Any]


class _Versions:
    """The emulator's resourceVersion counter, which also says the latest version given out (for lists)."""

    def __init__(self) -> None:
        self.latest = 0

    def __iter__(self) -> _Versions:
        return self

    def __next__(self) -> int:
        self.latest += 1
        return self.latest


def _version(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@attrs.define(kw_only=True)
class BenchApiServer(ApiServerEmulator):
    """See the module's docstring."""

    realistic: bool = False
    _versions: _Versions = attrs.field(factory=_Versions, init=False)
    status_writes: int = attrs.field(default=0, init=False)  # by the simulated controller-manager
    _writing: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _by_namespace: dict[tuple[Any, Any], dict[Key, None]] = attrs.field(factory=lambda: defaultdict(dict), init=False)

    async def _handle(self, request: rendering.Request) -> Any:
        if self.realistic and request.resource is not None and isinstance(request.data, dict):
            self._stamp_realistic(request)
        response = await super()._handle(request)
        key = _key(request)
        if key is not None and key in self.objects:
            stored: Object = self.objects[key]
            if request.action == kmock.action.CREATE:
                self._by_namespace[(key[0], key[1])][key] = None
            if not stored.deleted and len(stored.history) > 1:
                del stored.history[:-1]  # the latest version only
            if self._controller_writes_after(request, key):
                self._schedule_status(key)
        return response

    def _controller_writes_after(self, request: rendering.Request, key: Key) -> bool:
        """A Deployment created or its spec changed: the controller-manager will write its status."""
        if not self.realistic or key[0].plural != DEPLOYMENTS or request.subresource is not None:
            return False
        return request.action == kmock.action.CREATE or (
            request.action == kmock.action.UPDATE and "spec" in request.data
        )

    async def _collect_garbage(self) -> None:
        return  # the scale benchmarks delete nothing; see the module's docstring

    # --- objects by key, not by scanning every object ------------------------------------------------------

    def _found(self, request: rendering.Request) -> Object | None:
        key = _key(request)
        return self.objects[key] if key is not None and key in self.objects else None

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        found = self._found(request)
        if found is None or found.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return found.raw

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        found = self._found(request)
        assert found is not None  # stored by _handle
        return found.raw

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        found = self._found(request)
        assert found is not None
        return found.last.raw

    _serve_delete = _serve_update

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        latest = str(self._versions.latest)
        if request.namespace is None:
            listed = await super()._serve_list(request)
            assert isinstance(listed, dict)
            return {**listed, "metadata": {"resourceVersion": latest}}
        keys = self._by_namespace.get((request.resource, request.namespace), {})
        items = [self.objects[key].raw for key in keys if not self.objects[key].deleted]
        return {"metadata": {"resourceVersion": latest}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> Any:
        """kmock's watch, without the objects that did not change since the version the watch starts from."""
        since = _version((request.params or {}).get("resourceVersion"))
        async for event in super()._serve_watch(request):
            if since is not None and isinstance(event, dict) and event.get("type") == "ADDED":
                version = _version(((event.get("object") or {}).get("metadata") or {}).get("resourceVersion"))
                if version is not None and version <= since:
                    continue
            yield event

    # --- what a real API server adds ----------------------------------------------------------------------

    def _stamp_realistic(self, request: rendering.Request) -> None:
        data = request.data
        assert request.resource is not None
        if request.resource.plural == DEPLOYMENTS and request.subresource is None:
            if request.action == kmock.action.CREATE:
                default_deployment(data)
            elif request.action == kmock.action.UPDATE and isinstance(data.get("spec"), dict):
                default_deployment_spec(data["spec"])
        if request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            return
        current = self._found(request)
        previous = (current.get("metadata") or {}).get("managedFields") if current and not current.deleted else None
        manager = str(request.headers.get("User-Agent", "unknown")).split("/", 1)[0]
        changed = {k: v for k, v in data.items() if k not in ("apiVersion", "kind")}
        entry = managed_entry(manager, changed, request.subresource, previous)
        data.setdefault("metadata", {})
        if data["metadata"] is None:
            data["metadata"] = {}
        data["metadata"]["managedFields"] = entry

    def _schedule_status(self, key: Key) -> None:
        loop = asyncio.get_running_loop()
        for step, delay in enumerate(STATUS_STEPS):
            loop.call_later(delay, self._start_writing, key, step)

    def _start_writing(self, key: Key, step: int) -> None:
        task = asyncio.get_running_loop().create_task(self._write_status(key, step))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write_status(self, key: Key, step: int) -> None:
        """What the deployment controller writes while the ReplicaSet's pods start (step 0) and are ready (1)."""
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return
            stored = self.objects[key]
            current = stored.raw
            status = controller_status(current, ready=step > 0)
            meta = current.get("metadata") or {}
            managed = managed_entry(CONTROLLER_MANAGER, {"status": status}, "status", meta.get("managedFields"))
            annotations = {"deployment.kubernetes.io/revision": "1"}
            stored.patch(
                {
                    "metadata": {
                        "resourceVersion": str(next(self._versions)),
                        "annotations": annotations,
                        "managedFields": managed,
                    },
                    "status": status,
                }
            )
            del stored.history[:-1]
            self.status_writes += 1
            await self._buses[key[0]].put({"type": "MODIFIED", "object": stored.raw})


def _key(request: rendering.Request) -> Key | None:
    if request.resource is None:
        return None
    data = request.data if isinstance(request.data, dict) else {}
    meta = data.get("metadata") or {}
    name = request.name or meta.get("name")
    if name is None:
        return None
    return (request.resource, request.namespace or meta.get("namespace"), name)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- pure: managed fields, defaults, the controller's status -------------------------------------------------


def fields_v1(value: Any) -> dict[str, Any]:
    """The ``fieldsV1`` tree of the fields ``value`` sets, as the API server records it."""
    if isinstance(value, dict):
        return {f"f:{key}": fields_v1(item) for key, item in value.items()}
    if isinstance(value, list):
        tree: dict[str, Any] = {}
        for item in value:
            if isinstance(item, dict):
                name = next((field for field in ("name", "type", "containerPort", "mountPath") if field in item), None)
                marker = f"k:{json.dumps({name: item[name]}, separators=(',', ':'))}" if name else "v:{}"
                tree[marker] = {".": {}, **fields_v1(item)}
            else:
                tree[f"v:{json.dumps(item)}"] = {}
        return tree
    return {}


def _merge_trees(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _merge_trees(merged.get(key) or {}, value) if value else merged.get(key, {})
    return merged


def managed_entry(
    manager: str, changed: dict[str, Any], subresource: str | None, previous: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """``previous`` managedFields with ``manager``'s entry (for ``subresource``) updated by ``changed``."""
    entries = [dict(entry) for entry in previous or []]
    tree = fields_v1({k: v for k, v in changed.items() if k != "metadata"})
    meta = changed.get("metadata") or {}
    tree["f:metadata"] = fields_v1({k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta})
    for entry in entries:
        if entry.get("manager") == manager and entry.get("subresource") == subresource:
            entry["fieldsV1"] = _merge_trees(entry.get("fieldsV1") or {}, tree)
            entry["time"] = _now()
            return entries
    added: dict[str, Any] = {"manager": manager, "operation": "Update", "apiVersion": "v1", "time": _now()}
    added |= {"fieldsType": "FieldsV1", "fieldsV1": tree}
    if subresource is not None:
        added["subresource"] = subresource
    return [*entries, added]


def _defaults(target: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, value in defaults.items():
        if key not in target:
            target[key] = value
        elif isinstance(value, dict) and isinstance(target[key], dict):
            _defaults(target[key], value)


def _default_probe(probe: dict[str, Any]) -> None:
    _defaults(probe, {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})


def default_deployment_spec(spec: dict[str, Any]) -> None:
    """The fields the API server defaults in a Deployment's spec (apps/v1)."""
    _defaults(
        spec,
        {
            "progressDeadlineSeconds": 600,
            "revisionHistoryLimit": 10,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
        },
    )
    pod = (spec.get("template") or {}).get("spec")
    if not isinstance(pod, dict):
        return
    _defaults(
        pod,
        {
            "dnsPolicy": "ClusterFirst",
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "terminationGracePeriodSeconds": 30,
        },
    )
    for container in pod.get("containers") or []:
        _defaults(
            container,
            {
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            },
        )
        for port in container.get("ports") or []:
            _defaults(port, {"protocol": "TCP"})
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if isinstance(container.get(probe), dict):
                _default_probe(container[probe])
    for volume in pod.get("volumes") or []:
        if isinstance(volume.get("secret"), dict):
            _defaults(volume["secret"], {"defaultMode": 420})
        if isinstance(volume.get("emptyDir"), dict):
            volume["emptyDir"] = volume["emptyDir"] or {}


def default_deployment(deployment: dict[str, Any]) -> None:
    if isinstance(deployment.get("spec"), dict):
        default_deployment_spec(deployment["spec"])


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
