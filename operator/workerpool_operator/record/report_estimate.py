"""Tasks estimated from what the operator's observer reads, for workers that send no task events. Pure.

Each poll reads the queues' backlog (every priority list) and the worker reports (reports.py: per worker and
queue, tasks running and reserved; per worker, tasks done since it started; the report's heartbeat), in one
round trip. From a series of polls:

- **arrivals**: every task that entered the queues is waiting, held by a worker, or done, so the arrivals up
  to a poll are ``backlog + running + reserved + done since the start``; its rises (never its dips: a report
  is up to one report interval older than the backlog read with it) are the tasks that arrived, spread evenly
  over the poll interval they were seen in. The tasks waiting at the start arrive at 0.
- **run times**: Little's law per window of the recording: slot-seconds busy (``running`` integrated over the
  reports' heartbeats, trapezoids) divided by the tasks done in that window; every task arriving in the window
  gets that mean. A window with too few tasks done takes the recording's mean.

So it is an estimate: each task's own run time is lost (only the window's mean), arrival times are as fine as
the reports (2 s by default) and polls, a worker consuming other queues too has its ``done`` counted whole
(reports count done per worker, not per queue), and tasks restored to the queue after a worker died count as
new arrivals.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Estimate", "Sample", "WorkerSample", "estimate_tasks"]

WINDOW = 600.0  # seconds of recording one mean run time covers
MIN_DONE = 10  # fewer tasks done in a window: it takes the recording's mean


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """One worker's report as one poll read it: counts over the recorded queues, ``done`` for the worker."""

    running: int = 0
    reserved: int = 0
    done: int = 0
    heartbeat: float = 0.0
    started: float = 0.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll: the local time, the backlog summed over the recorded queues, and the live workers' reports."""

    time: float
    backlog: int
    workers: Mapping[str, WorkerSample] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Estimate:
    tasks: list[tuple[float, float]]  # (arrival, duration), seconds from the start
    done: int  # tasks the reports counted as done during the recording
    mean_seconds: float | None  # the recording's mean run time (None: no task was done)
    notes: list[str]


def estimate_tasks(samples: Sequence[Sample], start: float, window: float = WINDOW) -> Estimate:
    """The recording's tasks as far as the polls ``samples`` (ascending times) tell them."""
    if not samples:
        return Estimate([], 0, None, ["no poll of the broker succeeded"])
    arrivals = _arrivals(samples, start)
    busy, done = _busy_and_done(samples, start, window)
    total_done = sum(done.values())
    mean = sum(busy.values()) / total_done if total_done else None
    notes: list[str] = []
    if mean is None:
        notes.append("no worker report counted a finished task: run times are unknown")
        return Estimate([], 0, None, notes)
    means = {w: busy[w] / done[w] if done.get(w, 0) >= MIN_DONE else mean for w in busy | done}
    tasks = [(arrival, means.get(int(arrival // window), mean)) for arrival in arrivals]
    if len({round(m, 6) for m in means.values()}) > 1:
        notes.append(f"run times are per {window:g}-second window means")
    return Estimate(tasks, total_done, mean, notes)


def _arrivals(samples: Sequence[Sample], start: float) -> list[float]:
    """Arrival times (seconds from the start) from the rises of backlog + in flight + done."""
    done = _cumulative_done(samples, start)
    first = samples[0]
    arrivals = [0.0] * first.backlog  # waiting at the start
    highest = _arrived(first, done[0])
    previous_time = first.time
    for sample, completed in zip(samples[1:], done[1:], strict=True):
        value = _arrived(sample, completed)
        if value > highest:
            count = value - highest
            span = sample.time - previous_time
            arrivals += [previous_time - start + span * (j + 0.5) / count for j in range(count)]
            highest = value
        previous_time = sample.time
    return [max(0.0, a) for a in arrivals]


def _arrived(sample: Sample, done: int) -> int:
    return sample.backlog + sum(w.running + w.reserved for w in sample.workers.values()) + done


def _cumulative_done(samples: Sequence[Sample], start: float) -> list[int]:
    """Tasks done since the start, at each sample: each worker's rises of ``done`` (a worker that started
    during the recording counts from 0; a counter that went down belongs to a restarted worker)."""
    last: dict[str, int] = {}
    total = 0
    result: list[int] = []
    for sample in samples:
        for name, worker in sample.workers.items():
            if name not in last:
                last[name] = 0 if worker.started >= start else worker.done
            previous = last[name]
            total += worker.done - previous if worker.done >= previous else worker.done
            last[name] = worker.done
        result.append(total)
    return result


def _busy_and_done(samples: Sequence[Sample], start: float, window: float) -> tuple[dict[int, float], dict[int, int]]:
    """Slot-seconds busy and tasks done per window, from each worker's distinct reports (by heartbeat)."""
    reports: dict[str, list[WorkerSample]] = {}
    for sample in samples:
        for name, worker in sample.workers.items():
            series = reports.setdefault(name, [])
            if not series or worker.heartbeat > series[-1].heartbeat:
                series.append(worker)
    busy: dict[int, float] = {}
    done: dict[int, int] = {}
    for series in reports.values():
        for before, after in itertools.pairwise(series):
            middle = (before.heartbeat + after.heartbeat) / 2 - start
            key = int(max(0.0, middle) // window)
            span = after.heartbeat - before.heartbeat
            busy[key] = busy.get(key, 0.0) + (before.running + after.running) / 2 * span
            finished = after.done - before.done if after.done >= before.done else after.done
            done[key] = done.get(key, 0) + finished
    return busy, done
