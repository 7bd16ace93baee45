"""One queue's scaling rules (pure): :class:`ScalingPolicy`, what ``decide`` and its helpers are told, resolved from
the WorkerPool spec (``spec.py``'s ``policy_for``), and the two policies' names."""

from __future__ import annotations

from dataclasses import dataclass

from workerpool_operator.engine.schedules import Schedule

DEMAND, THROUGHPUT = "demand", "throughput"
POLICIES = (THROUGHPUT, DEMAND)


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """One queue's scaling rules, resolved from the WorkerPool spec (pool-wide defaults + queue overrides).

    Durations are seconds. The defaults here are the product's defaults and match the CRD's.
    """

    min_replicas: int = 0
    max_replicas: int = 10
    target_per_replica: int = 1  # tasks (waiting + in flight) one replica should carry; spec default: concurrency
    scale_up_pods: int = 4  # a scale-up adds at most max(scale_up_pods, scale_up_percent% of current) ...
    scale_up_percent: int = 100
    scale_up_period: float = 10.0  # ... per this many seconds
    scale_down_window: float = 60.0  # stabilization: scale down to the highest recommendation in the window
    idle_before_zero: float = 120.0  # no backlog and nothing in flight for this long before going to zero
    activation_backlog: int = 1  # backlog that wakes a queue from zero
    fallback_failure_threshold: int = 3  # failed observations in a row before the fallback applies
    fallback_replicas: int | None = None  # floor held after that many failures; None: hold current replicas
    paused: bool = False  # no scaling at all while set
    drain_timeout: float = 3600.0  # longest a worker may drain before it is removed anyway; 0: no draining
    policy: str = THROUGHPUT  # THROUGHPUT or DEMAND
    startup_seconds: float = 30.0  # expected seconds from a scale-up to the new worker's report, until learned
    schedules: tuple[Schedule, ...] = ()  # cron windows with a replica floor
    # The longest a task should wait before it starts (a p95), in seconds; None: as soon as workers can be had.
    # The throughput policy then keeps the waits under it with the fewest replica-seconds (waits.py).
    target_wait: float | None = None
