"""The scaling engine: how many workers each queue needs. Pure and deterministic: no I/O, no clock.

``decide(observation, state, policy, now) -> (decision, new_state)``. The caller passes the time and keeps the
state (the operator persists it in the WorkerPool status through ``to_dict`` / ``from_dict``), so the same inputs
always give the same outputs, and a restart of the operator changes no decision.

Two policies (``scaling.policy``; docs/simulator.md measures both against KEDA's):

- ``throughput`` (the default) knows time. From the worker reports it learns how long a task holds a slot,
  how fast tasks arrive and how long a new worker takes to start (``forecast.py``; until it has data it
  uses ``demand``, and the spec's ``startupSeconds``). It adds workers only when the ones running will not
  have finished the work before a new one would be ready, and then enough at once, without a step limit;
  it keeps a worker no longer than that worker's start-up would take to undo (the scale-down window is the
  start-up delay, at most ``scale_down_window``).
- ``demand``: recommendation = ceil((backlog + in flight) / target per replica), clamped to [min, max] and,
  while the queue is awake, never below 1; up at once but at most max(scale_up_pods, scale_up_percent %)
  more than at the start of the last ``scale_up_period`` (HPA's rate limit); down to the highest
  recommendation inside the last ``scale_down_window`` (HPA's stabilization); a fresh state counts the
  current replicas as a recommendation made now, so a restart never scales down at once.

Both: to zero only after no backlog and nothing in flight for ``idle_before_zero``; from zero once the backlog
reaches ``activation_backlog``; ``schedules`` hold a floor of workers in cron windows, from one start-up delay
before each window (``schedules.py``); a failed observation never lowers replicas, and after
``fallback_failure_threshold`` failures in a row the fallback holds at least ``fallback_replicas``; ``paused``:
replicas stay as they are. Scale-downs drain workers instead of killing them (``drain.py``): the workers
leave once idle, or after ``drain_timeout``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, Literal, NamedTuple

from mypy_extensions import mypyc_attr

from workerpool_operator.engine import drain, spikes
from workerpool_operator.engine.forecast import MIN_COMPLETED, Learned, drain_seconds, learn, with_launch
from workerpool_operator.engine.policy import DEMAND, POLICIES, THROUGHPUT, ScalingPolicy
from workerpool_operator.engine.schedules import cron_windows, floor
from workerpool_operator.engine.spikes import Spike
from workerpool_operator.engine.throughput import GATHER_POLLS, POLL_GUESS, Sizes, gathering, lets_gather, sizes
from workerpool_operator.engine.waits import tail_wait
from workerpool_operator.observation import QueueObservation

__all__ = ["DEMAND", "POLICIES", "THROUGHPUT", "Decision", "QueueState", "ScalingPolicy", "Stamped", "decide"]

SCHEDULE_MARGIN = 10.0  # seconds added to the start-up delay when a schedule's floor is applied ahead
RESTART_GAP = 30.0  # seconds without a decision after which the scale-down window starts again from what runs


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
    # What the reports taught about this queue (task seconds, arrival rate, start-up delay).
    learned: Learned = Learned()
    # Busy workers asked to stop consuming for a while, so that what they prefetched goes back to the queue
    # (long tasks: a prefetched task would wait a whole task behind them); taken back when a slot frees.
    handing_back: tuple[str, ...] = ()
    # Per source of announced fires (Celery beat's periodic tasks): the fire watched and the demand each brings.
    spikes: tuple[Spike, ...] = ()
    # Workers a scale-down removed by name that still report (their pods terminate): no longer counted, and
    # their drain requests stay, so that none takes a task between the scale-down and its SIGTERM.
    leaving: tuple[str, ...] = ()
    # The first poll that saw tasks waiting since the backlog was last seen empty (None: empty now): no task
    # waiting now has waited longer than since the poll before it.
    waiting_since: float | None = None
    # The first poll of the current surge: arrivals over the last seconds above the usual rate (None: no surge).
    surging_since: float | None = None
    backlog: int = 0  # the backlog at the last poll (how fast it grew says whether a surge goes on)

    def to_dict(self) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "idleSince": self.idle_since,
            "recommendations": [[t, r] for t, r in self.recommendations],
            "scaleUps": [[t, r] for t, r in self.scale_ups],
            "draining": [[w, t] for w, t in self.draining],
            "learned": self.learned.to_dict(),
            "handingBack": list(self.handing_back),
            "spikes": spikes.to_list(self.spikes),
            "leaving": list(self.leaving),
            "waitingSince": self.waiting_since,
            "surgingSince": self.surging_since,
            "backlog": self.backlog,
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
        waiting_since = data.get("waitingSince")
        if waiting_since is not None:
            waiting_since = _number(waiting_since, "waitingSince")
        surging_since = data.get("surgingSince")
        if surging_since is not None:
            surging_since = _number(surging_since, "surgingSince")
        return cls(
            failures=failures,
            idle_since=idle_since,
            recommendations=_stamps(data.get("recommendations", ()), "recommendations"),
            scale_ups=_stamps(data.get("scaleUps", ()), "scaleUps"),
            draining=_draining(data.get("draining", ())),
            learned=Learned.from_dict(data.get("learned")),
            handing_back=_names(data.get("handingBack", ()), "handingBack"),
            spikes=spikes.from_list(data.get("spikes", ())),
            leaving=_names(data.get("leaving", ()), "leaving"),
            waiting_since=waiting_since,
            surging_since=surging_since,
            backlog=_count(data.get("backlog", 0), "backlog"),
        )


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"scaling state: {name} must be a non-negative integer, got {value!r}")
    return value


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


def _names(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"scaling state: {name} must be a list of worker names, got {value!r}")
    return tuple(value)


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


# A decision's reason, or how to write it: a formatter and its arguments, called only when the reason is read.
# decide() runs for every queue at every poll, and formatting its figures cost about a tenth of it (issue 22).
Why = str | tuple[Callable[..., str], tuple[Any, ...]]


def text(why: Why) -> str:
    """The reason a ``Why`` stands for."""
    return why if isinstance(why, str) else why[0](*why[1])


class _DecisionFields(NamedTuple):
    desired_replicas: int
    why: Why  # the reason, or how to write it (read ``reason``)
    remove_first: tuple[str, ...] = ()  # when scaling down: workers to remove, idlest first
    current_replicas: int = 0
    demand: int | None = None  # backlog + in flight; None when the observation failed or scaling is paused
    recommendation: int | None = None  # what the demand alone asks for, before window and step limit
    fallback_active: bool = False  # enough failed observations in a row for the fallback to apply
    paused: bool = False
    drain: tuple[str, ...] = ()  # workers to ask to stop taking tasks (they finish what they run)
    undrain: tuple[str, ...] = ()  # draining workers to take back into service
    # Seconds the newest waiting task is predicted to wait with the decided workers (throughput policy, once it
    # knows the task duration; None otherwise), and the target it is held to (None: no target).
    predicted_wait: float | None = None
    target_wait: float | None = None


@mypyc_attr(native_class=False)  # compiled (setup.py): a NamedTuple's subclass stays a Python class
class Decision(_DecisionFields):
    """What to do with one queue, and why. (Immutable; a NamedTuple for speed, as ``QueueState``.)

    ``reason`` is one line a human can read, for status, Events and logs; the engine leaves it unformatted
    (``why``) until it is read. Built as ``Decision(desired, reason, ...)``, ``reason`` a string or a ``Why``."""

    __slots__ = ()

    def __new__(
        cls,
        desired_replicas: int,
        reason: Why,
        remove_first: tuple[str, ...] = (),
        current_replicas: int = 0,
        demand: int | None = None,
        recommendation: int | None = None,
        fallback_active: bool = False,
        paused: bool = False,
        drain: tuple[str, ...] = (),
        undrain: tuple[str, ...] = (),
        predicted_wait: float | None = None,
        target_wait: float | None = None,
    ) -> Decision:
        return tuple.__new__(
            cls,
            (desired_replicas, reason, remove_first, current_replicas, demand, recommendation, fallback_active,
             paused, drain, undrain, predicted_wait, target_wait),
        )  # fmt: skip

    @property
    def reason(self) -> str:
        why = self.why
        return why if isinstance(why, str) else why[0](*why[1])

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


_draining_flag = attrgetter("draining")
_stopping_flag = attrgetter("stopping")
_reserved = attrgetter("reserved")


def _without_stopping(observation: QueueObservation) -> QueueObservation:
    """The observation without its stopping workers, nor their tasks in flight."""
    stopping = [w for w in observation.workers if w.stopping]
    held = sum(w.running + w.reserved for w in stopping)
    kept = tuple(w for w in observation.workers if not w.stopping)
    return dataclasses.replace(observation, workers=kept, in_flight=max(0, observation.in_flight - held))


# NamedTuple's generated __new__ is Python code; tuple.__new__ builds the same object in C. decide() makes a few
# of these per queue per poll, so it builds them this way (every field, in order: tests/test_engine_builds.py).
_new = tuple.__new__


class _Wanted(NamedTuple):
    """What a policy asks for: workers serving (not draining), and why."""

    workers: int
    why: Why
    recommendation: int
    recommendations: tuple[Stamped, ...]
    wait: float | None  # the newest waiting task's predicted wait (None: no prediction)


def decide(
    observation: QueueObservation, state: QueueState, policy: ScalingPolicy, now: float
) -> tuple[Decision, QueueState]:
    """How many replicas the queue should have now, and the state to pass to the next call.

    One function, longer than the project's 80 lines, on purpose: it runs for every due queue at every tick, and
    each helper call it saves counts. bench/bench_engine.py measures 10,000 queues in every situation (half on
    each policy): about 70 ms best on a quiet shared 2-core machine (docs/benchmarks.md), against a 50 ms target
    it still misses. Split further, it would be slower.
    """
    current = observation.replicas
    if policy.paused:
        return Decision(current, f"paused: holding {current} replicas", (), current, paused=True), state
    low = policy.min_replicas
    high = policy.max_replicas if policy.max_replicas > low else low
    if observation.error is not None:
        return _on_failure(observation, state, policy, now, low, high)

    workers = reported = observation.workers  # what the forecast learns from: leaving workers' work counts too
    leaving = state.leaving
    if leaving:  # removed: not part of the replicas any more, whatever they report until they exit
        reporting_names = {w.worker for w in workers}
        leaving = tuple(name for name in leaving if name in reporting_names)
        workers = tuple(w for w in workers if w.worker not in leaving)
    flagged = False  # whether a worker reports stopping or draining (rare): one loop for both; a loop over the
    for worker in workers:  # slots costs a third of any(map(attrgetter)) in CPython 3.11, and this runs always
        if worker.stopping or worker.draining:
            flagged = True
            break
    if flagged and any(map(_stopping_flag, workers)):
        # Stopping (SIGTERM: replaced by a rollout, evicted): not part of the replicas any more (the Deployment counts
        # their replacements), and what they run is theirs to finish, not demand for the others.
        observation = _without_stopping(observation)
        workers = tuple(w for w in workers if not w.stopping)
    draining = state.draining
    if (
        not current
        and not workers
        and not leaving
        and not draining
        and not policy.schedules
        and not observation.fires
        and not state.spikes
        and observation.backlog < policy.activation_backlog
        and state.learned.at is None
        and not state.learned.launches
        and low == 0
    ):  # asleep, and staying so: the common case of many queues, kept cheap
        return _stay_asleep(observation, state, policy)
    handing = state.handing_back
    if draining or handing or (flagged and any(map(_draining_flag, workers))):
        draining = drain.still_draining(workers, draining, now, handing)
    serving = current - len(draining)
    reporting = len(workers)
    starting = current - reporting if current > reporting else 0
    backlog = observation.backlog if observation.backlog > 0 else 0
    in_flight = observation.in_flight if observation.in_flight > 0 else 0
    demand = backlog + in_flight
    remembered = state.spikes
    if observation.fires or remembered:
        remembered = spikes.learn(remembered, observation.fires, demand, now)
    learned = state.learned
    if policy.policy != DEMAND:  # the demand policy uses none of it
        learned = learn(learned, reported, demand, starting, now)
    idle_since = state.idle_since
    if demand:
        idle_since = None
    elif idle_since is None:
        idle_since = now
    waiting_since = state.waiting_since
    if not backlog:
        waiting_since = None
    elif waiting_since is None:
        waiting_since = now
    surging_since = state.surging_since
    if not backlog or learned.recent_rate <= learned.arrival_rate:  # the workers keep up, or the rate is usual
        surging_since = None
    elif surging_since is None:
        surging_since = now
    startup = learned.startup if learned.startup is not None else policy.startup_seconds
    if policy.policy == DEMAND or learned.completed < MIN_COMPLETED or learned.busy <= 0:
        wanted = _by_demand(observation, state, policy, now, serving, idle_since, low, high)
    else:
        waited = observation.oldest_age
        surging = 0.0
        polled = state.learned.at
        if backlog and polled is not None:
            if waited is None and waiting_since is not None:
                waited = now - polled if waiting_since == now else now - waiting_since + POLL_GUESS
            if surging_since is not None:
                surging = now - surging_since + (now - polled)  # it began after the poll before
        wanted = _by_throughput(
            observation, state, policy, now, serving, reporting - len(draining), starting, learned, startup,
            idle_since, low, high, waited, surging,
        )  # fmt: skip
    workers_wanted, why, recommendation, recommendations, wait = wanted
    if policy.schedules or observation.fires:
        workers_wanted, why = _scheduled(policy, observation, remembered, now, startup, workers_wanted, why, high)

    plan: drain.Plan | None = None
    remove_first: tuple[str, ...]
    to_drain: tuple[str, ...]
    to_undrain: tuple[str, ...]
    if not draining and workers_wanted >= current:  # nothing to drain or remove: add, or not (no Plan to build)
        desired, remove_first, to_drain, to_undrain, added = workers_wanted, (), (), (), workers_wanted - current
    else:
        plan = drain.plan(workers_wanted, current, workers, draining, policy.drain_timeout, now)
        desired, remove_first, to_drain, to_undrain, draining, added, _, _ = plan
        if to_drain or to_undrain or plan.note:
            why = (_with_plan, (why, plan))
    scale_ups = state.scale_ups
    if scale_ups and scale_ups[0][0] <= now - policy.scale_up_period:  # times rise: a few at most
        scale_ups = tuple(item for item in scale_ups if item[0] > now - policy.scale_up_period)
    if added:
        if policy.policy != DEMAND:
            learned = with_launch(learned, now, added, reported)
        scale_ups = (*scale_ups, (now, serving))
    held = None
    if learned.running and policy.drain_timeout > 0 and policy.policy != DEMAND and learned.busy > 0:
        # learned.held_seconds, inline: task seconds, or before any finished how long the running ones have run
        held = learned.busy / (
            learned.completed if learned.completed >= MIN_COMPLETED else learned.completed + learned.running
        )
    if handing or (held is not None and held >= drain.HAND_BACK_AFTER and any(map(_reserved, workers))):
        # (no worker holds prefetched tasks and none hands back: nothing to hand back, nothing to take back)
        if plan is None:
            plan = _new(drain.Plan, (desired, remove_first, to_drain, to_undrain, draining, added, 0, ""))
        handing, hand, take = drain.hand_back(workers, handing, plan, held, policy)
        if hand or take:
            to_drain, to_undrain = to_drain + hand, to_undrain + take
            if hand:
                why = (
                    f"{text(why)}; {len(hand)} busy worker{'s' if len(hand) > 1 else ''} hand back what they prefetched"
                )
    decision = _new(
        Decision,
        (desired, why, remove_first, current, demand, recommendation, False, False, to_drain, to_undrain, wait,
         policy.target_wait),
    )  # fmt: skip
    if remove_first and desired < current and policy.drain_timeout > 0:
        leaving = leaving + remove_first  # drained: their requests must outlast them (no draining: none)
    return decision, _new(
        QueueState,
        (0, idle_since, recommendations, scale_ups, draining, learned, handing, remembered, leaving, waiting_since,
         surging_since, backlog),
    )  # fmt: skip


def _stay_asleep(
    observation: QueueObservation, state: QueueState, policy: ScalingPolicy
) -> tuple[Decision, QueueState]:
    why = (_asleep, (observation.backlog, policy.activation_backlog if policy.activation_backlog > 1 else 1))
    demand = observation.backlog + observation.in_flight
    asleep = QueueState(0, state.idle_since if not demand else None, (), state.scale_ups, (), state.learned, (), ())
    return _new(Decision, (0, why, (), 0, demand, 0, False, False, (), (), None, None)), asleep


def _asleep(backlog: int, wake_at: int) -> str:
    return f"asleep: backlog {backlog} below activation {wake_at}"


def _scheduled(
    policy: ScalingPolicy,
    observation: QueueObservation,
    remembered: tuple[Spike, ...],
    now: float,
    startup: float,
    wanted: int,
    why: Why,
    high: int,
) -> tuple[int, Why]:
    """The floor of the schedules and of the announced fires, from one start-up delay (and a margin) before each
    window opens; a fire's window is sized from the demand its source brought last time."""
    lead = startup + SCHEDULE_MARGIN
    windows = cron_windows(policy.schedules, now, lead) if policy.schedules else ()
    if observation.fires:
        windows += spikes.windows(remembered, observation.fires)
    target = policy.target_per_replica if policy.target_per_replica > 0 else 1
    scheduled, window = floor(windows, now, lead, size=lambda tasks: -(-tasks // target))
    if window is None or wanted >= scheduled or wanted >= high:
        return wanted, why
    opens = "open" if now >= window.start else f"opens in {window.start - now:.0f}s"
    return min(scheduled, high), (_with_schedule, (window.source, opens, scheduled, why))


def _with_schedule(source: str, opens: str, scheduled: int, why: Why) -> str:
    return f"schedule {source!r} ({opens}): at least {scheduled} workers; {text(why)}"


def _with_plan(why: Why, plan: drain.Plan) -> str:
    reason = text(why)
    if plan.drain:
        reason += f"; drain {len(plan.drain)} ({', '.join(plan.drain)})"
    if plan.undrain:
        reason += f"; take back {len(plan.undrain)} draining"
    if plan.note:
        reason += f"; {plan.note}"
    return reason


def _stabilize(
    recommendations: tuple[Stamped, ...], recommendation: int, serving: int, high: int, window: float, now: float
) -> tuple[int, tuple[Stamped, ...]]:
    """The highest recommendation inside the window (this one included), and the window's new contents:
    times rising, values falling. A fresh state, or one last written more than ``RESTART_GAP`` ago (a
    restart, an outage), counts ``serving`` as a recommendation made now: no scale-down at once after it."""
    if window <= 0:
        return recommendation, ()
    if serving == 0:  # asleep or waking: what was recommended before the queue slept is stale
        return recommendation, ((now, recommendation),)
    # (conditional expressions rather than min/max, and a tuple concatenation in the common case where nothing
    # is dropped: the same values, at half the cost; this runs for every queue at every poll)
    if not recommendations or now - recommendations[-1][0] > (window if window > RESTART_GAP else RESTART_GAP):
        recommendations = ((now, serving if serving < high else high),)
    elif recommendations[0][0] <= now - window:  # times rise along the tuple
        since = now - window
        first = 1
        while first < len(recommendations) and recommendations[first][0] <= since:
            first += 1
        recommendations = recommendations[first:]
    if not recommendations:
        return recommendation, ((now, recommendation),)
    highest = recommendations[0][1]
    stabilized = highest if highest > recommendation else recommendation
    if recommendations[-1][1] > recommendation:  # values fall along the tuple: every one stays
        return stabilized, recommendations + ((now, recommendation),)  # noqa: RUF005 (faster than *)
    kept = len(recommendations) - 1
    while kept and recommendations[kept - 1][1] <= recommendation:
        kept -= 1
    return stabilized, recommendations[:kept] + ((now, recommendation),)  # noqa: RUF005 (faster than *)


def _awake_bounds(
    recommendation: int, serving: int, backlog: int, policy: ScalingPolicy, low: int, high: int
) -> tuple[int, bool, int]:
    """(recommendation within bounds, asleep, wake threshold): awake, never below one."""
    wake_at = policy.activation_backlog if policy.activation_backlog > 1 else 1
    if serving == 0 and backlog < wake_at:
        return low, True, wake_at
    if recommendation < 1:
        recommendation = 1
    if recommendation < low:
        recommendation = low
    return (recommendation if recommendation < high else high), False, wake_at


def _by_demand(
    observation: QueueObservation,
    state: QueueState,
    policy: ScalingPolicy,
    now: float,
    current: int,
    idle_since: float | None,
    low: int,
    high: int,
) -> _Wanted:
    """ceil(demand / target), HPA's window and step limit. ``current``: the workers serving."""
    target = policy.target_per_replica if policy.target_per_replica > 0 else 1
    backlog = observation.backlog if observation.backlog > 0 else 0
    in_flight = observation.in_flight if observation.in_flight > 0 else 0
    recommendation, asleep, wake_at = _awake_bounds(
        -(-(backlog + in_flight) // target), current, backlog, policy, low, high
    )
    window = policy.scale_down_window
    stabilized, recommendations = _stabilize(state.recommendations, recommendation, current, high, window, now)

    limited = False
    desired = stabilized
    if stabilized > current:
        period_start = current  # the replicas when the current scale-up period began
        since = now - policy.scale_up_period
        for time, before in state.scale_ups:
            if time > since and before < period_start:
                period_start = before
        limit = max(
            period_start + policy.scale_up_pods,
            -(-period_start * (100 + policy.scale_up_percent) // 100),
            current,  # replicas added outside the engine's count: never let the limit scale down
            1,
        )
        limited = stabilized > limit
        desired = limit if limited else stabilized
    idle_for = 0.0 if idle_since is None else now - idle_since
    to_zero = low == 0 and current > 0 and idle_since is not None and idle_for >= policy.idle_before_zero
    if to_zero:
        desired = 0
    desired = low if desired < low else high if desired > high else desired  # (high >= low; no min/max calls)

    why = (
        _demand_reason,
        (desired, current, backlog, in_flight, target, wake_at, stabilized, recommendation, limited, to_zero, asleep,
         idle_since is not None and low == 0, idle_for, low, high, window, policy),
    )  # fmt: skip
    return _new(_Wanted, (desired, why, recommendation, recommendations, None))


def _demand_reason(
    desired: int,
    current: int,
    backlog: int,
    in_flight: int,
    target: int,
    wake_at: int,
    stabilized: int,
    recommendation: int,
    limited: bool,
    to_zero: bool,
    asleep: bool,
    idling: bool,
    idle_for: float,
    low: int,
    high: int,
    window: float,
    policy: ScalingPolicy,
) -> str:
    """The demand policy's reason (``_by_demand``), written when read."""
    load = f"backlog {backlog}, in-flight {in_flight}, target {target} per replica"
    if desired > current:
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
        if idling:
            reason += f"; idle {idle_for:.0f}s of {policy.idle_before_zero:g}s before zero"
    elif limited:
        reason = f"hold {current}: {load} asks for {stabilized}; step limit reached for this period"
    elif idling:
        reason = f"hold {current}: {load}; idle {idle_for:.0f}s of {policy.idle_before_zero:g}s before zero"
    else:
        reason = f"steady: {load}"
    return reason


def _by_throughput(
    observation: QueueObservation,
    state: QueueState,
    policy: ScalingPolicy,
    now: float,
    serving: int,
    active: int,
    starting: int,
    learned: Learned,
    startup: float,
    idle_since: float | None,
    low: int,
    high: int,
    waited: float | None,
    surging: float,
) -> _Wanted:
    """Enough workers for the work there is and what arrives before another pod could start, within the target
    wait if there is one (throughput.py, waits.py); no pod that would be ready only after the work."""
    z = sizes(observation, state.backlog, state.learned.at, policy, now, active, starting, learned, startup, waited,
              surging)  # fmt: skip
    target, poll, backlog = z.target, z.poll, z.backlog
    keep, asleep, wake_at = _awake_bounds(z.keep, serving, backlog, policy, low, high)
    window = policy.scale_down_window if policy.scale_down_window < startup else startup
    stabilized, recommendations = _stabilize(state.recommendations, keep, serving, high, window, now)
    idle_for = 0.0 if idle_since is None else now - idle_since
    why: Why
    told = False  # whether the reason already says the predicted wait
    if low == 0 and serving > 0 and idle_since is not None and idle_for >= z.zero_after:
        wanted, wait = 0, 0.0
        why = f"scale to zero: no backlog and nothing in flight for {idle_for:.0f}s"
        if z.zero_after < policy.idle_before_zero:
            why += f" (a new worker in {startup:.0f}s costs less than an idle one waiting for the next task)"
    elif asleep:
        wanted, wait = low, 0.0
        why = (_asleep, (backlog, wake_at))
    elif serving == 0 and waited is not None and gathering(z, waited, startup):
        wanted, wait = 0, waited + startup
        why = (
            f"gather: backlog {backlog}, waited at most {waited:.0f}s; a worker started within "
            f"{(target or 0.0) - waited - startup - GATHER_POLLS * poll:.0f}s keeps the wait within {target:g}s"
        )
    elif serving == 0 or (z.up > serving and z.left > 0):
        wanted = z.up if z.up > 1 else 1
        wait = (
            startup + tail_wait(z.ahead, 0.0, wanted * z.per_worker, 0.0)
            if serving == 0
            else tail_wait(z.ahead, active * z.per_worker, wanted * z.per_worker, startup)
        )
        why = (_scale_up_reason, (wanted, z, startup))
    else:
        wanted, wait, why, told = _serving(z, serving, active, starting, keep, stabilized, window, low, startup)
    if policy.target_wait is not None and backlog and not told:
        why = (_with_wait, (why, wait, policy.target_wait))
    wanted = low if wanted < low else high if wanted > high else wanted  # (high >= low; no min/max calls)
    return _new(_Wanted, (wanted, why, keep, recommendations, wait))


def _scale_up_reason(wanted: int, z: Sizes, startup: float) -> str:
    return (
        f"scale up to {wanted}: {z.figures}; {z.left:.0f} tasks still there when a new worker is ready in "
        f"{startup:.0f}s"
    )


def _with_wait(why: Why, wait: float, limit: float) -> str:
    return f"{text(why)}; predicted wait {wait:.0f}s {'<=' if wait <= limit else '>'} {limit:g}s"


def _serving(
    z: Sizes,
    serving: int,
    active: int,
    starting: int,
    keep: int,
    stabilized: int,
    window: float,
    low: int,
    startup: float,
) -> tuple[int, float, Why, bool]:
    """Workers serve and none is added: how many stay, the newest task's predicted wait, why, and whether the
    reason says that wait."""
    wanted = stabilized if stabilized < serving else serving
    if wanted < z.up:
        wanted = z.up
    wait = (
        tail_wait(z.ahead, active * z.per_worker, wanted * z.per_worker, startup if starting else 0.0)
        if z.ahead
        else 0.0
    )
    target, backlog = z.target, z.backlog
    if target is not None and low == 0 and wanted <= 1 and not backlog and lets_gather(z, startup):
        return 0, wait, (_gather_reason, (z, startup, target)), False
    if wanted < serving:
        return wanted, wait, (_scale_down_reason, (wanted, z, keep, stabilized, window)), False
    if target is not None and backlog:
        return wanted, wait, (_hold_wait_reason, (serving, backlog, wait, target)), True
    if (z.work and z.up <= serving < keep) or z.left <= 0 < z.up - serving:
        return wanted, wait, (_hold_drain_reason, (z, serving, active, startup)), False
    return wanted, wait, (_steady_reason, (z, serving)), False


# The throughput policy's reasons (``_serving``), written when read.


def _gather_reason(z: Sizes, startup: float, target: float) -> str:
    gather = target - startup - GATHER_POLLS * z.poll
    return (
        f"scale to zero: {z.figures}; tasks may gather for {gather:.0f}s before a worker must start "
        f"(target {target:g}s)"
    )


def _scale_down_reason(wanted: int, z: Sizes, keep: int, stabilized: int, window: float) -> str:
    reason = f"scale down to {wanted}: {z.figures} need {keep}"
    if stabilized > keep:
        reason += f"; highest need in the last {window:.0f}s: {stabilized}"
    return reason


def _hold_wait_reason(serving: int, backlog: int, wait: float, target: float) -> str:
    sign = "<=" if wait <= target else ">"
    return f"hold {serving}: backlog {backlog}, predicted wait {wait:.0f}s {sign} {target:g}s with {serving} workers"


def _hold_drain_reason(z: Sizes, serving: int, active: int, startup: float) -> str:
    took = drain_seconds(z.work, z.rate, z.task_seconds, z.slots, active or 1)
    return (
        f"hold {serving}: backlog {z.backlog} + in-flight {z.in_flight} done in {took:.0f}s by {active} workers; "
        f"a new worker needs {startup:.0f}s"
    )


def _steady_reason(z: Sizes, serving: int) -> str:
    return f"steady: {z.figures}; {serving} workers"


def _on_failure(
    observation: QueueObservation, state: QueueState, policy: ScalingPolicy, now: float, low: int, high: int
) -> tuple[Decision, QueueState]:
    """Missing data: never lower replicas; after enough failures in a row, hold the fallback floor."""
    current = observation.replicas
    failures = state.failures + 1
    fallback_active = failures >= max(1, policy.fallback_failure_threshold)
    floor_replicas = current
    if fallback_active and policy.fallback_replicas is not None:
        floor_replicas = max(current, policy.fallback_replicas)
    desired = min(max(floor_replicas, low), high)
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
    decision = Decision(desired, reason, (), current, fallback_active=fallback_active)
    # Idle time must be seen without gaps: an outage restarts the idle clock.
    return decision, state._replace(failures=failures, idle_since=None, scale_ups=scale_ups)  # drains kept
