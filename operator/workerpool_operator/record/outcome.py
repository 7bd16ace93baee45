"""What a recording becomes: its tasks from the source chosen, and the header that says how they were made. Pure.

Both sources are captured all along (the polls are needed by the events too, for the arrival times), so the
choice is made at the end: ``auto`` takes the task events when any task of the recorded queues was seen in
them, else the estimate from the worker reports. When both saw tasks and their counts disagree by more than a
tenth, the header says so (some workers may send no events).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from workerpool_operator.record.report_estimate import WINDOW, Sample, estimate_tasks
from workerpool_operator.record.task_events import EventLog, event_tasks

__all__ = ["Captured", "Outcome", "RecordError", "SourceName", "outcome", "queue_names"]

SourceName = Literal["auto", "events", "reports"]
DISAGREEMENT = 0.1

EVENTS_SOURCE = (
    "source: Celery's task events (task-received, task-started, task-succeeded / -failed / -retried). Run times "
    "as the workers measured them. Arrivals: {sent}when a worker received the task, moved back to when it entered "
    "the queue by the queue's length at each poll (every {interval:g} s; first in, first out)."
)
REPORTS_SOURCE = (
    "source: the worker reports and queue lengths the operator reads (no task events{why}): an estimate. Arrivals "
    "are the rises of backlog + running + reserved + done, as fine as the reports (every 2 s by default) and polls "
    "(every {interval:g} s). Run times are the mean of each {window:g}-second window (busy slot-seconds ÷ tasks "
    "done), not each task's own."
)


class RecordError(Exception):
    """Nothing to write (no task, no source); ``str()`` is the one line for the user."""


@dataclass(slots=True)
class Captured:
    """Everything a recording gathered; times on the recorder's clock."""

    broker: str  # the URL without its password
    queues: tuple[str, ...]
    start: float
    end: float
    interval: float
    requested: float  # the --duration asked for
    log: EventLog = field(default_factory=EventLog)
    samples: list[Sample] = field(default_factory=list)
    worker_queues: dict[str, frozenset[str]] = field(default_factory=dict)
    events_problem: str | None = None  # why task events could not be read, if so
    failed_polls: int = 0
    last_poll_error: str | None = None
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    tasks: list[tuple[float, float]]
    source: Literal["events", "reports"]
    header: list[str]
    summary: str  # one line for stderr


def outcome(captured: Captured, source: SourceName = "auto") -> Outcome:
    """The trace of ``captured`` from ``source``. Raises RecordError when that source has nothing."""
    backlog = [(s.time, s.backlog) for s in captured.samples]
    events = event_tasks(captured.log, captured.queues, captured.worker_queues, backlog, captured.start)
    estimate = estimate_tasks(captured.samples, captured.start)
    use_events = source == "events" or (source == "auto" and bool(events.tasks))
    if use_events and captured.events_problem is not None and not events.tasks:
        raise RecordError(f"no task events: {captured.events_problem}")
    tasks = events.tasks if use_events else estimate.tasks
    if not tasks:
        raise RecordError(_nothing(captured, use_events, estimate.notes))
    header = [_title(captured)]
    if use_events:
        sent = f"task-sent for {events.exact_arrivals} task(s), else " if events.exact_arrivals else ""
        header.append(EVENTS_SOURCE.format(sent=sent, interval=captured.interval))
        header += events.notes
        counted = len(estimate.tasks)
        if counted and abs(counted - len(tasks)) > DISAGREEMENT * len(tasks):
            header.append(
                f"the worker reports count about {counted} task(s) against {len(tasks)} in the events: "
                "do some workers send no task events?"
            )
    else:
        why = f": {captured.events_problem}" if captured.events_problem else " for these queues"
        header.append(REPORTS_SOURCE.format(why=why, interval=captured.interval, window=WINDOW))
        header += estimate.notes
    if captured.failed_polls:
        header.append(f"{captured.failed_polls} poll(s) of the broker failed: {captured.last_poll_error}")
    busy = sum(d for _, d in tasks)
    header.append(f"tasks: {len(tasks)}, {busy:.1f} task-seconds")
    chosen: Literal["events", "reports"] = "events" if use_events else "reports"
    summary = f"{len(tasks)} tasks from {'Celery task events' if use_events else 'worker reports (an estimate)'}"
    return Outcome(tasks=tasks, source=chosen, header=header, summary=summary)


def _title(captured: Captured) -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(captured.start))
    took = captured.end - captured.start
    stopped = f" (stopped by the user after {took:.0f} s)" if captured.interrupted else ""
    queues = ", ".join(captured.queues)
    return (
        f"workerpool-operator record: queue(s) {queues} on {captured.broker}, from {started} for "
        f"{captured.requested:g} s{stopped}; times in seconds from the start"
    )


def _nothing(captured: Captured, use_events: bool, problems: Sequence[str]) -> str:
    took = captured.end - captured.start
    where = ", ".join(captured.queues)
    if use_events:
        return f"no task of {where} in the task events in {took:.0f} s: nothing to write"
    if not captured.samples:
        return f"no poll of the broker succeeded in {took:.0f} s: {captured.last_poll_error or 'unknown error'}"
    if not any(s.workers for s in captured.samples):
        return (
            f"no task events and no worker reports for {where} in {took:.0f} s: start the workers with task events "
            "(-E) or through workerpool-worker, whose reports the estimate reads"
        )
    return f"no task of {where} was seen in {took:.0f} s ({'; '.join(problems) or 'the queues were idle'})"


def queue_names(requested: Collection[str], pool_queues: Collection[str] = ()) -> tuple[str, ...]:
    """The queues to record: as asked, else the pool's, else Celery's default queue."""
    if requested:
        return tuple(dict.fromkeys(requested))
    if pool_queues:
        return tuple(pool_queues)
    return ("celery",)
