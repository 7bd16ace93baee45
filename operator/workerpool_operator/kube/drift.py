"""Drift repair: a Deployment or Service the operator owns was edited or deleted by hand; put back what the plan
says.

Every replica feeds the Deployment watch into the backend's replica cache; only the replica that may write
repairs. A manual edit of a field the manifest sets is reverted; fields the manifest does not set (and a queue's
replica count, which is the scaler's) are left alone. A deleted queue Deployment is recreated with the replicas it
had; a component (beat, Flower, its Service) as rendered, so beat scaled to 2 by hand goes back to 1.

What the API server itself rewrites is not an edit: it stores quantities in their canonical form and leaves out
empty values (:func:`contains`). Taken for edits, they reverted nothing and posted ``DeploymentRestored`` at every
event of the Deployment (issue 28). Server-Side Apply will make this comparison the server's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.utils import parse_quantity

from workerpool_operator.kube.api import KubeApi, int_or_none
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.plan import PoolPlan
from workerpool_operator.kube.render import POOL_LABEL, QUEUE_ANNOTATION
from workerpool_operator.scaling_types import PoolKey

# What the API server stores in another form than the one we render, or leaves out: none of it is a hand edit.
# Quantities are stored in their canonical form (``cpu: 2`` as ``"2"``, ``1.5Gi`` as ``"1536Mi"``): compared by
# value in ``resources.requests``/``limits`` (and a volume claim template's) and an emptyDir's ``sizeLimit``. JSON
# omits empty strings and lists, and ``false`` in the fields that are Go values rather than pointers.
QUANTITY_MAPS = frozenset({"requests", "limits"})
QUANTITY_FIELDS = frozenset({"sizeLimit"})
OMITTED_WHEN_FALSE = frozenset({"readOnly", "stdin", "stdinOnce", "tty"})


def contains(live: Any, wanted: Any, key: str = "", parent: str = "") -> bool:
    """Whether applying ``wanted`` as a merge patch would leave ``live`` as it is, as the API server stores it
    (lists compared item by item, so fields the server defaults inside list items are not drift; quantities by
    value; what the server omits counts as given)."""
    if isinstance(wanted, Mapping):
        if not isinstance(live, Mapping):
            return False
        for k, v in wanted.items():
            if v is None:
                if k in live:
                    return False
            elif k not in live:
                if not _omitted(k, v):
                    return False
            elif not contains(live[k], v, k, key):
                return False
        return True
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return False
        return all(contains(a, b, key, parent) for a, b in zip(live, wanted, strict=True))
    if parent in QUANTITY_MAPS or key in QUANTITY_FIELDS:
        return _same_quantity(live, wanted)
    return bool(live == wanted)


def _omitted(key: str, value: Any) -> bool:
    """A value the API server does not store (so ``live`` lacks the key)."""
    return (isinstance(value, str | list) and not value) or (value is False and key in OMITTED_WHEN_FALSE)


def _same_quantity(live: Any, wanted: Any) -> bool:
    try:
        return bool(parse_quantity(live) == parse_quantity(wanted))
    except (ValueError, TypeError, ArithmeticError):
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
