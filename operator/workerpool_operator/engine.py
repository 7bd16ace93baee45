"""The scaling engine: how many workers each queue needs. Pure and deterministic: no I/O, no clock.

``decide(observation, state, policy, now) -> (decision, new_state)``. The caller passes the time and keeps the
state (the operator persists it in the WorkerPool status through ``to_dict`` / ``from_dict``), so the same inputs
always give the same outputs, and a restart of the operator changes no decision.

The model (docs/simulator.md compares it with KEDA's):

- demand = backlog + in flight; recommendation = ceil(demand / target per replica), clamped to [min, max]
  and, while the queue is awake, never below 1 (only the idle rule takes a queue to zero);
- up: at once, at most max(scale_up_pods, scale_up_percent %) more than the replicas at the start of the
  last ``scale_up_period`` (HPA's rate limit);
- down: to the highest recommendation made inside the last ``scale_down_window`` (HPA's stabilization);
  a fresh state counts the current replicas as a recommendation made now, so a restart never scales down
  at once;
- to zero: only after no backlog and nothing in flight for ``idle_before_zero``; from zero: once the backlog
  reaches ``activation_backlog``;
- a failed observation never lowers replicas; after ``fallback_failure_threshold`` failures in a row the
  fallback holds at least ``fallback_replicas`` (when set);
- ``paused``: replicas stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from workerpool_operator.observation import QueueObservation, WorkerLoad


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


Stamped = tuple[float, int]  # (time, replicas)


class QueueState(NamedTuple):
    """What ``decide`` remembers between polls of one queue. Small, immutable, and JSON through ``to_dict``.

    (A NamedTuple rather than a frozen dataclass: it is built on every decision, and a frozen dataclass
    costs four times as much to build; ``decide`` for 10,000 queues must fit in 50 ms.)
    """

    failures: int = 0  # failed observations in a row
    idle_since: float | None = None  # since when the queue has had no backlog and nothing in flight
    # Recommendations that can still be the highest inside the scale-down window: times rising, values falling.
    recommendations: tuple[Stamped, ...] = ()
    # Scale-ups inside the last scale-up period, as (time, replicas before the scale-up).
    scale_ups: tuple[Stamped, ...] = ()
    # Workers asked to drain (stop taking tasks, finish what they run), with when they were asked.
    draining: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "idleSince": self.idle_since,
            "recommendations": [[t, r] for t, r in self.recommendations],
            "scaleUps": [[t, r] for t, r in self.scale_ups],
            "draining": [[w, t] for w, t in self.draining],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> QueueState:
        """Read what ``to_dict`` wrote (after a JSON round trip). Raises ``ValueError`` on anything else."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"scaling state must be an object, got {type(data).__name__}")
        failures = data.get("failures", 0)
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise ValueError(f"scaling state: failures must be a non-negative integer, got {failures!r}")
        idle_since = data.get("idleSince")
        if idle_since is not None:
            idle_since = _number(idle_since, "idleSince")
        return cls(
            failures=failures,
            idle_since=idle_since,
            recommendations=_stamps(data.get("recommendations", ()), "recommendations"),
            scale_ups=_stamps(data.get("scaleUps", ()), "scaleUps"),
            draining=_draining(data.get("draining", ())),
        )


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"scaling state: {name} must be a number, got {value!r}")
    return float(value)


def _stamps(value: object, name: str) -> tuple[Stamped, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"scaling state: {name} must be a list of [time, replicas], got {value!r}")
    stamps: list[Stamped] = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ValueError(f"scaling state: {name} must be a list of [time, replicas], got item {item!r}")
        replicas = item[1]
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ValueError(f"scaling state: {name} replicas must be a non-negative integer, got {replicas!r}")
        stamps.append((_number(item[0], name), replicas))
    return tuple(stamps)


def _draining(value: object) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"scaling state: draining must be a list of [worker, since], got {value!r}")
    draining: list[tuple[str, float]] = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"scaling state: draining must be a list of [worker, since], got item {item!r}")
        draining.append((item[0], _number(item[1], "draining")))
    return tuple(draining)


Direction = Literal["up", "down", "none"]


class Decision(NamedTuple):
    """What to do with one queue, and why. (Immutable; a NamedTuple for speed, as ``QueueState``.)"""

    desired_replicas: int
    reason: str  # one line a human can read, for status, Events and logs
    remove_first: tuple[str, ...] = ()  # when scaling down: workers to remove, idlest first
    current_replicas: int = 0
    demand: int | None = None  # backlog + in flight; None when the observation failed or scaling is paused
    recommendation: int | None = None  # what the demand alone asks for, before window and step limit
    fallback_active: bool = False  # enough failed observations in a row for the fallback to apply
    paused: bool = False
    drain: tuple[str, ...] = ()  # workers to ask to stop taking tasks (they finish what they run)
    undrain: tuple[str, ...] = ()  # draining workers to take back into service

    @property
    def changed(self) -> bool:
        return self.desired_replicas != self.current_replicas

    @property
    def direction(self) -> Direction:
        if self.desired_replicas > self.current_replicas:
            return "up"
        if self.desired_replicas < self.current_replicas:
            return "down"
        return "none"


def idlest_first(workers: tuple[WorkerLoad, ...], count: int) -> tuple[str, ...]:
    """The ``count`` workers to remove first: fewest running + reserved, then fewest running, then by name."""
    if count <= 0 or not workers:
        return ()
    ranked = sorted([(w.running + w.reserved, w.running, w.worker) for w in workers])
    return tuple(name for _, _, name in ranked[:count])


def decide(
    observation: QueueObservation, state: QueueState, policy: ScalingPolicy, now: float
) -> tuple[Decision, QueueState]:
    """How many replicas the queue should have now, and the state to pass to the next call."""
    current = observation.replicas
    if policy.paused:
        return Decision(current, f"paused: holding {current} replicas", (), current, paused=True), state
    low = policy.min_replicas
    high = policy.max_replicas if policy.max_replicas > low else low
    if observation.error is not None:
        return _on_failure(observation, state, policy, now, low, high)

    target = policy.target_per_replica if policy.target_per_replica > 0 else 1
    backlog = observation.backlog if observation.backlog > 0 else 0
    in_flight = observation.in_flight if observation.in_flight > 0 else 0
    demand = backlog + in_flight
    load = f"backlog {backlog}, in-flight {in_flight}, target {target} per replica"
    idle_since = state.idle_since
    if demand:
        idle_since = None
    elif idle_since is None:
        idle_since = now

    wake_at = policy.activation_backlog if policy.activation_backlog > 1 else 1
    asleep = current == 0 and backlog < wake_at
    if asleep:
        recommendation = low
    else:
        recommendation = -(-demand // target) or 1  # awake: never below one until the idle rule says so
        if recommendation < low:
            recommendation = low
        if recommendation > high:
            recommendation = high

    # Scale-down stabilization: the highest recommendation inside the window (this one included).
    window = policy.scale_down_window
    recommendations = state.recommendations
    stabilized = recommendation
    if window > 0:
        since = now - window
        if current == 0:
            recommendations = ()  # asleep or waking: what was recommended before the queue slept is stale
        else:
            if recommendations and recommendations[0][0] <= since:  # times rise along the tuple
                first = 1
                while first < len(recommendations) and recommendations[first][0] <= since:
                    first += 1
                recommendations = recommendations[first:]
            if not recommendations:  # fresh state: the current replicas count as a recommendation made now
                recommendations = ((now, min(current, high)),)
            stabilized = max(stabilized, recommendations[0][1])  # values fall along the tuple
        kept = len(recommendations)
        while kept and recommendations[kept - 1][1] <= recommendation:
            kept -= 1
        recommendations = (*recommendations[:kept], (now, recommendation))

    scale_ups = state.scale_ups
    if scale_ups and scale_ups[0][0] <= now - policy.scale_up_period:
        scale_ups = tuple(item for item in scale_ups if item[0] > now - policy.scale_up_period)  # a few at most

    limited = False
    if stabilized > current:
        period_start = current  # the replicas when the current scale-up period began
        for _, before in scale_ups:
            if before < period_start:
                period_start = before
        limit = period_start + policy.scale_up_pods
        by_percent = -(-period_start * (100 + policy.scale_up_percent) // 100)
        if by_percent > limit:
            limit = by_percent
        if limit < current:  # replicas added outside the engine's count: never let the limit scale down
            limit = current
        if limit < 1:
            limit = 1
        limited = stabilized > limit
        desired = limit if limited else stabilized
    else:
        desired = stabilized
    idle_for = 0.0 if idle_since is None else now - idle_since
    to_zero = low == 0 and current > 0 and idle_since is not None and idle_for >= policy.idle_before_zero
    if to_zero:
        desired = 0
    if desired < low:
        desired = low
    if desired > high:
        desired = high

    if desired > current:
        scale_ups = (*scale_ups, (now, current))
        if current == 0 and backlog >= wake_at:
            reason = f"wake from zero: backlog {backlog} >= activation {wake_at}; {load}"
        elif stabilized <= low:
            reason = f"scale up to min replicas {low}: {load}"
        else:
            reason = f"scale up: {load}"
        if limited and desired > low:
            reason += (
                f"; {desired} of {stabilized} now (step limit: +{policy.scale_up_pods} or "
                f"{policy.scale_up_percent}% per {policy.scale_up_period:g}s)"
            )
    elif desired < current:
        if to_zero:
            reason = f"scale to zero: no backlog and nothing in flight for {idle_for:.0f}s"
        elif current > high and desired == high:
            reason = f"scale down to max replicas {high}: {load}"
        else:
            reason = f"scale down: {load}"
            if stabilized > recommendation:
                reason += f"; highest recommendation in the last {window:g}s: {stabilized}"
    elif asleep:
        reason = f"asleep: backlog {backlog} below activation {wake_at}"
    elif recommendation < current:
        reason = f"hold {current}: {load} asks for {recommendation}; scale-down window {window:g}s"
        if idle_since is not None and low == 0:
            reason += f"; idle {idle_for:.0f}s of {policy.idle_before_zero:g}s before zero"
    elif limited:
        reason = f"hold {current}: {load} asks for {stabilized}; step limit reached for this period"
    elif idle_since is not None and low == 0:
        reason = f"hold {current}: {load}; idle {idle_for:.0f}s of {policy.idle_before_zero:g}s before zero"
    else:
        reason = f"steady: {load}"

    remove = idlest_first(observation.workers, current - desired) if desired < current else ()
    decision = Decision(desired, reason, remove, current, demand, recommendation)
    new_state = QueueState(0, idle_since, recommendations, scale_ups)
    return decision, new_state


def _on_failure(
    observation: QueueObservation, state: QueueState, policy: ScalingPolicy, now: float, low: int, high: int
) -> tuple[Decision, QueueState]:
    """Missing data: never lower replicas; after enough failures in a row, hold the fallback floor."""
    current = observation.replicas
    failures = state.failures + 1
    fallback_active = failures >= max(1, policy.fallback_failure_threshold)
    floor = current
    if fallback_active and policy.fallback_replicas is not None:
        floor = max(current, policy.fallback_replicas)
    desired = min(max(floor, low), high)
    if fallback_active and policy.fallback_replicas is not None:
        reason = f"fallback after {failures} failed observations: at least {policy.fallback_replicas} replicas"
    else:
        reason = f"observation failed ({failures} in a row): holding {current} replicas"
    if desired != current:
        reason += f", now {desired}"
    reason += f"; {observation.error}"
    scale_ups = state.scale_ups
    if desired > current:
        scale_ups = (*tuple(item for item in scale_ups if item[0] > now - policy.scale_up_period), (now, current))
    decision = Decision(
        desired,
        reason,
        idlest_first(observation.workers, current - desired) if desired < current else (),
        current,
        fallback_active=fallback_active,
    )
    # Idle time must be seen without gaps: an outage restarts the idle clock.
    return decision, QueueState(failures, None, state.recommendations, scale_ups)
