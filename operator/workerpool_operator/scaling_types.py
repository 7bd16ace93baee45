"""The scaling loop's vocabulary: the names every runtime speaks, and the three seams it is driven through.

Plain types and protocols only, no behaviour: ``kube/``, ``local/`` and the tests import these without
importing the loop itself (``scaling_loop.py``), which holds the one thing that acts.

- :data:`PoolKey`, :class:`QueuePlan`: what a runtime registers (a pool, and how each queue scales);
- :class:`QueueResult`, :class:`PoolResult`, :data:`ResultHandler`: what a tick hands back (status, Events and
  metrics in the operator; the terminal view locally);
- :class:`WorkloadBackend` (Deployments or processes), :class:`BrokerObserver` (reads Redis) and
  :class:`DrainSender` (the one write to a broker: drain requests): what the loop is driven through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.engine import Decision, QueueState, ScalingPolicy
from workerpool_operator.observation import BrokerObservation, QueueObservation

PoolKey = tuple[str, str]  # (namespace, name); the local runtime uses ("local", name)


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """How one queue of a registered pool is scaled."""

    policy: ScalingPolicy
    interval: float  # seconds between polls of this queue


@dataclass(frozen=True, slots=True)
class QueueResult:
    queue: str
    observation: QueueObservation
    decision: Decision | None  # None when the workload does not exist yet
    state: QueueState
    scaled_from: int | None = None  # replicas before a scale call made this tick, else None
    scale_error: str | None = None
    drain_error: str | None = None  # the drain requests could not be sent (the workers keep what they do)
    cancelled: int = 0  # tasks running on the workers this tick's scale-down removed (0 when drained first)


@dataclass(frozen=True, slots=True)
class PoolResult:
    pool: PoolKey
    broker_error: str | None
    queues: tuple[QueueResult, ...]
    observed_at: float
    poll_duration: float


ResultHandler = Callable[[PoolResult], Awaitable[None]]  # gets every pool's outcome of a tick


class WorkloadBackend(Protocol):
    """Where the workers of a queue run: Kubernetes Deployments, or local processes."""

    async def current_replicas(self, pool: PoolKey, queue: str) -> int | None:
        """The queue's current replica count; ``None`` when its workload does not exist (yet)."""

    async def scale(self, pool: PoolKey, queue: str, replicas: int, remove_first: Sequence[str]) -> None:
        """Set the replica count; on a scale-down, remove the named workers first."""


class BrokerObserver(Protocol):
    """Reads brokers; never writes to them."""

    async def observe(
        self,
        wanted: Mapping[BrokerConfig, Collection[str]],
        timeout: float,  # noqa: ASYNC109 (per broker, not for the whole call)
        beats: Mapping[BrokerConfig, Collection[str]] | None = None,
        aged: Mapping[BrokerConfig, Collection[str]] | None = None,
    ) -> dict[BrokerConfig, BrokerObservation]:
        """Every broker's queues; with ``beats`` (apps per broker), their beat's announced fires as well; with
        ``aged`` (queues per broker), those queues' oldest waiting task's age."""

    async def forget(self, keep: Collection[BrokerConfig] = ()) -> None:
        """Close the connections of every broker not in ``keep``."""


class DrainSender(Protocol):
    """The one write the loop makes to a broker: drain requests (``drain_requests.py``)."""

    async def send_drains(
        self, config: BrokerConfig, queue: str, draining: Mapping[str, float], released: Collection[str], ttl: int
    ) -> None:
        """Ask the ``draining`` workers (worker -> when asked) to drain ``queue``, and take the request back from the
        ``released`` ones; the requests expire ``ttl`` seconds after."""
