"""What the reporter says of a pool's workloads besides its poll: the count a Shadow queue would set, the
Deployments a pool scales without rendering that are missing, and the other field managers writing a queue's
replicas. Each is said in the status (``status.py``, ``conditions.py``) and, once per change, in an Event.

Kept apart from ``reporter.py`` (which hands it each poll and asks it for the conditions) so that what is told, and
when, is in one place: a Shadow queue's ``WouldScale`` once per change of the count it would set, as ``Scaled`` is
once per write; a missing target and another writer once each, not at every poll.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.status import QueueFacts
from workerpool_operator.scaling_types import PoolKey, QueueResult


class WorkloadFacts(Protocol):
    """What is known of a pool's workloads from its plan."""

    @property
    def key(self) -> PoolKey: ...
    @property
    def uid(self) -> str | None: ...
    @property
    def queue_names(self) -> list[str]: ...
    @property
    def targets(self) -> Mapping[str, str]:
        """Queue -> the Deployment it scales without rendering (scaleTargetRef)."""

    @property
    def shared_queues(self) -> Mapping[str, tuple[str, ...]]:
        """Celery queue -> the groups that count it, where more than one does."""

    def shadow(self, queue: str) -> bool:
        """Whether the queue is in Shadow mode."""

    def drains(self, queue: str) -> bool:
        """Whether a scale-down of the queue drains first (drainTimeoutSeconds > 0)."""


@dataclass
class Told:
    """What the Events of one pool said last, so each is said once per change."""

    missing: set[str] = field(default_factory=set)  # queues whose scaleTargetRef was missing
    contested: dict[str, tuple[str, ...]] = field(default_factory=dict)  # queue -> other managers of its replicas
    would: dict[str, int | None] = field(default_factory=dict)  # Shadow: queue -> the count it would set


class WorkloadNotes:
    def __init__(self, backend: KubeBackend, events: EventSink) -> None:
        self._backend = backend
        self._events = events

    async def facts(self, pool: WorkloadFacts, result: QueueResult, told: Told) -> QueueFacts:
        """What the status says of a queue besides its poll; in Shadow, a ``WouldScale`` Event when the count it
        would set changed."""
        queue, shadow = result.queue, pool.shadow(result.queue)
        would_scale = False
        if shadow and result.decision is not None:
            todo = result.shadow
            wanted = todo.scale_to if todo is not None else None
            if todo is not None and wanted is not None and wanted != told.would.get(queue):
                would_scale = True
                removed = f"; {', '.join(todo.remove_first)} first" if todo.remove_first else ""
                message = (
                    f"queue {queue}: would scale {result.observation.replicas} -> {wanted} replicas "
                    f"({result.decision.reason}{removed}); Shadow: nothing written"
                )
                await self._events(pool.key, pool.uid, "Normal", "WouldScale", message)
            told.would[queue] = wanted
        elif not shadow:
            told.would.pop(queue, None)
        target = pool.targets.get(queue)
        return QueueFacts(shadow=shadow, would_scale=would_scale, scale_target=target, drains=pool.drains(queue))

    def contested(self, pool: WorkloadFacts) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Active queues whose Deployment's replicas another field manager took: queue -> (Deployment, managers)."""
        found: dict[str, tuple[str, tuple[str, ...]]] = {}
        for queue in pool.queue_names:
            deployment = self._backend.deployment_name(pool.key, queue)
            others = self._backend.contested(pool.key[0], deployment) if deployment else ()
            if deployment and others and not pool.shadow(queue):
                found[queue] = (deployment, others)
        return found

    def missing(self, pool: WorkloadFacts) -> set[str]:
        """The queues whose scaleTargetRef Deployment was found missing."""
        return {q for q, name in pool.targets.items() if self._backend.missing(pool.key[0], name)}

    def workloads(self, pool: WorkloadFacts) -> cond.Workloads:
        """What the conditions say of the pool's workloads (``conditions.workload_conditions``)."""
        return cond.Workloads(
            targets=pool.targets,
            missing=self.missing(pool),
            contested=self.contested(pool),
            shared=pool.shared_queues,
            shadow=[q for q in pool.queue_names if pool.shadow(q)],
            queue_count=len(pool.queue_names),
        )

    async def tell(self, pool: WorkloadFacts, told: Told) -> None:
        """Once per change: a scale target gone or back, another manager taking a queue's replicas."""
        missing = self.missing(pool)
        for queue in sorted(missing - told.missing):
            message = f"queue {queue}: Deployment {pool.targets[queue]} not found (scaleTargetRef): nothing to scale"
            await self._events(pool.key, pool.uid, "Warning", cond.REASON_SCALE_TARGET_NOT_FOUND, message)
        for queue in sorted(told.missing - missing):
            message = f"queue {queue}: Deployment {pool.targets.get(queue, '?')} found: scaling it"
            await self._events(pool.key, pool.uid, "Normal", "ScaleTargetFound", message)
        told.missing = missing
        contested = self.contested(pool)
        for queue, (deployment, others) in contested.items():
            if told.contested.get(queue) != others:
                message = cond.contested_message({queue: (deployment, others)})
                await self._events(pool.key, pool.uid, "Warning", cond.REPLICAS_CONTESTED, message)
        told.contested = {queue: others for queue, (_, others) in contested.items()}
