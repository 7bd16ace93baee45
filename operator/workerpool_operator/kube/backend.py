"""The :class:`~workerpool_operator.scaling_types.WorkloadBackend` that scales Deployments.

At steady state it makes no API calls at all: replica counts come from a cache that the operator's Deployment
watch keeps current (:meth:`KubeBackend.observe_deployment`), and only a change of the decision leads to a
write. A scale-down first marks the pods the engine chose with ``controller.kubernetes.io/pod-deletion-cost``,
so the ReplicaSet removes exactly those. The count is written with the scaler's own Server-Side Apply
(``fields.SCALER_MANAGER``), which takes it back from whoever changed it by hand.

A queue may name a Deployment the operator did not render (``scaleTargetRef``): it is scaled the same way, through
its ``scale`` subresource, and nothing else of it is written. Its watch events come through a handler of their own
(it carries no pool label); one found missing is remembered as missing until the watch sees it, so a poll of a
queue whose Deployment does not exist makes no API call. Whoever else holds ``spec.replicas`` of a Deployment (an
HPA, ``kubectl scale``) is read off ``managedFields`` into :attr:`Known.others`; one that took it from the scaler
is remembered for :data:`CONTESTED_HOLD` seconds (:meth:`KubeBackend.contested`): in a fight, the other's hold
lasts only until the operator's next write takes the field back, too briefly for a status to show it. (A manager
that held the count before the scaler ever did, such as the ``kubectl apply`` that created a scale target, is no
contest: the scaler's first apply takes it, or shares it while both say the same count.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
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
    others: tuple[str, ...] = ()  # other field managers holding spec.replicas (an HPA, kubectl scale, a deploy tool)
    applied: bool = False  # this version is the answer to our apply of the manifest: every field of it is ours

    @classmethod
    def of(cls, obj: Mapping[str, Any], applied: bool = False) -> Known:
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        scaler = fields.entry(obj, fields.SCALER_MANAGER, subresource="scale")
        return cls(
            replicas=int(spec.get("replicas", 1)),  # the API server's default
            ready=int(status.get("readyReplicas") or 0),
            version=int_or_none((obj.get("metadata") or {}).get("resourceVersion")),
            scaler_owns=scaler is not None and fields.holds(scaler, REPLICAS),  # (its paths: the object's)
            legacy=bool(fields.legacy_entries(obj)),
            others=tuple(fields.owners(obj, REPLICAS, besides=OURS)),
            applied=applied,
        )


CONTESTED_HOLD = 300.0  # seconds another manager's write of spec.replicas is remembered
REPLICAS = ("spec", "replicas")
OURS = (fields.FIELD_MANAGER, fields.SCALER_MANAGER)  # the manifest's creation apply holds the first count


class KubeBackend:
    """Scales the Deployment of each (pool, queue). Implements ``WorkloadBackend``.

    ``names`` maps a pool and queue to their Deployment's name; the operator registers it when it
    applies the Deployments and forgets it when a queue or pool goes away.
    """

    def __init__(self, api: KubeApi, clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self._clock = clock
        self._others: dict[tuple[str, str], tuple[tuple[str, ...], float]] = {}  # other writers of the count, when
        self._names: dict[tuple[PoolKey, str], str] = {}
        self._queues: dict[PoolKey, set[str]] = {}  # the queues of each pool in ``_names`` (no scan of all pools)
        self._replicas: dict[tuple[str, str], Known] = {}
        self._marked: dict[tuple[str, str], set[str]] = {}  # pods given a deletion cost, per Deployment
        self._applying: dict[tuple[str, str], int] = {}  # objects with an apply in flight (drift waits for it)
        self._targets: dict[tuple[str, str], PoolKey] = {}  # Deployments scaled, not rendered -> their pool
        self._missing: set[tuple[str, str]] = set()  # of those, the ones found missing (until the watch sees them)

    # --- names and cache ---------------------------------------------------------------------------

    def set_names(self, pool: PoolKey, names: Mapping[str, str], targets: Collection[str] = ()) -> None:
        """The Deployment name of every queue of ``pool`` (replaces the previous mapping); ``targets``: the
        names among them the pool scales without rendering (``scaleTargetRef``)."""
        known = self._queues.pop(pool, set())
        for key in [(pool, q) for q in known if q not in names or names[q] != self._names[(pool, q)]]:
            name = self._names.pop(key)
            self._replicas.pop((pool[0], name), None)
            self._marked.pop((pool[0], name), None)
            self._others.pop((pool[0], name), None)
        for queue, name in names.items():
            self._names[(pool, queue)] = name
        if names:
            self._queues[pool] = set(names)
        kept = {(pool[0], name) for name in targets}
        if not kept and not self._targets:
            return
        for target in [t for t, owner in self._targets.items() if owner == pool and t not in kept]:
            del self._targets[target]
            self._missing.discard(target)
        for target in kept:
            self._targets[target] = pool

    def forget(self, pool: PoolKey) -> None:
        self.set_names(pool, {})

    def is_target(self, namespace: str, name: str) -> bool:
        """Whether a pool scales this Deployment without rendering it (``scaleTargetRef``)."""
        return (namespace, name) in self._targets

    def missing(self, namespace: str, name: str) -> bool:
        """Whether this scale target was found missing (and not seen since)."""
        return (namespace, name) in self._missing

    def deployment_name(self, pool: PoolKey, queue: str) -> str | None:
        return self._names.get((pool, queue))

    def observe_deployment(self, obj: Mapping[str, Any], deleted: bool = False, applied: bool = False) -> None:
        """Feed a Deployment seen by the watch (or returned by a write; ``applied``: by our apply of its manifest)
        into the replica cache."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted:
            self._replicas.pop(key, None)
            self._others.pop(key, None)
            if key in self._targets:
                self._missing.add(key)
            return
        self._missing.discard(key)
        version = int_or_none(meta.get("resourceVersion"))
        known = self._replicas.get(key)
        if known is not None and known.version is not None and version is not None and version < known.version:
            return
        self._replicas[key] = found = Known.of(obj, applied)
        if found.others and not found.scaler_owns and known is not None and known.scaler_owns:  # taken from it
            self._others[key] = (found.others, self._clock())

    def contested(self, namespace: str, name: str) -> tuple[str, ...]:
        """The other managers seen holding the Deployment's ``spec.replicas`` within :data:`CONTESTED_HOLD`."""
        seen = self._others.get((namespace, name))
        if seen is None:
            return ()
        if self._clock() - seen[1] > CONTESTED_HOLD:
            del self._others[(namespace, name)]
            return ()
        return seen[0]

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
        self._replicas[key] = dataclasses.replace(
            known, replicas=replicas, version=version, scaler_owns=True, applied=False
        )

    def cached(self, namespace: str, name: str) -> Known | None:
        return self._replicas.get((namespace, name))

    @contextlib.contextmanager
    def applying(self, namespace: str, name: str) -> Iterator[None]:
        """An apply of the object is in flight for the ``with`` block: meanwhile its watch events may predate it."""
        key = (namespace, name)
        self._applying[key] = self._applying.get(key, 0) + 1
        try:
            yield
        finally:
            count = self._applying[key] - 1
            if count > 0:
                self._applying[key] = count
            else:
                del self._applying[key]

    def is_applying(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._applying

    # --- WorkloadBackend ---------------------------------------------------------------------------

    async def current_replicas(self, pool: PoolKey, queue: str) -> int | None:
        name = self._names.get((pool, queue))
        if name is None:
            return None
        known = self._replicas.get((pool[0], name))
        if known is None:
            found = await self.read(pool[0], name)
            known = None if found is None else self._replicas.get((pool[0], name))
        return None if known is None else known.replicas

    async def read(self, namespace: str, name: str) -> Known | None:
        """What the cache knows of a Deployment, read from the API when it knows nothing (``None``: it does not
        exist). A scale target found missing is not read again until the watch sees it."""
        key = (namespace, name)
        known = self._replicas.get(key)
        if known is not None or key in self._missing:
            return known
        found = await asyncio.to_thread(self.api.get_deployment, namespace, name)
        if found is None:
            if key in self._targets:
                self._missing.add(key)
            return None
        self.observe_deployment(found)
        return self._replicas.get(key)

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
