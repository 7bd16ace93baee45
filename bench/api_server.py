"""The API emulator for the scale benchmarks: the test emulator (tests/apiserver), and with ``realistic`` a
simulated controller-manager, so objects are as big and change as often as on a real cluster.

The test emulator already answers as a real API server does where it matters at tens of thousands of objects:
objects found by key and namespace lists by index, only the latest version of each object kept, and watches
that resume from their ``resourceVersion`` with only later changes (kmock's own emulator sends every object again
as ADDED on every watch; kopf watches again from its last version whenever a watch ends, so at 1,000 pools each
re-watch of Deployments fed the operator 3,000 objects it already had: a flood a real server never sends, which
cost the benchmark's operator seconds of CPU and about 100 MiB of RSS each time it fell in a measurement). Its
objects carry what a real server adds: ``metadata.managedFields`` (one entry per writer) and the defaults.

``realistic`` adds what the deployment controller does, as kube-controller-manager does it: one work queue of
Deployments (a Deployment queued again while it waits is synced once, from its latest state), every API call of
the controller-manager taken from one token bucket (``--kube-api-qps`` 20, ``--kube-api-burst`` 30 by default, shared
by every controller: the ReplicaSet's create or scale, each pod's create, the ReplicaSet's status, and the
Deployment's status), and each sync writing the Deployment's status only when it changed: observedGeneration,
replicas, updated/ready/available/unavailable replicas, the Progressing and Available conditions, and the revision
annotation (through ``/status``, as the controller's ``UpdateStatus``), each write a new resourceVersion, a MODIFIED
event and a ``kube-controller-manager`` entry in ``managedFields``. Pods become ready ``pod_start`` seconds after
their create, one by one, so a Deployment of n replicas gets up to 1 + n status writes while its pods start (fewer
when the queue is long: readiness that arrived meanwhile goes out in one write), and a Deployment of none gets one.
A Deployment's spec changing (the operator's apply, or its scale) queues it again. With ``controller_qps=None`` the
bucket is unbounded. Without ``realistic``, no controller writes. Objects carry ``managedFields`` either way, as
on every real server: the operator's drift repair reads them, and without them every object looks applied by no
one (until 2026-12-05 the plain mode left them out, and the reaction bench's operator applied its Deployment again,
with a Warning Event, after every burst; the plain-mode scale figures of 2026-12-01 were measured so).

Watches send BOOKMARK events every ``bookmark_interval`` (60 s) when asked (kopf asks), as a real server does.
What still differs from a real API server is said in docs/benchmarks.md ("Operator at scale").
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp.web
import attrs
import kmock
from tests.apiserver.server import answered
from tests.kube import CUSTOM_RESOURCES, ApiServerEmulator

CONTROLLER_MANAGER = "kube-controller-manager"
DEPLOYMENTS = "deployments"
CONTROLLER_QPS = 20.0  # kube-controller-manager's --kube-api-qps default
CONTROLLER_BURST = 30  # and --kube-api-burst
POD_START = 3.0  # seconds from a pod's create to its readiness

Key = tuple[Any, str | None, str]


class TokenBucket:
    """client-go's rate limiter: ``qps`` tokens a second, at most ``burst`` saved (``qps=None``: unbounded)."""

    def __init__(self, qps: float | None, burst: int, clock: Any = None) -> None:
        self.qps, self.burst = qps, burst
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._tokens = float(burst)
        self._at: float | None = None
        self.taken = 0

    def delay(self, count: int = 1) -> float:
        """Take ``count`` tokens: the seconds to wait before the calls they stand for may be made."""
        self.taken += count
        if self.qps is None:
            return 0.0
        now = self._clock()
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.qps)
        self._at = now
        self._tokens -= count
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps


@attrs.define
class _Rollout:
    """What the simulated controllers did for one Deployment: its ReplicaSet's template and pods."""

    template: str = ""
    pods_ready_at: list[float] = attrs.field(factory=list)  # one per pod created, when it is (or will be) ready


@attrs.define(kw_only=True)
class BenchApiServer(ApiServerEmulator):
    """See the module's docstring."""

    realistic: bool = False
    controller_qps: float | None = CONTROLLER_QPS
    controller_burst: int = CONTROLLER_BURST
    pod_start: float = POD_START
    status_writes: int = attrs.field(default=0, init=False)  # Deployment status writes by the controller-manager
    events_posted: int = attrs.field(default=0, init=False)  # Events created by anyone (the operator, here)
    bucket: TokenBucket = attrs.field(init=False)
    _queue: deque[Key] = attrs.field(factory=deque, init=False)
    _queued: set[Key] = attrs.field(factory=set, init=False)
    _wake: asyncio.Event | None = attrs.field(default=None, init=False)
    _worker: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    _rollouts: dict[Key, _Rollout] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.custom_resources = dict(CUSTOM_RESOURCES)
        self.managed_fields = True  # as a real server's: drift repair reads them (see the module's docstring)
        self.cel_rules = False  # the benchmark's pools are valid by construction; 13 ms of CEL each measures us
        self.bucket = TokenBucket(self.controller_qps, self.controller_burst)
        super().__attrs_post_init__()  # the store takes the settings above

    @property
    def controller_calls(self) -> int:
        """API calls the simulated controller-manager made (writes of objects not kept here included)."""
        return self.bucket.taken

    @property
    def controller_backlog(self) -> int:
        """Deployments waiting in the controller's queue."""
        return len(self._queue)

    async def _handle(self, request: kmock.Request) -> Any:
        before = self.latest_version
        response = self._served_directly(request)
        if response is None:
            response = await super()._handle(request)
        changed = self.latest_version != before and int(response.status) < 300
        if changed and request.resource is not None and request.resource.plural == "events":
            self.events_posted += request.action == kmock.action.CREATE
        if changed and self.realistic and self._controller_writes_after(request):
            name = request.name or ((request.data or {}).get("metadata") or {}).get("name")
            self.enqueue((request.resource, request.namespace, str(name)))
        return response

    def _served_directly(self, request: kmock.Request) -> aiohttp.web.Response | None:
        """A resource's read or write answered by the store at once, as kmock's fallback would answer it, without
        kmock's reaction matching (a third of the emulator's CPU at 1,000 pools, in a profile): the benchmarks
        register no reactions. Watches and discovery go through kmock. ``None``: not answered here."""
        resource = request.resource
        if resource is None or resource not in self.resources:
            return None
        serve = _DIRECT.get(kmock.method.PUT if request.method == kmock.method.PUT else request.action)
        if serve is None:
            return None
        answer = answered(functools.partial(serve, self, request))
        self._answers[request.id] = answer.code
        return aiohttp.web.json_response(answer.body, status=answer.code)

    def ready_count(self, group: str, plural: str) -> int:
        """Objects of one resource whose status has the condition Ready True (read in place, from any thread: the
        store replaces its objects, never changes them)."""
        ready = 0
        for (resource, _, _), obj in list(self.store.objects.items()):
            if resource.plural == plural and resource.group == group:
                conditions = (obj.get("status") or {}).get("conditions") or ()
                ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return ready

    @staticmethod
    def _controller_writes_after(request: kmock.Request) -> bool:
        """A Deployment created, or its spec or scale changed: the deployment controller syncs it."""
        if request.resource is None or request.resource.plural != DEPLOYMENTS:
            return False
        if request.subresource not in (None, "scale"):
            return False
        return request.action == kmock.action.CREATE or (
            request.action == kmock.action.UPDATE and "spec" in (request.data or {})
        )

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        """Queue the Deployment for a sync (now, or after ``delay``); once, however often it is queued."""
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self.enqueue, key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())

    async def _work(self) -> None:
        """The deployment controller's worker: one Deployment at a time, its calls paced by the token bucket."""
        assert self._wake is not None
        while True:
            while self._queue:
                key = self._queue.popleft()
                self._queued.discard(key)
                await self._sync(key)
            self._wake.clear()
            await self._wake.wait()

    async def _sync(self, key: Key) -> None:
        resource, namespace, name = key
        live = self.store.objects.get(key)
        if live is None:
            self._rollouts.pop(key, None)
            return
        spec = live.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        template = _digest(spec.get("template"))
        rollout = self._rollouts.setdefault(key, _Rollout())
        calls = 0
        if rollout.template != template:  # a new ReplicaSet (its pods replace the old ones')
            rollout.template, rollout.pods_ready_at = template, []
            calls += 1
        elif len(rollout.pods_ready_at) != replicas:
            calls += 1  # the ReplicaSet scaled
        now = asyncio.get_running_loop().time()
        created = max(0, replicas - len(rollout.pods_ready_at))
        rollout.pods_ready_at = rollout.pods_ready_at[:replicas] + [now + self.pod_start] * created
        calls += created + (1 if calls else 0)  # its pods, then the ReplicaSet's status
        if calls:
            await asyncio.sleep(self.bucket.delay(calls))
        live = self.store.objects.get(key)
        if live is None:
            return
        ready = sum(at <= asyncio.get_running_loop().time() for at in rollout.pods_ready_at)
        status = controller_status(live, ready=ready >= replicas, ready_replicas=ready)
        if _comparable(live.get("status")) != _comparable(status):
            await asyncio.sleep(self.bucket.delay())

            def written(current: dict[str, Any]) -> dict[str, Any]:
                annotations = {
                    **(current["metadata"].get("annotations") or {}),
                    "deployment.kubernetes.io/revision": "1",
                }
                meta = {**current["metadata"], "annotations": annotations}
                fresh = controller_status(current, ready=ready >= replicas, ready_replicas=ready)
                return {**current, "metadata": meta, "status": fresh}

            # Through /status, as the controller does (UpdateStatus): the annotation with it, no new generation.
            if self.controller_write(
                resource, namespace, name, written, manager=CONTROLLER_MANAGER, subresource="status"
            ):
                self.status_writes += 1
        pending = [at for at in rollout.pods_ready_at if at > asyncio.get_running_loop().time()]
        if pending:
            self.enqueue(key, min(pending) - asyncio.get_running_loop().time())


# How the store answers each action (and PUT, which kmock gives no action), as kmock's fallback reactions do.
_DIRECT: dict[Any, Callable[[ApiServerEmulator, kmock.Request], Any]] = {
    kmock.action.LIST: ApiServerEmulator._list,
    kmock.action.FETCH: ApiServerEmulator._fetch,
    kmock.action.CREATE: ApiServerEmulator._create,
    kmock.action.UPDATE: ApiServerEmulator._patch,
    kmock.action.DELETE: ApiServerEmulator._delete_request,
    kmock.method.PUT: ApiServerEmulator._put,
}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def _comparable(status: Any) -> Any:
    """A status without its condition times (a sync that changes nothing else writes nothing)."""
    if not isinstance(status, dict):
        return None
    conditions = [
        {k: v for k, v in c.items() if k not in ("lastUpdateTime", "lastTransitionTime")}
        for c in status.get("conditions") or ()
    ]
    return {**status, "conditions": conditions}


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def controller_status(deployment: dict[str, Any], ready: bool, ready_replicas: int | None = None) -> dict[str, Any]:
    """The status the deployment controller writes: pods created (``ready`` False), then ready (``ready_replicas``
    of them, when given: each pod's readiness is a write)."""
    meta = deployment.get("metadata") or {}
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    now_ready = replicas if ready else 0 if ready_replicas is None else min(ready_replicas, replicas)
    stamp = _now()
    revision = hashlib.sha256(json.dumps((deployment.get("spec") or {}).get("template"), sort_keys=True).encode())
    replica_set = f"{meta.get('name')}-{revision.hexdigest()[:10]}"
    available = ready or replicas == 0
    status: dict[str, Any] = {
        "observedGeneration": int(meta.get("generation", 1)),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": now_ready,
        "availableReplicas": now_ready,
        "unavailableReplicas": replicas - now_ready,
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
