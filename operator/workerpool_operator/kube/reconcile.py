"""Reconcile, step two: apply a :class:`~workerpool_operator.kube.plan.PoolPlan`. Only I/O; every decision was
made by the plan.

Each queue's Deployment is created or merge-patched to its manifest, minus the fields the last manifest had and
this one dropped; the replica count stays the scaler's (set on creation, and moved only into new bounds). The
components (beat, Flower and its Service) are applied the same way, replica count included (theirs is fixed).
Deployments and Services labelled as the pool's that the plan no longer has are deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube.api import ApiError, KubeApi
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.components import COMPONENT_ANNOTATION
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.plan import PoolPlan, removed_deployments, removed_objects
from workerpool_operator.kube.render import POOL_LABEL, QUEUE_ANNOTATION, last_applied, overlay, removals

USER_ERRORS = (400, 403, 422)  # the API server refused what the spec asks for: the user must change it


class ApplyError(Exception):
    """The API server refused a Deployment of the plan (the user's to fix; retried later)."""

    def __init__(self, problem: cond.Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class Reconciler:
    """Applies plans to the cluster."""

    def __init__(self, api: KubeApi, backend: KubeBackend, events: EventSink) -> None:
        self._api = api
        self._backend = backend
        self._events = events

    def adopt(self, plan: PoolPlan) -> None:
        """Scale the plan's Deployments as they are (applied already, by this replica or by the last leader)."""
        self._backend.set_names(plan.key, plan.deployment_names)

    async def apply(self, plan: PoolPlan) -> list[str]:
        """Apply every Deployment of the plan and its components, delete the dropped ones; returns the queues
        removed.

        Raises :class:`ApplyError` when the API server refuses a Deployment for a reason the user can fix;
        any other API error propagates (the caller retries)."""
        self.adopt(plan)
        for queue, manifest in plan.deployments.items():
            try:
                await self._apply_deployment(manifest, *plan.bounds(queue))
            except ApiError as exc:
                if exc.status not in USER_ERRORS:
                    raise
                message = f"queue {queue}: the API server refused its Deployment: {exc.message}"
                raise ApplyError(cond.Problem(cond.REASON_APPLY_FAILED, message)) from None
        for key, manifest in plan.components.items():
            try:
                await self._apply_component(manifest)
            except ApiError as exc:
                if exc.status not in USER_ERRORS:
                    raise
                message = f"{key}: the API server refused its {manifest['kind']}: {exc.message}"
                raise ApplyError(cond.Problem(cond.REASON_APPLY_FAILED, message)) from None
        return await self._delete_removed(plan)

    async def _apply_deployment(self, manifest: dict[str, Any], low: int, high: int) -> None:
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        live = await asyncio.to_thread(self._api.get_deployment, namespace, name)
        body: dict[str, Any] = manifest
        current: int | None = None
        if live is not None:
            self._backend.observe_deployment(live)
            current = int((live.get("spec") or {}).get("replicas", 1))
            body = _without_dropped(live, manifest)
        wanted = low if current is None else min(max(current, low), high)
        if wanted != current:
            body = overlay(body, {"spec": {"replicas": wanted}})
        applied = await asyncio.to_thread(self._api.apply_deployment, body)
        self._backend.observe_deployment(applied)

    async def _apply_component(self, manifest: dict[str, Any]) -> None:
        kind, meta = manifest["kind"], manifest["metadata"]
        live = await asyncio.to_thread(self._api.get_object, kind, meta["namespace"], meta["name"])
        body = manifest if live is None else _without_dropped(live, manifest)
        applied = await asyncio.to_thread(self._api.apply_object, body)
        if kind == "Deployment":
            self._backend.observe_deployment(applied)

    async def _delete_removed(self, plan: PoolPlan) -> list[str]:
        namespace, name = plan.key
        selector = f"{POOL_LABEL}={name}"
        owned = await asyncio.to_thread(self._api.list_deployments, namespace, selector)
        services = await asyncio.to_thread(self._api.list_services, namespace, selector)
        removed = []
        gone = [("Deployment", d) for d in removed_deployments(owned, plan)]
        gone += [("Service", s) for s in removed_objects(services, plan, "Service")]
        for kind, obj in gone:
            meta = obj.get("metadata") or {}
            await asyncio.to_thread(self._api.delete_object, kind, namespace, str(meta.get("name")))
            annotations = meta.get("annotations") or {}
            if kind == "Deployment":
                self._backend.observe_deployment(obj, deleted=True)
            if kind == "Deployment" and COMPONENT_ANNOTATION not in annotations:
                queue = str(annotations.get(QUEUE_ANNOTATION, meta.get("name")))
                removed.append(queue)
                await self._events(plan.key, plan.uid, "Normal", "QueueRemoved", f"queue {queue}: Deployment deleted")
            else:
                what = f"{annotations.get(COMPONENT_ANNOTATION, meta.get('name'))}: {kind} {meta.get('name')} deleted"
                await self._events(plan.key, plan.uid, "Normal", "ComponentRemoved", what)
        return removed


def _without_dropped(live: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest, plus nulls for the fields the last applied manifest had and this one dropped."""
    previous = last_applied(live)
    return manifest if previous is None else overlay(manifest, removals(previous, manifest))
