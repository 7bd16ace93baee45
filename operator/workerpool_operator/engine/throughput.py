"""The throughput policy's figures: how many workers a queue needs now and once a new pod would be ready. Pure.

``sizes`` turns an observation and what the reports taught (``forecast.py``) into the counts ``decide`` chooses
from (``decide._by_throughput``):

- ``keep``: enough workers for the work there is and what arrives over the next start-up delay, the backlog done
  within half a start-up (``capacity``);
- ``up``: the workers needed once a pod started now is ready, for what is still waiting then (``left``): the
  workers ready now and the pods starting work until then, and a surge of arrivals is hedged (``waits.py``). No
  pod is added when ``left`` is nothing: it would only arrive after the work;
- ``zero_after``: how long an idle worker stays: one start-up delay when tasks come more often than that, else
  not at all (an idle worker costs more than a new one once it has idled a start-up);
- with a **target wait** longer than what those sizes give (pods ready in a start-up, the backlog done within half
  a start-up more), the fewest workers that still start every task within it (``waits.for_target``), never more
  than the sizes above: waits grow up to the target and replica-seconds fall as it grows. A backlog behind a flow
  may lag it by a few start-ups of its arrivals (``waits.lag_seconds``): the workers need not match the flow at
  once, rounded up, while it is younger than that. Under such a target an empty queue may let tasks gather until
  a worker must start (``gathering``), and the last worker may go while tasks still flow when it is needed only
  part of the time (``lets_gather``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from workerpool_operator.engine.forecast import DRAIN_SHARE, Learned, capacity
from workerpool_operator.engine.waits import (
    duty_share,
    flow_rate,
    for_target,
    starting_in,
    starting_work,
    surge_arrivals,
)
from workerpool_operator.observation import QueueObservation

if TYPE_CHECKING:
    from workerpool_operator.engine.policy import ScalingPolicy

POLL_GUESS = 2.0  # seconds between polls, until two polls tell
GATHER_POLLS = 2  # under a target, a worker starts this many polls before the oldest task must
DUTY_WORTH = 0.8  # under a target, the last worker goes while tasks flow when it is needed at most this share
BUNCHED = 1.5  # a backlog above this many times what the usual rate brought since the oldest came is a burst
_new = tuple.__new__  # a NamedTuple built in C, every field in order (tests/test_engine_builds.py checks each build)


class Sizes(NamedTuple):
    keep: int  # workers for what there is, serving from now
    up: int  # workers once a pod started now is ready
    left: float  # tasks still waiting then, with the workers ready now and the pods starting
    zero_after: float  # seconds an idle queue keeps its workers
    target: float | None  # the target wait the sizes follow (None: none, or not longer than the defaults give)
    poll: float  # seconds since the last poll
    bunched: float  # how old the backlog counts as: the oldest's wait when a burst is in it, else 0
    flow: float  # arrivals per second to size for from a start-up on
    rate: float  # the usual arrival rate
    coming: float  # the arrival rate the workers there are sized for
    per_worker: float  # tasks per second one worker does
    task_seconds: float
    slots: int
    backlog: int
    in_flight: int
    work: int  # backlog + in flight
    ahead: int  # waiting tasks no free slot takes now

    @property
    def figures(self) -> str:
        """The numbers, for a reason (formatted only when a reason says them)."""
        return (
            f"backlog {self.backlog}, in-flight {self.in_flight}, arrivals {self.coming:.2f}/s, "
            f"{self.task_seconds:.3g}s per task, {self.slots} per worker"
        )


def sizes(
    observation: QueueObservation,
    backlog_before: int,
    polled: float | None,
    policy: ScalingPolicy,
    now: float,
    active: int,
    starting: int,
    learned: Learned,
    startup: float,
    waited: float | None,
    surging: float,
) -> Sizes:
    """The figures for one queue at one poll. ``backlog_before`` and ``polled``: the backlog and the time of the
    last poll; ``waited``: the longest any waiting task can have waited (None: unknown, or nothing waits);
    ``surging``: how long arrivals have run above their usual rate."""
    task_seconds = learned.busy / learned.completed if learned.completed > 0.0 and learned.busy > 0.0 else 0.0
    if not task_seconds > 0.0:  # nothing learned, or busy time so small that the quotient underflows to 0
        task_seconds = 1.0
    rate = learned.arrival_rate if learned.arrival_rate > 0.0 else 0.0
    recent = learned.recent_rate if learned.recent_rate > 0.0 else 0.0
    slots = policy.target_per_replica if policy.target_per_replica > 0 else 1
    per_worker = slots / task_seconds
    backlog = observation.backlog if observation.backlog > 0 else 0
    poll = now - polled if polled is not None and now > polled else POLL_GUESS
    if poll > startup > 0.0:
        poll = startup
    if surging:  # what came since the last poll, from the backlog (read fresh; the reports lag): a surge that
        # stopped is seen at once, where the smoothed recent rate would still carry it for a few polls
        grew = (backlog - backlog_before) / poll + active * per_worker
        if grew < recent:
            recent = grew if grew > rate else rate
    in_flight = observation.in_flight if observation.in_flight > 0 else 0
    work = backlog + in_flight
    running = learned.running if learned.running < work else work
    queued = work - running
    coming = recent if recent > rate and backlog else rate  # with nothing waiting, the recent rate is noise
    keep = math.ceil(capacity(queued, running, coming, task_seconds, slots, startup) - 1e-9)
    # (the helpers of waits.py, called only where they have something to weigh: decide runs for every queue)
    left = queued - active * per_worker * startup
    if recent > rate:
        left += surge_arrivals(rate, recent, surging, startup)
        flow = flow_rate(rate, recent, surging, startup)
    else:
        left += rate * startup
        flow = rate
    if starting:
        left -= starting_work(learned.launches, starting, now, startup, per_worker)
    up = math.ceil(capacity(left if left > 0 else 0.0, running, flow, task_seconds, slots, startup) - 1e-9)
    target = policy.target_wait
    if target is not None and target <= startup + max(startup * DRAIN_SHARE, task_seconds) + poll:
        target = None  # the defaults already keep waits within it
    # How old the waiting tasks are: spread over the time since the oldest came when the usual rate explains the
    # backlog; else taken as old as the oldest (a burst among them: the counts do not say when it came).
    bunched = 0.0 if waited is None or queued <= BUNCHED * rate * waited else waited
    if target is not None:
        if not backlog and recent < rate:  # nothing waits and the arrivals fall: a target can wait for them
            keep = math.ceil(capacity(queued, running, recent, task_seconds, slots, startup) - 1e-9)
            flow = recent
        hedge = surging if surging < startup else startup
        need = for_target(
            queued, surge_arrivals(rate, recent, surging, hedge), hedge, flow, per_worker, active, starting,
            starting_in(learned.launches, starting, now, startup), startup, target - poll, bunched,
        )  # fmt: skip
        if need.keep < keep:
            keep = math.ceil(need.keep - 1e-9)
        if need.reachable and need.up < up:
            up = math.ceil(need.up - 1e-9)
    zero_after = startup if rate * startup > 1.0 else 0.0
    if zero_after > policy.idle_before_zero:
        zero_after = policy.idle_before_zero
    free = active * slots - running
    return _new(
        Sizes,
        (keep, up, left, zero_after, target, poll, bunched, flow, rate, coming, per_worker, task_seconds, slots,
         backlog, in_flight, work, queued - free if queued > free else 0),
    )  # fmt: skip


def gathering(z: Sizes, waited: float, startup: float) -> bool:
    """With no worker serving, whether tasks may still gather: one worker started at the next poll still starts
    the oldest and the newest task within the target."""
    target = z.target
    if target is None:
        return False
    gather = target - GATHER_POLLS * z.poll - startup
    return waited <= gather and z.work + z.flow * (z.poll + startup) <= z.per_worker * (gather - z.bunched)


def lets_gather(z: Sizes, startup: float) -> bool:
    """Whether the last worker may go while tasks flow: started again only once the oldest task must start,
    it is needed at most ``DUTY_WORTH`` of the time."""
    if z.target is None:
        return False
    return duty_share(z.flow, z.per_worker, startup, z.target - startup - GATHER_POLLS * z.poll) < DUTY_WORTH
