"""Drift repair: a Deployment or Service the operator owns was edited or deleted by hand; apply what the plan says.

Every replica feeds the Deployment watch into the backend's cache; only the replica that may write repairs. A hand
edit is read off the object's ``managedFields`` (``fields.py``): a field of the manifest that our field manager no
longer holds was changed by someone else (it is theirs now) or removed. Such an object is applied again with
``force`` and a Warning Event names the fields and who took them. Fields the manifest does not set, and a queue's
replica count (the scaler's), are left alone; values the API server normalises (quantities) or defaults are not
edits, since they move no ownership. A deleted queue Deployment is recreated with the replicas it had; a component
(beat, Flower, its Service) as rendered, so beat scaled to 2 by hand goes back to 1.

An object with an apply of ours in flight is left to that apply: its events may show the state before it; the event
of the version an apply of ours answered with is not looked at again (every field of its manifest was ours then: at
10,000 new pools a comparison of managedFields saved for each of 30,000 creations).

A Deployment a pool scales without rendering (``scaleTargetRef``) is never repaired: only its replica count is the
operator's, and the scaling loop keeps that. Its events (it has no pool label: :meth:`DriftRepair.target_changed`)
only keep the cache current, on every replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from workerpool_operator.kube import fields
from workerpool_operator.kube.api import KubeApi, int_or_none
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.plan import PoolPlan
from workerpool_operator.kube.reconcile import Reconciler
from workerpool_operator.kube.render import POOL_LABEL
from workerpool_operator.scaling_types import PoolKey

SHOWN_FIELDS = 3  # fields an Event names, at most


def edits(obj: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[str]:
    """What was done by hand to ``manifest``'s fields on ``obj``, one phrase per field (empty: nothing)."""
    lost = fields.missing(manifest, fields.entry(obj, fields.FIELD_MANAGER))
    if lost == [()]:
        return ["not applied by this operator"]
    found = []
    for path in lost:
        others = fields.owners(obj, path, besides=(fields.FIELD_MANAGER,))
        who = f"changed by {', '.join(others)}" if others else "removed"
        found.append(f"{fields.describe(path)} {who}")
    return found


class DriftRepair:
    """Keeps the replica cache current from the watch, and the objects as their plans say."""

    def __init__(
        self,
        api: KubeApi,
        backend: KubeBackend,
        events: EventSink,
        reconciler: Reconciler,
        plan_of: Callable[[PoolKey], PoolPlan | None],
        may_write: Callable[[], bool],
    ) -> None:
        self._api = api
        self._backend = backend
        self._events = events
        self._reconciler = reconciler
        self._plan_of = plan_of  # the plan the pool is served by now (None: not served)
        self._may_write = may_write

    async def deployment_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        deleted = event_type == "DELETED"
        before = self._backend.cached(str(meta.get("namespace")), str(meta.get("name")))
        version = int_or_none(meta.get("resourceVersion"))
        if not deleted and before and before.version and version and version < before.version:
            return  # an old event: we already know a newer version of this Deployment
        if not deleted and before and before.applied and version == before.version:
            return  # the version our apply answered with: its manifest's fields are ours, and the cache knows it
        self._backend.observe_deployment(obj, deleted=deleted)
        await self._repair("Deployment", deleted, obj, before.replicas if before is not None else None)

    def is_target(self, namespace: str, name: str) -> bool:
        return self._backend.is_target(namespace, name)

    def target_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """A Deployment without the pool label changed: cached when a pool scales it (``scaleTargetRef``)."""
        meta = obj.get("metadata") or {}
        if self._backend.is_target(str(meta.get("namespace")), str(meta.get("name"))):
            self._backend.observe_deployment(obj, deleted=event_type == "DELETED")

    async def service_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        await self._repair("Service", event_type == "DELETED", obj, None)

    async def _repair(self, kind: str, deleted: bool, obj: Mapping[str, Any], replicas_before: int | None) -> None:
        if not self._may_write():
            return
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        plan = self._plan_of((namespace, str((meta.get("labels") or {}).get(POOL_LABEL))))
        if plan is None or self._backend.is_applying(namespace, name):
            return
        found = _manifest_named(plan, kind, name)
        if found is None:
            return
        what, manifest, queue = found
        bounds = plan.bounds(queue) if queue is not None else None
        if deleted:
            if not await self._pool_still_there(plan):
                return  # the pool is going: its objects go with it
            await self._reconciler.apply_object(plan, manifest, bounds=bounds, replicas=replicas_before)
            message = f"{what}: {kind} deleted by hand, recreated"
            await self._events(plan.key, plan.uid, "Warning", f"{kind}Restored", message)
            return
        if fields.entry(obj, fields.FIELD_MANAGER) is None and fields.legacy_entries(obj):
            # Written by a version before 0.3, not edited: taken over (reconcile.py), no Warning.
            await self._reconciler.apply_object(plan, manifest, bounds=bounds)
            return
        changed = edits(obj, manifest)
        if not changed:
            return
        await self._reconciler.apply_object(plan, manifest, bounds=bounds, force=True)
        shown = "; ".join(changed[:SHOWN_FIELDS])
        if len(changed) > SHOWN_FIELDS:
            shown += f"; and {len(changed) - SHOWN_FIELDS} more"
        await self._events(plan.key, plan.uid, "Warning", f"{kind}Restored", f"{what}: {shown}; applied again")

    async def _pool_still_there(self, plan: PoolPlan) -> bool:
        live = await asyncio.to_thread(self._api.get_pool, *plan.key)
        meta = (live or {}).get("metadata") or {}
        return bool(live is not None and meta.get("uid") == plan.uid and not meta.get("deletionTimestamp"))


def _manifest_named(plan: PoolPlan, kind: str, name: str) -> tuple[str, dict[str, Any], str | None] | None:
    """The plan's manifest of ``kind`` and ``name``, with what it is for a person (``queue mail``, ``beat``), and
    its queue when it is a queue's Deployment."""
    if (queue := plan.deployments.named(kind, name)) is not None:
        return f"queue {queue}", plan.deployments[queue], queue
    if (key := plan.components.named(kind, name)) is not None:
        return key, plan.components[key], None
    return None
