"""The :class:`~workerpool_operator.scaling_types.WorkloadBackend` that scales Deployments.

At steady state it makes no API calls at all: replica counts come from a cache that the operator's Deployment
watch keeps current (:meth:`KubeBackend.observe_deployment`), and only a change of the decision leads to a
write. A scale-down first marks the pods the engine chose with ``controller.kubernetes.io/pod-deletion-cost``,
so the ReplicaSet removes exactly those. The count is written with the scaler's own Server-Side Apply
(``fields.SCALER_MANAGER``), which takes it back from whoever changed it by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workerpool_operator.kube import fields
from workerpool_operator.kube.api import KubeApi, int_or_none
from workerpool_operator.scaling_types import PoolKey


@dataclass(frozen=True, slots=True)
class Known:
    """What the operator keeps of a Deployment it saw (from the watch, or a write's answer)."""

    replicas: int
    ready: int = 0
    version: int | None = None  # resourceVersion, when numeric: older watch events never overwrite newer facts
    scaler_owns: bool = True  # the scaler's field manager holds spec.replicas (see reconcile.py)
    legacy: bool = False  # still written by merge patches of a version before 0.3 (see fields.legacy_entries)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Known:
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        scaler = fields.entry(obj, fields.SCALER_MANAGER, subresource="scale")
        return cls(
            replicas=int(spec.get("replicas", 1)),  # the API server's default
            ready=int(status.get("readyReplicas") or 0),
            version=int_or_none((obj.get("metadata") or {}).get("resourceVersion")),
            scaler_owns=scaler is not None and fields.holds(scaler, ("spec", "replicas")),  # (its paths: the object's)
            legacy=bool(fields.legacy_entries(obj)),
        )


class KubeBackend:
    """Scales the Deployment of each (pool, queue). Implements ``WorkloadBackend``.

    ``names`` maps a pool and queue to their Deployment's name; the operator registers it when it
    applies the Deployments and forgets it when a queue or pool goes away.
    """

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._names: dict[tuple[PoolKey, str], str] = {}
        self._replicas: dict[tuple[str, str], Known] = {}
        self._marked: dict[tuple[str, str], set[str]] = {}  # pods given a deletion cost, per Deployment
        self._applying: dict[tuple[str, str], int] = {}  # objects with an apply in flight (drift waits for it)

    # --- names and cache ---------------------------------------------------------------------------

    def set_names(self, pool: PoolKey, names: Mapping[str, str]) -> None:
        """The Deployment name of every queue of ``pool`` (replaces the previous mapping)."""
        for key in [k for k in self._names if k[0] == pool and k[1] not in names]:
            name = self._names.pop(key)
            self._replicas.pop((pool[0], name), None)
            self._marked.pop((pool[0], name), None)
        for queue, name in names.items():
            self._names[(pool, queue)] = name

    def forget(self, pool: PoolKey) -> None:
        self.set_names(pool, {})

    def deployment_name(self, pool: PoolKey, queue: str) -> str | None:
        return self._names.get((pool, queue))

    def observe_deployment(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        """Feed a Deployment seen by the watch (or returned by a write) into the replica cache."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted:
            self._replicas.pop(key, None)
            return
        version = int_or_none(meta.get("resourceVersion"))
        known = self._replicas.get(key)
        if known is not None and known.version is not None and version is not None and version < known.version:
            return
        self._replicas[key] = Known.of(obj)

    def observe_scale(self, scale: Mapping[str, Any]) -> None:
        """Feed the answer of a write to a Deployment's ``scale`` subresource (an ``autoscaling/v1`` Scale, whose
        resourceVersion is the Deployment's) into the cache: the scaler holds the count now."""
        meta = scale.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        version = int_or_none(meta.get("resourceVersion"))
        known = self._replicas.get(key)
        if known is None or (known.version is not None and version is not None and version < known.version):
            return
        replicas = int((scale.get("spec") or {}).get("replicas", known.replicas))
        self._replicas[key] = dataclasses.replace(known, replicas=replicas, version=version, scaler_owns=True)

    def cached(self, namespace: str, name: str) -> Known | None:
        return self._replicas.get((namespace, name))

    def applying(self, namespace: str, name: str, started: bool) -> None:
        """An apply of the object starts or ends: until it ends, its watch events may predate it."""
        key = (namespace, name)
        count = self._applying.get(key, 0) + (1 if started else -1)
        if count > 0:
            self._applying[key] = count
        else:
            self._applying.pop(key, None)

    def is_applying(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._applying

    # --- WorkloadBackend ---------------------------------------------------------------------------

    async def current_replicas(self, pool: PoolKey, queue: str) -> int | None:
        name = self._names.get((pool, queue))
        if name is None:
            return None
        known = self._replicas.get((pool[0], name))
        if known is None:
            found = await asyncio.to_thread(self.api.get_deployment, pool[0], name)
            if found is None:
                return None
            self.observe_deployment(found)
            known = self._replicas.get((pool[0], name))
        return None if known is None else known.replicas

    async def scale(self, pool: PoolKey, queue: str, replicas: int, remove_first: Sequence[str]) -> None:
        name = self._names.get((pool, queue))
        if name is None:
            raise LookupError(f"queue {queue!r} of {pool[0]}/{pool[1]} has no Deployment")
        namespace = pool[0]
        known = self._replicas.get((namespace, name))
        if known is not None and replicas < known.replicas and remove_first:
            chosen = [worker.rsplit("@", 1)[-1] for worker in list(remove_first)[: known.replicas - replicas]]
            # A pod marked for an earlier scale-down that is still here may be busy now: unmark it first.
            for pod in self._marked.pop((namespace, name), set()) - set(chosen):
                await asyncio.to_thread(self.api.set_deletion_cost, namespace, pod, None)
            marked = set()
            for rank, pod in enumerate(chosen):  # lowest cost goes first: the engine lists the idlest first
                if await asyncio.to_thread(self.api.set_deletion_cost, namespace, pod, -1000 + rank):
                    marked.add(pod)
            self._marked[(namespace, name)] = marked
        scaled = await asyncio.to_thread(self.api.scale_deployment, namespace, name, replicas)
        self.observe_scale(scaled)
