"""What one poll of a broker saw: plain values shared by the observer, the engine and the backends.

Pure data, no I/O. An observation that failed carries ``error`` (a short reason a user can act on)
and must never be read as "the queue is empty".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One worker's last report for one queue."""

    worker: str  # pod name (or local process name)
    running: int = 0  # tasks executing now
    reserved: int = 0  # tasks prefetched, waiting inside the worker
    done: int = 0  # tasks finished since the worker started
    heartbeat: float = 0.0  # unix time of the report
    concurrency: int = 0
    draining: bool = False  # asked to drain: consumes nothing new, finishes what it runs
    started: float = 0.0  # unix time the worker became ready (0: unknown)
    stopping: bool = False  # got SIGTERM (a rollout, an eviction, its removal): finishing what it runs, then exits
    version: int = 0  # the pod template's version (its `workerpool.dev/version` label as a number; 0: unknown)

    @property
    def in_flight(self) -> int:
        return self.running + self.reserved


@dataclass(frozen=True, slots=True)
class QueueObservation:
    """One queue as seen in one poll. ``replicas`` is filled by the scaling loop from the backend."""

    queue: str
    backlog: int = 0  # messages waiting in Redis, summed over every priority list
    in_flight: int = 0  # running + reserved, summed over live worker reports
    workers: tuple[WorkerLoad, ...] = ()
    oldest_age: float | None = None  # seconds the oldest waiting message has waited, when known
    error: str | None = None  # None when the observation succeeded
    replicas: int = 0  # current replicas of the queue's workload (from the backend, not Redis)
    # Announced fire times of work for this queue, (unix time, source): Celery beat's next fires of the
    # periodic tasks routed here (beat_forecast.py), read in the same round trip.
    fires: tuple[tuple[float, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def demand(self) -> int:
        return self.backlog + self.in_flight


@dataclass(frozen=True, slots=True)
class BrokerObservation:
    """Everything one round trip to one broker returned."""

    queues: dict[str, QueueObservation] = field(default_factory=dict)
    error: str | None = None  # broker-wide failure (refused, timeout, auth...); every queue carries it too
    duration: float = 0.0  # seconds the poll took

    @property
    def ok(self) -> bool:
        return self.error is None
