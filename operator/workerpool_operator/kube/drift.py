"""Drift repair: a Deployment or Service the operator owns was edited or deleted by hand; put back what the plan
says.

Every replica feeds the Deployment watch into the backend's replica cache; only the replica that may write
repairs. A manual edit of a field the manifest sets is reverted; fields the manifest does not set (and a queue's
replica count, which is the scaler's) are left alone. A deleted queue Deployment is recreated with the replicas it
had; a component (beat, Flower, its Service) as rendered, so beat scaled to 2 by hand goes back to 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from workerpool_operator.kube.api import KubeApi, int_or_none
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.plan import PoolPlan
from workerpool_operator.kube.render import POOL_LABEL, QUEUE_ANNOTATION
from workerpool_operator.scaling_types import PoolKey


def contains(live: Any, wanted: Any) -> bool:
    """Whether applying ``wanted`` as a merge patch would leave ``live`` as it is (lists compared item by
    item, so fields the API server defaults inside list items are not drift)."""
    if isinstance(wanted, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all((k not in live) if v is None else (k in live and contains(live[k], v)) for k, v in wanted.items())
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return False
        return all(contains(a, b) for a, b in zip(live, wanted, strict=True))
    return bool(live == wanted)


class DriftRepair:
    """Keeps the replica cache current from the watch, and the Deployments as their plans say."""

    def __init__(
        self,
        api: KubeApi,
        backend: KubeBackend,
        events: EventSink,
        plan_of: Callable[[PoolKey], PoolPlan | None],
        may_write: Callable[[], bool],
    ) -> None:
        self._api = api
        self._backend = backend
        self._events = events
        self._plan_of = plan_of  # the plan the pool is served by now (None: not served)
        self._may_write = may_write

    async def deployment_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        deleted = event_type == "DELETED"
        before = self._backend.cached(str(meta.get("namespace")), str(meta.get("name")))
        version = int_or_none(meta.get("resourceVersion"))
        if not deleted and before and before.version and version and version < before.version:
            return  # an old event: we already know a newer version of this Deployment
        self._backend.observe_deployment(obj, deleted=deleted)
        await self._repair("Deployment", deleted, obj, before.replicas if before is not None else None)

    async def service_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        await self._repair("Service", event_type == "DELETED", obj, None)

    async def _repair(self, kind: str, deleted: bool, obj: Mapping[str, Any], replicas_before: int | None) -> None:
        if not self._may_write():
            return
        meta = obj.get("metadata") or {}
        plan = self._plan_of((str(meta.get("namespace")), str((meta.get("labels") or {}).get(POOL_LABEL))))
        if plan is None:
            return
        found = _manifest_named(plan, kind, str(meta.get("name")))
        if found is None:
            return
        what, manifest = found
        if deleted:
            if not await self._pool_still_there(plan):
                return  # the pool is going: its objects go with it
            queue = manifest["metadata"]["annotations"].get(QUEUE_ANNOTATION)
            if queue is not None:  # the scaler's count, as it was
                replicas = replicas_before if replicas_before is not None else plan.bounds(queue)[0]
                manifest = {**manifest, "spec": {**manifest["spec"], "replicas": replicas}}
            await self._restore(plan, what, manifest, "deleted")
        elif not contains(obj, manifest):
            await self._restore(plan, what, manifest, "edited")

    async def _restore(self, plan: PoolPlan, what: str, body: Mapping[str, Any], how: str) -> None:
        restored = await asyncio.to_thread(self._api.apply_object, body)
        if body["kind"] == "Deployment":
            self._backend.observe_deployment(restored)
        kind = body["kind"]
        message = f"{kind} deleted by hand, recreated" if how == "deleted" else "manual edit reverted"
        await self._events(plan.key, plan.uid, "Warning", f"{kind}Restored", f"{what}: {message}")

    async def _pool_still_there(self, plan: PoolPlan) -> bool:
        live = await asyncio.to_thread(self._api.get_pool, *plan.key)
        meta = (live or {}).get("metadata") or {}
        return bool(live is not None and meta.get("uid") == plan.uid and not meta.get("deletionTimestamp"))


def _manifest_named(plan: PoolPlan, kind: str, name: str) -> tuple[str, dict[str, Any]] | None:
    """The plan's manifest of ``kind`` and ``name``, with what it is for a person (``queue mail``, ``beat``)."""
    if (queue := plan.deployments.named(kind, name)) is not None:
        return f"queue {queue}", plan.deployments[queue]
    if (key := plan.components.named(kind, name)) is not None:
        return key, plan.components[key]
    return None
