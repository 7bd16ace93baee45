"""Reconcile, step two: apply a :class:`~workerpool_operator.kube.plan.PoolPlan`. Only I/O; every decision was
made by the plan.

Every object is written with Server-Side Apply under one field manager (``fields.FIELD_MANAGER``): fields a spec
edit dropped are released and removed by the API server, with no manifest kept in an annotation. A queue
Deployment's replica count is the scaler's (``fields.SCALER_MANAGER``): set on creation, moved only into new bounds,
never part of the manifest. The components (beat, Flower and its Service) are applied whole, replica count
included (theirs is fixed). Deployments and Services labelled as the pool's that the plan no longer has are
deleted.

Creation is the one place the manifest holds ``spec.replicas``: a Deployment applied without it would start with
the API server's default of one pod before the scaler could say zero. The scaler's own apply of the same count
follows at once, so the count stays when the next apply of the manifest releases it.

Objects written by versions before 0.3 (merge patches, the manifest in ``workerpool.dev/last-applied``) are taken
over on their first apply: the scaler applies the current count, the manifest is applied with ``force``, and the
merge patches' entry in ``managedFields`` is removed with the annotation, so fields dropped later are removed too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube import fields
from workerpool_operator.kube.api import ApiError, KubeApi
from workerpool_operator.kube.backend import Known, KubeBackend
from workerpool_operator.kube.components import COMPONENT_ANNOTATION
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.plan import PoolPlan, removed_deployments, removed_objects
from workerpool_operator.kube.render import LAST_APPLIED_ANNOTATION, POOL_LABEL, QUEUE_ANNOTATION

logger = logging.getLogger(__name__)

USER_ERRORS = (400, 403, 422)  # the API server refused what the spec asks for: the user must change it
CONFLICT = 409


class ApplyError(Exception):
    """The API server refused a Deployment of the plan (the user's to fix; retried later)."""

    def __init__(self, problem: cond.Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class Reconciler:
    """Applies plans, and single objects of them (for drift repair)."""

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

        Raises :class:`ApplyError` when the API server refuses an object for a reason the user can fix; any other
        API error propagates (the caller retries)."""
        self.adopt(plan)
        for queue, manifest in plan.deployments.items():
            try:
                await self.apply_object(plan, manifest, bounds=plan.bounds(queue))
            except ApiError as exc:
                if exc.status not in USER_ERRORS:
                    raise
                message = f"queue {queue}: the API server refused its Deployment: {exc.message}"
                raise ApplyError(cond.Problem(cond.REASON_APPLY_FAILED, message)) from None
        for key, manifest in plan.components.items():
            try:
                await self.apply_object(plan, manifest)
            except ApiError as exc:
                if exc.status not in USER_ERRORS:
                    raise
                message = f"{key}: the API server refused its {manifest['kind']}: {exc.message}"
                raise ApplyError(cond.Problem(cond.REASON_APPLY_FAILED, message)) from None
        return await self._delete_removed(plan)

    async def apply_object(
        self,
        plan: PoolPlan,
        manifest: Mapping[str, Any],
        *,
        bounds: tuple[int, int] | None = None,
        replicas: int | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Apply one manifest of ``plan``; ``bounds``: it is a queue Deployment, whose count the scaler keeps within
        them; ``replicas``: the count to create it with (default: the low bound). What the object is now comes from
        the Deployment watch's cache, or a read. A conflict with another manager's fields is taken back, with an
        Event naming them. Returns the object as stored."""
        kind, meta = manifest["kind"], manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        known = self._backend.cached(namespace, name) if kind == "Deployment" else None
        if known is None:
            live = await asyncio.to_thread(self._api.get_object, kind, namespace, name)
            if live is not None and kind == "Deployment":
                self._backend.observe_deployment(live)
            known = None if live is None else Known.of(live)
        self._backend.applying(namespace, name, True)
        try:
            if known is None:
                return await self._create(manifest, bounds, replicas)
            return await self._update(plan, manifest, known, bounds, force)
        finally:
            self._backend.applying(namespace, name, False)

    async def _create(
        self, manifest: Mapping[str, Any], bounds: tuple[int, int] | None, replicas: int | None
    ) -> dict[str, Any]:
        if bounds is None:
            created = await asyncio.to_thread(self._api.apply, manifest)
        else:
            count = bounds[0] if replicas is None else replicas
            with_count = {**manifest, "spec": {**manifest["spec"], "replicas": count}}
            await asyncio.to_thread(self._api.apply, with_count)
            meta = manifest["metadata"]
            created = await asyncio.to_thread(self._api.apply_replicas, meta["namespace"], meta["name"], count)
        self._observe(created)
        return created

    async def _update(
        self,
        plan: PoolPlan,
        manifest: Mapping[str, Any],
        known: Known,
        bounds: tuple[int, int] | None,
        force: bool,
    ) -> dict[str, Any]:
        kind, meta = manifest["kind"], manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if bounds is not None and (known.legacy or not known.scaler_owns):
            # The scaler's count first: the manifest's apply must not be its only owner (see the module's doc).
            await asyncio.to_thread(self._api.apply_replicas, namespace, name, known.replicas)
        try:
            applied = await asyncio.to_thread(self._api.apply, manifest, force=force or known.legacy)
        except ApiError as exc:
            if exc.status != CONFLICT:
                raise
            message = f"{_what(plan, manifest)}: {exc.message}; applied again, taking the fields back"
            await self._events(plan.key, plan.uid, "Warning", f"{kind}FieldsTakenBack", message)
            applied = await asyncio.to_thread(self._api.apply, manifest, force=True)
        if known.legacy:
            applied = await self._release_legacy(kind, applied)
        if bounds is not None:
            low, high = bounds
            wanted = min(max(known.replicas, low), high)
            if wanted != known.replicas:
                applied = await asyncio.to_thread(self._api.apply_replicas, namespace, name, wanted)
        self._observe(applied)
        return applied

    async def _release_legacy(self, kind: str, applied: dict[str, Any]) -> dict[str, Any]:
        kept = [item for item in fields.managed_fields(applied) if item not in fields.legacy_entries(applied)]
        try:
            return await asyncio.to_thread(
                self._api.release_legacy_fields, kind, applied, kept, LAST_APPLIED_ANNOTATION
            )
        except ApiError as exc:  # changed meanwhile: its next event brings it back here
            meta = applied["metadata"]
            logger.info(
                "%s/%s: handing over fields of an earlier version failed: %s", meta["namespace"], meta["name"], exc
            )
            return applied

    def _observe(self, obj: Mapping[str, Any]) -> None:
        if obj.get("kind") == "Deployment":
            self._backend.observe_deployment(obj)

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


def _what(plan: PoolPlan, manifest: Mapping[str, Any]) -> str:
    """What a manifest is for a person: ``queue mail``, ``beat``, ``flower-service``."""
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    if (queue := plan.deployments.named(kind, name)) is not None:
        return f"queue {queue}"
    return plan.components.named(kind, name) or f"{kind} {name}"
