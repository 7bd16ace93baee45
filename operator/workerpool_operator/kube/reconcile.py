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

A pool never applied before (generation 1, no ``observedGeneration``: no operator has written its status) has no
object to remove and almost surely none of its objects yet: each is applied as a creation at once, without the read
that would find it missing (a Deployment's first apply fails with a conflict when one exists with another count or
another writer's fields; only then is it read and updated), and nothing is listed to find what its spec dropped. At
10,000 new pools that was 5 of the 14 API calls a new pool took (docs/benchmarks.md).

A queue that names its Deployment (``scaleTargetRef``) has nothing applied: the Deployment is the user's. An active
queue's scaler takes its replica count as it is (or moved into the bounds) with its own apply of the ``scale``
subresource, so that from then on another writer of ``spec.replicas`` shows in ``managedFields`` (``Known.others``);
a Shadow queue's is only read. A missing one is left to the scaling loop to report.
"""

from __future__ import annotations

import asyncio
import json
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
from workerpool_operator.scaling_types import PoolKey

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
        self._backend.set_names(plan.key, plan.deployment_names, plan.targets.values())

    def forget(self, key: PoolKey) -> None:
        """The pool is gone: its Deployments are no longer scaled (those it rendered go by owner reference, those it
        named stay as they are)."""
        self._backend.forget(key)

    async def apply(self, plan: PoolPlan, *, fresh: bool = False) -> list[str]:
        """Apply every Deployment of the plan and its components, delete the dropped ones; returns the queues
        removed. ``fresh``: the pool was never applied (see the module's doc).

        Raises :class:`ApplyError` when the API server refuses an object for a reason the user can fix; any other
        API error propagates (the caller retries)."""
        self.adopt(plan)
        for queue, manifest in plan.deployments.items():
            try:
                await self.apply_object(plan, manifest, bounds=plan.bounds(queue), fresh=fresh)
            except ApiError as exc:
                if exc.status not in USER_ERRORS:
                    raise
                message = f"queue {queue}: the API server refused its Deployment: {exc.message}"
                raise ApplyError(cond.Problem(cond.REASON_APPLY_FAILED, message)) from None
        for key, manifest in plan.components.items():
            try:
                await self.apply_object(plan, manifest, fresh=fresh)
            except ApiError as exc:
                if exc.status not in USER_ERRORS:
                    raise
                message = f"{key}: the API server refused its {manifest['kind']}: {exc.message}"
                raise ApplyError(cond.Problem(cond.REASON_APPLY_FAILED, message)) from None
        for queue, name in plan.targets.items():
            await self._take_count(plan, queue, name)
        return [] if fresh else await self._delete_removed(plan)

    async def _take_count(self, plan: PoolPlan, queue: str, name: str) -> None:
        """An active queue's scaler holds its scale target's count from now on (see the module's doc)."""
        known = await self._backend.read(plan.key[0], name)
        if known is None or plan.shadow(queue):
            return
        low, high = plan.bounds(queue)
        wanted = min(max(known.replicas, low), high)
        if wanted != known.replicas or not known.scaler_owns:
            try:
                await self._scale_to(plan.key[0], name, wanted)
            except ApiError as exc:
                if exc.status not in (404, *USER_ERRORS):
                    raise
                logger.info("%s/%s queue %s: taking the count of %s failed: %s", *plan.key, queue, name, exc)

    async def apply_object(
        self,
        plan: PoolPlan,
        manifest: Mapping[str, Any],
        *,
        bounds: tuple[int, int] | None = None,
        replicas: int | None = None,
        force: bool = False,
        fresh: bool = False,
    ) -> dict[str, Any]:
        """Apply one manifest of ``plan``; ``bounds``: it is a queue Deployment, whose count the scaler keeps within
        them; ``replicas``: the count to create it with (default: the low bound). What the object is now comes from
        the Deployment watch's cache, or a read (``fresh``: a creation is tried first, and the object read only if
        that conflicts). A conflict with another manager's fields is taken back, with an Event naming them. Returns
        the object as stored."""
        kind, meta = manifest["kind"], manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        known = self._backend.cached(namespace, name) if kind == "Deployment" else None
        if known is None and fresh and not force:
            try:
                with self._backend.applying(namespace, name):
                    return await self._create(manifest, bounds, replicas)
            except ApiError as exc:
                if exc.status != CONFLICT:
                    raise  # (a creation that conflicts changed nothing: the object is there; read it, and update)
        if known is None:
            live = await asyncio.to_thread(self._api.get_object, kind, namespace, name)
            if live is not None and kind == "Deployment":
                self._backend.observe_deployment(live)
            known = None if live is None else Known.of(live)
        with self._backend.applying(namespace, name):
            if known is None:
                return await self._create(manifest, bounds, replicas)
            return await self._update(plan, manifest, known, bounds, force)

    async def _create(
        self, manifest: Mapping[str, Any], bounds: tuple[int, int] | None, replicas: int | None
    ) -> dict[str, Any]:
        if bounds is None:
            created = await asyncio.to_thread(self._api.apply, manifest)
            self._observe(created)
            return created
        count = bounds[0] if replicas is None else replicas
        created = await asyncio.to_thread(
            self._api.apply, {**manifest, "spec": {**manifest["spec"], "replicas": count}}
        )
        self._observe(created)
        await self._scale_to(manifest["metadata"]["namespace"], manifest["metadata"]["name"], count)
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
        queue = plan.deployments.named(kind, name)
        shadow = queue is not None and plan.shadow(queue)  # the count is not ours to move, only to keep
        if bounds is not None and (known.legacy or (not known.scaler_owns and not (shadow and known.others))):
            # The scaler's count first: the manifest's apply must not be its only owner (see the module's doc).
            await self._scale_to(namespace, name, known.replicas)
        try:
            applied = await asyncio.to_thread(self._api.apply, manifest, force=force or known.legacy)
        except ApiError as exc:
            if exc.status != CONFLICT:
                raise
            message = f"{_what(plan, manifest)}: {exc.message}; applied again, taking the fields back"
            await self._events(plan.key, plan.uid, "Warning", f"{kind}FieldsTakenBack", message)
            applied = await asyncio.to_thread(self._api.apply, manifest, force=True)
        if known.legacy:
            applied = await self._release_legacy(manifest, applied)
        self._observe(applied)
        if bounds is not None and not shadow:
            wanted = min(max(known.replicas, bounds[0]), bounds[1])
            if wanted != known.replicas:
                await self._scale_to(namespace, name, wanted)
        return applied

    async def _release_legacy(self, manifest: Mapping[str, Any], applied: dict[str, Any]) -> dict[str, Any]:
        kind = manifest["kind"]
        try:
            patch = legacy_handover(applied, manifest)
            return await asyncio.to_thread(self._api.patch_if_unchanged, kind, applied, patch)
        except ApiError as exc:  # changed meanwhile: its next event brings it back here
            meta = applied["metadata"]
            what = f"{meta['namespace']}/{meta['name']}"
            logger.info("%s: handing over the fields of an earlier version failed: %s", what, exc)
            return applied

    async def _scale_to(self, namespace: str, name: str, replicas: int) -> None:
        """The scaler's apply of the count (``fields.SCALER_MANAGER``, the ``scale`` subresource)."""
        self._backend.observe_scale(await asyncio.to_thread(self._api.apply_replicas, namespace, name, replicas))

    def _observe(self, applied: Mapping[str, Any]) -> None:
        if applied.get("kind") == "Deployment":
            self._backend.observe_deployment(applied, applied=True)

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


def legacy_handover(live: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that hands an object written before 0.3 over to our applies (pure): its managedFields without
    the merge patches' entry (``fields.legacy_entries``), the manifest it kept in ``workerpool.dev/last-applied``
    removed, and the fields that manifest had and ``manifest`` has not removed too (what the merge patches of those
    versions did, once more: afterwards no entry would own them)."""
    legacy = fields.legacy_entries(live)
    kept = [dict(item) for item in fields.managed_fields(live) if item not in legacy]
    previous = _recorded(live)
    patch = _removals(previous, manifest) if previous is not None else {}
    meta = dict(patch.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), LAST_APPLIED_ANNOTATION: None}
    meta["managedFields"] = kept
    return {**patch, "metadata": meta}


def _recorded(live: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED_ANNOTATION)
    try:
        recorded = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return recorded if isinstance(recorded, dict) else None


def _removals(previous: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch setting to null every field ``previous`` had and ``desired`` has not (maps key by key; lists
    are replaced whole by the apply anyway)."""
    patch: dict[str, Any] = {}
    for key, before in previous.items():
        if key not in desired:
            patch[key] = None
        elif isinstance(before, Mapping) and isinstance(desired[key], Mapping):
            nested = _removals(before, desired[key])
            if nested:
                patch[key] = nested
    return patch
