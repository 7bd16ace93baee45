"""How long tasks will wait, from a backlog, the workers serving it, the pods starting and what arrives. Pure.

The throughput policy (``decide.py``) asks two things at every poll: what is still waiting when a pod started now
would be ready (``left_when_ready``; nothing: a new pod would arrive after the work, and none is added), and how
long the newest task will wait with the workers there will be (``tail_wait``; shown in the reason, and held to
``targetWaitSeconds``). What users are shown of the waits they get asks one more: how long the oldest waiting task
has waited when its message does not say (``estimated_age``, for ``wait_watch.py``).

**Surges are hedged.** A recent rate (over 2 s) above the usual one (over 30 s) is expected to go on for as long
as it has lasted so far (``surging_for``: since the backlog began), at most one start-up delay, and the usual rate
after that. A 5-second spike of 200 tasks/s is then sized as the 1,000 tasks it brings, not as 200/s for a whole
start-up (the engine before this sent such spikes to ``maxReplicas`` and paid for pods that were ready after the
spike was gone); a flood that lasts has outlasted a start-up after a few polls and is sized at its full rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

HEDGE_FLOOR = 0.5  # a surge is expected to go on for at least this share of the span asked about
# Under a target, the backlog may lag the arrivals by this many start-ups of them, or by this share of what the
# target leaves after a start-up if that is more, but never by more than half of it (``lag_seconds``).
LAG_STARTUPS = 2.0
LAG_SHARE = 0.25
Launches = Sequence[tuple[float, int]]  # (time of a scale-up, pods) whose workers do not report yet


def surge_arrivals(rate: float, recent: float, surging_for: float, span: float) -> float:
    """Tasks expected to arrive over the next ``span`` seconds: the recent rate for as long as the surge has
    lasted so far, the usual rate after."""
    if recent <= rate:
        return rate * span
    hedge = surging_for if surging_for > span * HEDGE_FLOOR else span * HEDGE_FLOOR
    if hedge > span:
        hedge = span
    return recent * hedge + rate * (span - hedge)


def flow_rate(rate: float, recent: float, surging_for: float, startup: float) -> float:
    """The arrival rate to size workers for from one start-up delay on: the usual rate, rising to the recent one
    as the surge outlasts a start-up delay."""
    if recent <= rate:
        return rate
    share = surging_for / startup if startup > 0.0 and surging_for < startup else 1.0
    return rate + (recent - rate) * share


def starting_work(launches: Launches, starting: int, now: float, startup: float, per_worker: float) -> float:
    """Tasks the pods still starting do before a pod started now would be ready: each launch's pods from their
    expected ready time (launch + start-up) on; starting pods of no known launch (a restart) from half a start-up."""
    if starting <= 0:
        return 0.0
    seconds = 0.0
    counted = 0
    for time, pods in launches:
        if counted + pods > starting:
            pods = starting - counted
        serve = now - time
        seconds += pods * (serve if serve < startup else startup)
        counted += pods
    if counted < starting:
        seconds += (starting - counted) * startup * 0.5
    return seconds * per_worker


def tail_wait(ahead: float, rate_now: float, rate_later: float, later_in: float) -> float:
    """Seconds until ``ahead`` tasks are served: at ``rate_now`` tasks/s for ``later_in`` seconds, then at
    ``rate_later`` (inf if nothing ever serves them)."""
    if ahead <= 0.0:
        return 0.0
    if rate_now > 0.0 and ahead <= rate_now * later_in:
        return ahead / rate_now
    if rate_later <= 0.0:
        return math.inf
    return later_in + (ahead - rate_now * later_in) / rate_later


def duty_share(flow: float, per_worker: float, startup: float, gather: float) -> float:
    """Share of the time one worker is needed when it is started only once the oldest waiting task has waited
    ``gather`` seconds, and removed once the queue is empty: it starts (``startup``), then works off what
    gathered while the tasks keep coming. 1.0 when that saves nothing (or the flow needs a worker all along)."""
    load = flow / per_worker if per_worker > 0.0 else 1.0
    if load >= 1.0 or gather <= 0.0:
        return 1.0
    return load + (1.0 - load) * startup / (gather + startup)


class TargetNeed(NamedTuple):
    """Workers a target wait asks for (fractional; compare with a count): ``keep`` serving from now on, ``up``
    once pods started now are ready (counting the serving ones); ``reachable``: whether pods started now can
    still keep the newest waiting task within the target."""

    keep: float
    up: float
    reachable: bool


def for_target(
    queued: float,
    surge: float,
    surge_for: float,
    flow: float,
    per_worker: float,
    active: int,
    starting: int,
    starting_in: float,
    startup: float,
    within: float,
    waited: float,
) -> TargetNeed:
    """The fewest workers that serve every waiting task, and those of the surge, within ``within`` seconds of its
    arrival (first in, first out): the newest task now has ``queued`` tasks ahead of it, the one arriving
    ``surge_for`` seconds from now ``queued + surge`` (``surge``: the tasks expected by then), and the flow after
    that must not outgrow the workers. ``active`` workers serve now, ``starting`` from ``starting_in`` seconds,
    new ones from ``startup``; each serves ``per_worker`` tasks a second.

    Fewer workers (``keep``) must also get through the whole backlog within ``within`` less ``waited``: how long
    the tasks in it have waited when a burst among them makes them all count as old as the oldest (0 otherwise:
    the counts do not say when the tasks between the oldest and the newest came), so that a scale-down does not
    leave them behind.

    A backlog behind a flow may lag it by ``lag_seconds`` of its arrivals: while it holds fewer tasks than that,
    the workers may fall short of the flow by as many as would fill the room left within that lag (the shortfall
    shrinks as the backlog grows, so the backlog nears the lag without passing it), instead of matching the flow
    at once as the defaults do, rounded up. The tasks of such a backlog then count as at least that old
    (``waited``): once the arrivals stop, its newest task may be."""
    keep = flow / per_worker
    if queued > 0.0 and flow > 0.0:
        lag = lag_seconds(within, startup)
        room = flow * lag - queued
        if room > 0.0:
            keep -= room / (per_worker * lag)
            if keep < 0.0:
                keep = 0.0
        if waited < lag:
            waited = lag
    if queued > 0.0 and waited < within:
        floor = queued / (per_worker * (within - waited))
        if floor > keep:
            keep = floor
    up = keep
    reachable = True
    serving = active + starting
    for arrived, ahead in ((0.0, queued), (surge_for, queued + surge)):
        by = arrived + within  # when the task that arrives then must have started
        need = ahead / (per_worker * by) if by > 0.0 else math.inf
        if need > keep:
            keep = need
        served = active * by + (starting * (by - starting_in) if by > starting_in else 0.0)
        if by > startup:
            more = serving + (ahead / per_worker - served) / (by - startup)
            if more > up:
                up = more
        elif ahead > served * per_worker:
            reachable = False  # new pods cannot help that task: too late for it
    return TargetNeed(keep, up, reachable)


def lag_seconds(within: float, startup: float) -> float:
    """Seconds of arrivals a backlog may lag them by under a target that leaves ``within`` seconds to start a task
    (``for_target``): ``LAG_STARTUPS`` start-ups, or ``LAG_SHARE`` of what is left after one start-up if more,
    at most half of that: the other half is what the backlog's tasks still have once its newest is that old."""
    half = (within - startup) * 0.5
    if half <= 0.0:
        return 0.0
    lag = half * 2.0 * LAG_SHARE
    if lag < LAG_STARTUPS * startup:
        lag = LAG_STARTUPS * startup
    return lag if lag < half else half


def starting_in(launches: Launches, starting: int, now: float, startup: float) -> float:
    """Seconds until the pods still starting are ready, on average over them (half a start-up when no launch
    is known for them: a restart)."""
    if starting <= 0:
        return 0.0
    seconds = 0.0
    counted = 0
    for time, pods in launches:
        if counted + pods > starting:
            pods = starting - counted
        left = startup - (now - time)
        seconds += pods * (left if left > 0.0 else 0.0)
        counted += pods
    if counted < starting:
        seconds += (starting - counted) * startup * 0.5
    return seconds / starting


def estimated_age(backlog: int, waiting_for: float, arrival_rate: float) -> float:
    """The oldest waiting task's age when no message says when it was sent (Celery does not stamp messages by
    itself): first in, first out, the tasks waiting are those that came since the oldest did, so at a steady
    arrival rate ``backlog = rate x age``. Never more than ``waiting_for``, how long the backlog has not been
    seen empty (a burst into an empty queue: its age exactly); that alone without a rate (the demand policy
    learns none). 0 when nothing waits."""
    if backlog <= 0:
        return 0.0
    waiting_for = waiting_for if waiting_for > 0.0 else 0.0
    if arrival_rate > 0.0:
        steady = backlog / arrival_rate
        return steady if steady < waiting_for else waiting_for
    return waiting_for
