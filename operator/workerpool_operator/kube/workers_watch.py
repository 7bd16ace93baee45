"""What the workers' reports say that no scaling decision does, acted on by the replica that writes: rollouts (a
pod template version appearing and retiring), busy pods protected from voluntary node disruption, and workers lost
with their tasks (``disruptions.py`` decides the last two; this module does the I/O: pod patches, Events, metrics).

It runs after the status reporter on every poll result. Its memory, per queue, is the last poll's workers, the
protection marks it wrote, and the earlier versions still running; a new leader starts with none: it writes the
marks again for the workers busy long enough (an idempotent patch), and cannot count the losses of the polls it
did not see.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from workerpool_operator.kube import disruptions, metrics
from workerpool_operator.kube.api import ApiError, KubeApi, pod_path
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.reporter import PoolFacts
from workerpool_operator.observation import WorkerLoad
from workerpool_operator.scaling_types import PoolKey, PoolResult, QueueResult

logger = logging.getLogger(__name__)


@dataclass
class _Queue:
    workers: tuple[WorkerLoad, ...] = ()
    at: float = 0.0
    marks: Mapping[str, disruptions.Marks] = field(default_factory=dict)
    old_versions: frozenset[int] = frozenset()


class WorkersWatch:
    """Rollout Events, pod protection and lost workers, from each poll's worker reports."""

    def __init__(
        self,
        api: KubeApi,
        events: EventSink,
        may_write: Callable[[], bool],
        protect_after: float = disruptions.PROTECT_AFTER,
    ) -> None:
        self._api = api
        self._events = events
        self._may_write = may_write
        self.protect_after = protect_after
        self._queues: dict[tuple[PoolKey, str], _Queue] = {}

    def forget(self, pool: PoolKey) -> None:
        for key in [k for k in self._queues if k[0] == pool]:
            del self._queues[key]

    async def observe(self, result: PoolResult, pool: PoolFacts) -> None:
        if not self._may_write():
            return
        for queue in result.queues:
            if queue.observation.ok:
                await self._queue(pool, queue, result.observed_at)

    async def _queue(self, pool: PoolFacts, result: QueueResult, now: float) -> None:
        key = (pool.key, result.queue)
        before = self._queues.get(key) or _Queue()
        workers = result.observation.workers
        current = pool.versions.get(result.queue, 0)
        old = await self._versions(pool, result.queue, workers, current, before.old_versions)
        marks = await self._protect(pool, result.queue, workers, before.marks, now)
        if before.at:
            leaving = result.state.leaving
            for lost in disruptions.vanished(before.workers, workers, leaving, now):
                await self._lost(pool, result.queue, lost)
        self._queues[key] = _Queue(workers, now, marks, old)

    async def _versions(
        self, pool: PoolFacts, queue: str, workers: tuple[WorkerLoad, ...], current: int, before: frozenset[int]
    ) -> frozenset[int]:
        """Events as earlier versions of the pod template appear beside the current one, and as they retire."""
        old = frozenset(w.version for w in workers if w.version and current and w.version != current)
        for version in sorted(old - before):
            count = sum(1 for w in workers if w.version == version)
            message = (
                f"queue {queue}: rolling out version {current:012x}; {count} worker{'s' if count > 1 else ''} of "
                f"version {version:012x} finish what they run, then stop"
            )
            await self._events(pool.key, pool.uid, "Normal", "RollingOut", message)
        for version in sorted(before - old):
            message = f"queue {queue}: version {version:012x} retired: its last worker finished and stopped"
            await self._events(pool.key, pool.uid, "Normal", "VersionRetired", message)
        return old

    async def _protect(
        self,
        pool: PoolFacts,
        queue: str,
        workers: tuple[WorkerLoad, ...],
        marks: Mapping[str, disruptions.Marks],
        now: float,
    ) -> Mapping[str, disruptions.Marks]:
        todo = disruptions.protection(workers, marks, now, self.protect_after)
        namespace = pool.key[0]
        for pod, body, action in [
            *((p, disruptions.PROTECTED, "protect") for p in todo.protect),
            *((p, disruptions.UNPROTECTED, "release") for p in todo.release),
        ]:
            try:
                await asyncio.to_thread(
                    self._api.merge_patch, pod_path(namespace, pod), {"metadata": {"annotations": body}}
                )
            except ApiError as exc:
                if exc.status != 404:  # a pod gone has no marks to keep
                    logger.warning("%s/%s: marking pod %s (%s) failed: %s", *pool.key, pod, action, exc)
                continue
            metrics.record_protection_write(namespace, pool.key[1], queue, action)
        return todo.marks

    async def _lost(self, pool: PoolFacts, queue: str, lost: disruptions.Lost) -> None:
        held = lost.running + lost.reserved
        metrics.record_interrupted_tasks(*pool.key, queue, lost.cause, held)
        why = "was killed at the end of its grace period" if lost.cause == disruptions.STOPPED_AT_GRACE else "was lost"
        message = (
            f"queue {queue}: worker {lost.worker} {why} holding {lost.running} running and {lost.reserved} prefetched "
            "task(s): acks_late ones come back after the broker's visibility timeout, the others are lost"
        )
        await self._events(pool.key, pool.uid, "Warning", "WorkerLost", message)
