"""The waits a queue's tasks get, as users are shown them. Pure: the caller hands in each poll with its time.

Per queue, at every poll (``WaitWatch.update``):

- **the oldest waiting task's age**, *measured* from its message's ``timestamp`` property where the observer read it
  (the queues with a target wait; Celery stamps no message by itself, so producers must: docs/operations.md gives
  the one line), else *estimated* (``waits.estimated_age``: first in, first out at the learned arrival rate, never
  more than the time since the backlog was last seen empty). Nothing waiting: 0. Status says which it is.
- **its p95 over the last** :data:`WINDOW` **seconds**, over the polls that found tasks waiting (a poll of an empty
  queue is no sample: a mostly idle queue whose one task waited 30 s shows 30, not 0). Each poll counts once, not
  each task, so it estimates the tasks' p95 wait; samples closer than :data:`SPACING` are merged into their
  highest, which bounds the memory to ``WINDOW / SPACING`` samples per queue (wake-ups may poll four times a
  second). The window lives in the memory of the replica that writes status: a new leader starts it again.
- **whether it keeps its target**: since when the oldest task's age is above ``targetWaitSeconds``
  (``above_since``: when the task crossed it, ``now - (age - target)``; kept in status, so a new leader goes on
  from it), and the target *broken* once that lasts longer than one start-up delay: a pod asked for when the wait
  crossed the target would have been serving by then. A broken target carries why (:class:`Breach`), from the
  poll: the broker cannot be observed (the last age is carried on), scaling is paused, workers that have not
  become ready for a start-up delay (Pending pods, an image that does not pull, a crash loop), ``maxReplicas``
  reached, or else the engine keeping fewer workers than the waits needed.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from workerpool_operator.engine.waits import estimated_age

WINDOW = 300.0  # seconds the p95 is taken over
QUANTILE = 0.95
SPACING = 2.0  # samples closer than this many seconds are merged (their highest age is kept)
MEASURED, ESTIMATED = "Measured", "Estimated"

# Why a queue breaks its target (CamelCase: a condition's reason and an Event's).
REASON_BROKER_DOWN = "RedisUnreachable"
REASON_PAUSED = "ScalingPaused"
REASON_NOT_STARTING = "WorkersNotStarting"
REASON_MAX_REPLICAS = "MaxReplicasReached"
REASON_TOO_FEW = "NotEnoughWorkers"

Change = Literal["broken", "kept"] | None  # what this poll changed: the target broken, kept again, or nothing


class Poll(NamedTuple):
    """One poll of one queue, as the watch reads it (from the observation, the decision and the workload)."""

    at: float
    error: str | None = None  # the observation failed (a short reason)
    backlog: int = 0
    measured: float | None = None  # the oldest task's age from its message (None: not read, or not stamped)
    arrival_rate: float = 0.0  # tasks/s, as the engine learned it
    waiting_since: float | None = None  # the engine's first poll of this backlog (a watch started mid-backlog)
    target: float | None = None  # targetWaitSeconds
    startup: float = 30.0  # seconds a new worker takes to serve (learned, or startupSeconds)
    paused: bool = False
    replicas: int | None = None  # the workload's replicas
    ready: int | None = None  # of those, ready
    desired: int | None = None  # what the engine decided
    max_replicas: int | None = None


class Breach(NamedTuple):
    """Why a queue's target is broken, and the figures, for a condition and an Event."""

    reason: str
    message: str


class Waits(NamedTuple):
    """What users are shown of one queue's waits after a poll."""

    oldest: float | None  # seconds the oldest waiting task has waited (None: unknown)
    source: str | None  # MEASURED or ESTIMATED (None: nothing has waited yet)
    p95: float | None  # over the window's polls that found tasks waiting; 0 when none did; None: never observed
    target: float | None
    above_since: float | None  # unix time the oldest task's age went above the target (None: within it)
    breach: Breach | None  # the target broken (above it for longer than a start-up delay), and why


class WaitWatch:
    """One queue's waits, poll after poll. ``above_since``: from the status a previous leader wrote (a target
    already broken then counts as announced: no second Warning for it)."""

    __slots__ = (
        "_p95",
        "above_since",
        "announced",
        "empty_at",
        "last",
        "not_ready_since",
        "observed",
        "samples",
        "source",
        "within_at",
    )

    def __init__(self, above_since: float | None = None) -> None:
        self.samples: list[tuple[float, float]] | None = None  # (time, oldest age) of polls that found tasks waiting
        self._p95: float | None = None  # cached until the samples change
        self.empty_at: float | None = None  # the last poll that found nothing waiting
        self.last: tuple[float, float] | None = None  # (time, oldest age) of the last poll that worked
        self.source: str | None = None
        self.observed = False
        self.above_since = above_since
        self.within_at: float | None = None  # the last poll that found the oldest within the target
        self.not_ready_since: float | None = None
        self.announced: bool | None = None if above_since is not None else False  # None: resumed, not known yet

    @property
    def idle(self) -> bool:
        """Nothing to remember beyond an empty window: the caller may keep no watch for this queue."""
        return self.samples is None and self.above_since is None and not self.announced

    def update(self, poll: Poll) -> tuple[Waits, Change]:
        """The waits after ``poll``, and whether it broke the target or kept it again."""
        now = poll.at
        age = self._oldest(poll)
        if self.samples is not None and self.samples[0][0] < now - WINDOW:
            self._trim(now)
        if poll.replicas and poll.ready is not None and poll.ready < poll.replicas:
            if self.not_ready_since is None:
                self.not_ready_since = now
        else:
            self.not_ready_since = None
        target = poll.target
        if target is None:
            self.above_since = self.within_at = None
        elif age is not None and age > target:
            if self.above_since is None:
                crossed = now - (age - target)
                self.above_since = crossed if self.within_at is None or crossed > self.within_at else self.within_at
        elif age is not None:
            self.above_since, self.within_at = None, now
        broken = self.above_since is not None and now - self.above_since > poll.startup
        breach = _breach(poll, age, self.source, self.above_since, self.not_ready_since) if broken else None
        change: Change = None
        if broken and not self.announced:
            change = None if self.announced is None else "broken"  # resumed: the previous leader announced it
            self.announced = True
        elif not broken and self.announced:
            change, self.announced = "kept", False
        elif not broken:
            self.announced = False
        waits = Waits(age, self.source, self.p95 if self.observed else None, target, self.above_since, breach)
        return waits, change

    @property
    def p95(self) -> float:
        """The p95 (nearest rank) of the window's samples; 0 without any."""
        if self.samples is None:
            return 0.0
        if self._p95 is None:
            ages = sorted(age for _, age in self.samples)
            self._p95 = ages[math.ceil(QUANTILE * len(ages)) - 1]
        return self._p95

    def _oldest(self, poll: Poll) -> float | None:
        """The oldest task's age now: measured, estimated, 0, or (the broker not answering) the last one carried
        on while tasks were waiting then; recorded as a sample when tasks wait."""
        now = poll.at
        if poll.error is not None:
            if self.last is None or self.last[1] <= 0.0:
                return None  # nothing was waiting, as far as anyone knows
            return self.last[1] + (now - self.last[0])
        self.observed = True
        if poll.backlog <= 0:
            self.empty_at, self.last = now, (now, 0.0)
            return 0.0
        if self.empty_at is None:  # a watch started during a backlog: since the engine first saw it
            self.empty_at = poll.waiting_since if poll.waiting_since is not None else now
        if poll.measured is not None:
            age, self.source = poll.measured, MEASURED
        else:
            age, self.source = estimated_age(poll.backlog, now - self.empty_at, poll.arrival_rate), ESTIMATED
        self.last = (now, age)
        self._sample(now, age)
        return age

    def _sample(self, now: float, age: float) -> None:
        self._p95 = None
        samples = self.samples
        if samples is None:
            self.samples = [(now, age)]
        elif now - samples[-1][0] < SPACING:
            if age > samples[-1][1]:
                samples[-1] = (samples[-1][0], age)
        else:
            samples.append((now, age))

    def _trim(self, now: float) -> None:
        samples = self.samples
        assert samples is not None
        since = now - WINDOW
        first = 0
        while first < len(samples) and samples[first][0] < since:
            first += 1
        del samples[:first]
        self._p95 = None
        if not samples:
            self.samples = None


def _breach(
    poll: Poll, age: float | None, source: str | None, above_since: float | None, not_ready_since: float | None
) -> Breach:
    """Why the target is broken, with the figures that say so."""
    now, target = poll.at, poll.target
    assert target is not None and above_since is not None
    if age is None:
        waited = "tasks wait unseen"
    else:
        how = "carried on from the last poll" if poll.error is not None else (source or ESTIMATED).lower()
        waited = f"the oldest task has waited {age:.0f}s ({how})"
    head = f"{waited}, above the {target:g}s target for {now - above_since:.0f}s"
    replicas, ready = poll.replicas or 0, poll.ready or 0
    if poll.error is not None:
        return Breach(REASON_BROKER_DOWN, f"{head}: the broker cannot be observed ({poll.error})")
    if poll.paused:
        return Breach(REASON_PAUSED, f"{head}: scaling is paused (scaling.paused)")
    if not_ready_since is not None and now - not_ready_since > poll.startup:
        return Breach(
            REASON_NOT_STARTING,
            f"{head}: {replicas - ready} of {replicas} workers not ready for {now - not_ready_since:.0f}s "
            "(Pending, an image that does not pull, a crash loop: kubectl get pods)",
        )
    if poll.max_replicas is not None and poll.desired is not None and poll.desired >= poll.max_replicas:
        return Breach(REASON_MAX_REPLICAS, f"{head}: maxReplicas ({poll.max_replicas}) reached")
    return Breach(REASON_TOO_FEW, f"{head}: the {poll.desired or replicas} workers the engine keeps are too few")
