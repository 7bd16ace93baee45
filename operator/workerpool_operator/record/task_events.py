"""Tasks from Celery's event stream: each delivery of a task to a worker, with when and for how long it ran. Pure.

Workers that send task events (``celery worker -E``, ``worker_send_task_events``) announce ``task-received``
(a worker took the task from the broker), ``task-started``, and one of ``task-succeeded`` (with ``runtime``, the
seconds the task ran, measured by the worker), ``task-failed``, ``task-retried``, ``task-rejected`` or
``task-revoked``. Producers announce ``task-sent`` (with the queue) only with ``task_send_sent_event``.

The events carry no queue, apart from ``task-sent``: a task is attributed to a queue through the worker that
received it and the queues that worker consumes (``inspect active_queues``, asked by the I/O side). A retry
is a new delivery of the same task id, and counts as a task of its own (it is work that arrived again).

Times: ``local_received`` (when this recorder got the event, on its own clock, the clock of the backlog polls)
for arrivals; the workers' ``timestamp``s only for differences on one worker's clock (a failed task's run time).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workerpool_operator.record.arrivals import arrival_times

__all__ = ["TASK_EVENTS", "EventLog", "EventTasks", "TaskRun", "event_tasks"]

TASK_EVENTS = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-rejected",
    "task-revoked",
)
FINISHED = {"task-succeeded": "succeeded", "task-failed": "failed", "task-retried": "retried"}
DROPPED = {"task-rejected": "rejected", "task-revoked": "revoked"}


@dataclass(slots=True)
class TaskRun:
    """One delivery of a task to a worker."""

    uuid: str
    received: float  # local time the task-received event arrived
    hostname: str
    started: float | None = None  # worker clock
    finished: float | None = None  # worker clock
    runtime: float | None = None  # seconds, as the worker measured it (task-succeeded)
    state: str = "received"

    @property
    def duration(self) -> float | None:
        if self.runtime is not None:
            return max(0.0, self.runtime)
        if self.started is not None and self.finished is not None:
            return max(0.0, self.finished - self.started)
        return None


@dataclass(slots=True)
class EventLog:
    """Every task event of the recording, folded into deliveries as they come (no queue filter yet: a worker's
    queues may become known after its first events)."""

    runs: list[TaskRun] = field(default_factory=list)
    sent: dict[str, tuple[float, str]] = field(default_factory=dict)  # uuid -> (local time, queue)
    open: dict[str, TaskRun] = field(default_factory=dict)  # uuid -> its current delivery
    earlier: int = 0  # events of tasks received before the recording began: ignored
    hostnames: set[str] = field(default_factory=set)

    def add(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("type", ""))
        uuid = str(event.get("uuid", ""))
        if not uuid or kind not in TASK_EVENTS:
            return
        local = float(event.get("local_received") or event.get("timestamp") or 0.0)
        stamp = float(event.get("timestamp") or local)
        if kind == "task-sent":
            self.sent[uuid] = (local, str(event.get("queue") or event.get("routing_key") or ""))
            return
        if kind == "task-received":
            hostname = str(event.get("hostname", ""))
            run = TaskRun(uuid=uuid, received=local, hostname=hostname)
            self.hostnames.add(hostname)
            self.runs.append(run)
            self.open[uuid] = run
            return
        current = self.open.get(uuid)
        if current is None:
            self.earlier += 1
            return
        self._update(current, kind, uuid, stamp, event)

    def _update(self, run: TaskRun, kind: str, uuid: str, stamp: float, event: Mapping[str, Any]) -> None:
        if kind == "task-started":
            run.started = stamp
        elif kind in FINISHED:
            run.finished, run.state = stamp, FINISHED[kind]
            runtime = event.get("runtime")
            run.runtime = float(runtime) if isinstance(runtime, int | float) else None
            del self.open[uuid]
        elif kind in DROPPED:
            run.state = DROPPED[kind]
            del self.open[uuid]

    def received(self) -> int:
        return len(self.runs)


@dataclass(frozen=True, slots=True)
class EventTasks:
    """The recording's tasks of the chosen queues, from the events: (arrival, duration) in seconds from the start."""

    tasks: list[tuple[float, float]]
    notes: list[str]
    exact_arrivals: int = 0  # tasks whose arrival is their task-sent event


def event_tasks(
    log: EventLog,
    queues: Collection[str],
    worker_queues: Mapping[str, Collection[str]],
    samples: Iterable[tuple[float, int]],
    start: float,
) -> EventTasks:
    """The tasks of ``queues`` in ``log``: run times as the workers measured them (the mean of the finished
    ones for a task still running at the end), arrivals from ``task-sent`` where producers send it, else moved
    back from the receive time by the backlog ``samples`` (arrivals.py). ``worker_queues``: hostname -> the
    queues that worker consumes; with no worker known at all, every event counts."""
    wanted = set(queues)
    notes: list[str] = []
    chosen: list[TaskRun] = []
    unknown: set[str] = set()
    shared: set[str] = set()
    for run in log.runs:
        if run.state in DROPPED.values():
            continue
        queue = log.sent.get(run.uuid, (0.0, ""))[1]
        consumed = set(worker_queues.get(run.hostname, ()))
        if queue:
            keep = queue in wanted
        elif not worker_queues:
            keep = True
        elif not consumed:
            unknown.add(run.hostname)
            keep = False
        else:
            keep = bool(consumed & wanted)
            if keep and consumed - wanted:
                shared.add(run.hostname)
        if keep:
            chosen.append(run)
    if not worker_queues and log.runs:
        notes.append("no worker said which queues it consumes (inspect active_queues): every task event counted")
    if unknown:
        notes.append(f"not counted: the events of {len(unknown)} worker(s) that never said which queues they consume")
    if shared:
        notes.append(
            f"{len(shared)} worker(s) also consume queues not recorded: their tasks of those queues are counted too"
        )
    if log.earlier:
        notes.append(f"{log.earlier} event(s) of tasks received before the recording began: not counted")
    chosen.sort(key=lambda run: run.received)
    curve = arrival_times([run.received for run in chosen], sorted(samples), start)
    finished = [d for d in (run.duration for run in chosen) if d is not None]
    mean = sum(finished) / len(finished) if finished else 0.0
    unfinished = len(chosen) - len(finished)
    if unfinished:
        notes.append(f"{unfinished} task(s) had not finished at the end: their run time is the mean, {mean:.3f} s")
    tasks: list[tuple[float, float]] = []
    exact = 0
    for run, estimated in zip(chosen, curve, strict=True):
        sent = log.sent.get(run.uuid)
        arrival = sent[0] if sent is not None and sent[0] <= run.received else estimated
        exact += sent is not None
        duration = run.duration
        tasks.append((max(0.0, arrival - start), mean if duration is None else duration))
    tasks.sort()
    return EventTasks(tasks=tasks, notes=notes, exact_arrivals=exact)
