"""What the engine learns from the worker reports, and how many workers that says a queue needs. Pure.

``learn`` turns two observations in a row into estimates, smoothed over time:

- **task seconds**: how long one task holds a slot (Little's law): slot-seconds of running tasks / tasks
  finished, both from the reports (``running``, and the ``done`` counters). The slot-seconds are counted on
  each worker's own clock, from one of its reports to the next (``heartbeat``): a report is up to one report
  interval (2 s) old when it is read, and counting its ``running`` over the polls instead made the tasks of a
  short burst look up to twice as long;
- **arrival rate**: tasks per second landing in the queue: the change of backlog + in flight, plus the tasks
  finished meanwhile. The backlog is read fresh and the reports are not, so one poll may undercount what the
  next overcounts: each sample counts with its sign (clipping the negative ones at zero inflated the rate after
  every burst); the smoothed rates may dip below zero for a poll, and the engine reads them as zero then;
- **start-up**: seconds from a scale-up until the new worker's report (its ``started`` time).

``capacity`` sizes a queue from them: enough workers to take the work there is (``outstanding``) and what
will arrive before another pod could start, within a horizon of one start-up delay (one task duration when
tasks are longer): ``workers = task_seconds / slots x (outstanding + arrival_rate x startup / UTILISATION)
/ horizon``. For long tasks this is one slot per task, for short ones the work a worker does in a start-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter
from typing import Any, NamedTuple

from workerpool_operator.observation import WorkerLoad

ARRIVAL_HORIZON = 30.0  # seconds the arrival rate is smoothed over
RECENT_HORIZON = 2.0  # seconds the recent arrival rate (what a scale-up reacts to) is smoothed over
SERVICE_HORIZON = 600.0  # seconds of busy time the task-seconds estimate remembers
STARTUP_WEIGHT = 0.3  # weight of a new start-up sample
MIN_COMPLETED = 0.5  # (decayed) tasks finished before task seconds are trusted
UTILISATION = 1.0  # share of the slots the arrivals may keep busy (queued tasks are sized on their own)
HELD_SHARE = 0.25  # a running short task still holds its slot for this share of its duration, on average
DRAIN_SHARE = 0.5  # queued work is sized to be done within this share of a start-up delay
FORGET_RATE = 0.01  # tasks/s: below this an idle queue's arrival rate is taken as zero
FIRST_REPORT = 1.0  # seconds from a worker's start within which its report is the one it sends as it starts
LAUNCH_MEMORY = 1800.0  # seconds a scale-up waits for its workers before it is no longer a start-up sample

_running = attrgetter("running")
_name = attrgetter("worker")
_started = attrgetter("started")
_exp = math.exp
_new = tuple.__new__  # a NamedTuple built in C, every field in order (tests/test_engine_builds.py checks each build)


class Learned(NamedTuple):
    """The estimates and the bookkeeping behind them. Persisted with the rest of the queue's state."""

    at: float | None = None  # when the bookkeeping below was taken; None: no baseline yet (or idle)
    outstanding: int = 0  # backlog + in flight then
    running: int = 0  # tasks running then
    workers: tuple[WorkerLoad, ...] = ()  # the reports then (their ``done`` counters)
    arrival_rate: float = 0.0  # tasks per second (smoothed with each sample's sign: may dip below 0)
    recent_rate: float = 0.0  # tasks per second over the last few seconds (the same)
    busy: float = 0.0  # slot-seconds of running tasks, decayed over SERVICE_HORIZON
    completed: float = 0.0  # tasks finished, decayed the same way
    startup: float | None = None  # seconds from a scale-up to the new worker's report
    newest_start: float = 0.0  # the latest ``started`` of any worker seen
    launches: tuple[tuple[float, int], ...] = ()  # (time, pods) asked for whose workers have not reported yet
    done: int = 0  # the workers' done counters then, added up

    @property
    def task_seconds(self) -> float | None:
        """Seconds one task holds a slot; None until some tasks have finished."""
        seconds = self.busy / self.completed if self.completed >= MIN_COMPLETED and self.busy > 0 else 0.0
        return seconds if seconds > 0.0 else None  # (a busy time so small that the quotient underflows: none)

    @property
    def held_seconds(self) -> float | None:
        """Task seconds, or before any task finished, how long the running tasks have run so far (a lower
        bound); None without any busy time."""
        if self.completed >= MIN_COMPLETED and self.busy > 0:
            return self.busy / self.completed
        held = self.completed + self.running
        return self.busy / held if held > 0 and self.busy > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "outstanding": self.outstanding,
            "running": self.running,
            "counters": [[w.worker, w.done] for w in self.workers],
            "arrivalRate": self.arrival_rate,
            "recentRate": self.recent_rate,
            "busy": self.busy,
            "completed": self.completed,
            "startup": self.startup,
            "newestStart": self.newest_start,
            "launches": [[t, n] for t, n in self.launches],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Learned:
        """Read what ``to_dict`` wrote. Raises ``ValueError`` on anything else."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"scaling state: learned must be an object, got {type(data).__name__}")
        counters = data.get("counters", [])
        if not isinstance(counters, list) or not all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and _count(c[1]) for c in counters
        ):
            raise ValueError("scaling state: learned.counters must be a list of [worker, done]")
        launches = data.get("launches", [])
        if not isinstance(launches, list) or not all(
            isinstance(x, list) and len(x) == 2 and _real(x[0]) and _count(x[1]) for x in launches
        ):
            raise ValueError("scaling state: learned.launches must be a list of [time, pods]")
        at, startup = data.get("at"), data.get("startup")
        numbers = {k: data.get(k, 0) for k in ("arrivalRate", "recentRate", "busy", "completed", "newestStart")}
        if not all(_real(v) and (v >= 0 or k.endswith("Rate")) for k, v in numbers.items()) or not (
            at is None or _real(at)
        ):
            raise ValueError("scaling state: learned figures must be non-negative numbers (the rates may dip below 0)")
        if not (startup is None or (_real(startup) and startup >= 0)):
            raise ValueError("scaling state: learned.startup must be a non-negative number")
        if not (_count(data.get("outstanding", 0)) and _count(data.get("running", 0))):
            raise ValueError("scaling state: learned.outstanding and running must be non-negative integers")
        return cls(
            at=None if at is None else float(at),
            outstanding=data.get("outstanding", 0),
            running=data.get("running", 0),
            workers=tuple(WorkerLoad(name, done=done) for name, done in counters),
            arrival_rate=float(numbers["arrivalRate"]),
            recent_rate=float(numbers["recentRate"]),
            busy=float(numbers["busy"]),
            completed=float(numbers["completed"]),
            startup=None if startup is None else float(startup),
            newest_start=float(numbers["newestStart"]),
            launches=tuple((float(t), n) for t, n in launches),
            done=sum(done for _, done in counters),
        )


def _real(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _count(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 0


def learn(previous: Learned, workers: tuple[WorkerLoad, ...], outstanding: int, starting: int, now: float) -> Learned:
    """The estimates after one more observation (``starting``: replicas that do not report yet)."""
    (at, before, running_before, seen, rate, recent, busy, completed, startup, newest_start, launches, done_before) = (
        previous
    )
    if at is None and not outstanding and not launches and (not workers or not any(map(_running, workers))):
        return previous  # idle, no baseline: nothing to learn, nothing to change
    # One walk for both sums: in CPython 3.11 a loop over the slots costs a third of sum(map(attrgetter)) twice.
    running = done = 0
    for worker in workers:
        running += worker.running
        done += worker.done
    if launches:  # scale-ups waiting for their workers: time the ones that came
        if workers:
            latest = max(map(_started, workers))
            if latest > newest_start or not latest:
                startup, launches, newest_start = _startups(seen, workers, newest_start, startup, launches, now)
        if launches and (len(launches) > 1 or launches[0][1] > starting or now - launches[0][0] > LAUNCH_MEMORY):
            launches = _trim(launches, starting, now)
    if at is None or now <= at:  # a baseline: nothing to compare with yet
        at = now if outstanding or running else None
        return _new(
            Learned,
            (at, outstanding, running, workers, rate, recent, busy, completed, startup, newest_start, launches, done),
        )
    elapsed = now - at
    # Tasks finished since, from the done counters: the same workers (the usual case: as many, first and last
    # names the same; reports are sorted by name), or, when workers came and went, worker by worker.
    completions = done - done_before
    same = not (
        completions < 0
        or len(seen) != len(workers)
        or (workers and (seen[0].worker != workers[0].worker or seen[-1].worker != workers[-1].worker))
    )
    if not same:
        completions = _completions(seen, workers, at)
    now_rate = (outstanding - before + completions) / elapsed
    keep = _exp(-elapsed / ARRIVAL_HORIZON)
    rate = rate * keep + (1.0 - keep) * now_rate
    keep = _exp(-elapsed / RECENT_HORIZON)
    recent = recent * keep + (1.0 - keep) * now_rate
    if completions or running or running_before:
        fade = _exp(-elapsed / SERVICE_HORIZON)
        if workers and workers[0].heartbeat:  # each worker's running tasks, from one of its reports to the next
            if same and newest_start < at - elapsed:  # no worker new since the poll before: no first report
                # (a loop, twice as fast as sum() over maps here: the same additions in the same order as sum() in 3.11;
                # a float from the start, for the compiled engine: 0.0 + x is x as 0 + x is)
                held = 0.0
                for was, worker in zip(seen, workers, strict=True):  # (same: as many)
                    held += was.running * (worker.heartbeat - was.heartbeat)
            else:
                held = _slot_seconds(seen, workers)
        else:  # reports without a time (older tests, hand-made observations): the polls' own times
            held = (running_before + running) * 0.5 * elapsed
        busy = busy * fade + (held if held > 0.0 else 0.0)
        completed = completed * fade + completions
    if not outstanding and not running and not completions and rate < FORGET_RATE:
        # idle and forgotten: stop moving (no status write for nothing)
        return _new(Learned, (None, 0, 0, workers, 0.0, 0.0, busy, completed, startup, newest_start, launches, done))
    return _new(
        Learned,
        (now, outstanding, running, workers, rate, recent, busy, completed, startup, newest_start, launches, done),
    )


def _completions(before: tuple[WorkerLoad, ...], after: tuple[WorkerLoad, ...], since: float) -> int:
    """Tasks finished between two observations, worker by worker (some workers came or went, or restarted)."""
    counted = {w.worker: w.done for w in before}
    finished = 0
    for worker in after:
        was = counted.get(worker.worker)
        if was is None:  # new since: all it did, if it started since (else its report had just expired)
            finished += worker.done if worker.started >= since or not worker.started else 0
        elif worker.done > was:
            finished += worker.done - was
    return finished


def _slot_seconds(before: tuple[WorkerLoad, ...], after: tuple[WorkerLoad, ...]) -> float:
    """Slot-seconds of running tasks between two observations, worker by worker: each worker's running count
    in its earlier report, over the time to its later one (workers that came or went count from their reports).
    A worker's first report is sent as it becomes ready, before it takes a task: from it, the later report's
    count stands for the interval (a new worker fills its slots at once from a backlog)."""
    earlier = {w.worker: w for w in before}
    held = 0.0
    for worker in after:
        was = earlier.get(worker.worker)
        if was is not None and worker.heartbeat > was.heartbeat:
            running = worker.running if was.started and was.heartbeat - was.started < FIRST_REPORT else was.running
            held += running * (worker.heartbeat - was.heartbeat)
    return held


def _startups(
    before: tuple[WorkerLoad, ...],
    workers: tuple[WorkerLoad, ...],
    newest_start: float,
    startup: float | None,
    launches: tuple[tuple[float, int], ...],
    now: float,
) -> tuple[float | None, tuple[tuple[float, int], ...], float]:
    """Match the workers new since the last observation with the oldest scale-ups still waiting for theirs.

    New: started after any worker seen before; or, for a worker that does not say when it started (an older
    worker image), a name not seen before, timed at its first report (``now``)."""
    latest = max(map(_started, workers))
    if latest:
        new = [w.started for w in workers if w.started > newest_start] if latest > newest_start else []
    else:  # no worker says when it started (an older worker image): new names, timed now
        known = set(map(_name, before))
        new = [now for w in workers if w.worker not in known]
    if not new:
        return startup, launches, newest_start
    pending = [list(item) for item in launches]
    for started in sorted(new):
        while pending and pending[0][1] <= 0:
            pending.pop(0)
        if not pending or pending[0][0] > started:
            continue  # started before any scale-up we wait for: not ours to time
        sample = started - pending[0][0]
        startup = sample if startup is None else startup + STARTUP_WEIGHT * (sample - startup)
        pending[0][1] -= 1
    kept = tuple((t, int(n)) for t, n in pending if n > 0)
    return startup, kept, latest if latest > newest_start else newest_start


def _trim(launches: tuple[tuple[float, int], ...], starting: int, now: float) -> tuple[tuple[float, int], ...]:
    """No more launches waiting than replicas without a report; none older than LAUNCH_MEMORY."""
    kept: list[tuple[float, int]] = []
    room = starting
    for time, pods in reversed(launches):  # newest first: the oldest are the ones that went
        if room <= 0 or now - time > LAUNCH_MEMORY:
            break
        kept.append((time, min(pods, room)))
        room -= pods
    kept.reverse()
    return tuple(kept)


def with_launch(learned: Learned, now: float, pods: int, workers: tuple[WorkerLoad, ...]) -> Learned:
    """Remember a scale-up, to time its workers' start-up; the workers there now are not its."""
    newest = learned.newest_start
    if not learned.launches and workers:
        latest = max(map(_started, workers))
        newest = latest if latest > newest else newest
    l = learned  # noqa: E741
    return _new(
        Learned,
        (l.at, l.outstanding, l.running, l.workers, l.arrival_rate, l.recent_rate, l.busy, l.completed, l.startup,
         newest, (*l.launches, (now, pods)), l.done),
    )  # fmt: skip


def capacity(
    queued: float,
    running: int,
    arrival_rate: float,
    task_seconds: float,
    slots: int,
    startup: float,
    within: float = 0.0,
) -> float:
    """Workers (fractional) for what there is and what comes, over the next start-up delay:

    - the arrivals: ``arrival_rate x task_seconds`` slots (Little's law), or the arrivals of one start-up
      delay when tasks are longer than that, at ``UTILISATION``;
    - the ``queued`` tasks (waiting, or reserved inside a busy worker), done within ``DRAIN_SHARE`` of a
      start-up delay (one task's duration if longer), or ``within`` seconds if longer (what a target wait
      leaves them);
    - the ``running`` tasks, as long as they will still run then (long tasks keep their slot)."""
    short = task_seconds < startup
    flow = arrival_rate * (task_seconds if short else startup) / UTILISATION
    horizon = startup * DRAIN_SHARE
    if horizon < task_seconds:
        horizon = task_seconds
    if horizon < within:
        horizon = within
    if horizon < 1.0:
        horizon = 1.0
    held = running * task_seconds * HELD_SHARE / startup if short else running
    return (flow + queued * task_seconds / horizon + held) / slots


def drain_seconds(work: float, arrival_rate: float, task_seconds: float, slots: int, workers: int) -> float:
    """Seconds ``workers`` need to finish ``work`` while tasks keep arriving (inf if they never catch up)."""
    rate = workers * slots / task_seconds - arrival_rate
    if work <= 0:
        return 0.0
    return work / rate if rate > 0 else math.inf


def names(workers: Sequence[WorkerLoad]) -> list[str]:
    return list(map(_name, workers))
