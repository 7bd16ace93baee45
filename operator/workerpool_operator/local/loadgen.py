"""The demo's load generator: bursts and steady streams of real Celery tasks, sent on a schedule.

A :class:`LoadPlan` is a list of :class:`Phase` (send ``count`` tasks of one kind to one queue, spread evenly
between ``start`` and ``end`` seconds; ``start == end`` is a burst). :func:`send_plan` sends it with a Celery
producer and returns the ids it sent, so the caller can check every one of them completed exactly once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from workerpool_operator.local import demo_app


@dataclass(frozen=True, slots=True)
class Phase:
    queue: str
    task: str  # demo_app.CPU_TASK (argument: hash rounds) or demo_app.IO_TASK (argument: seconds)
    count: int
    start: float
    end: float
    low: float  # the task's argument is drawn uniformly from [low, high]
    high: float

    def due(self, elapsed: float) -> int:
        """How many of this phase's tasks should have been sent ``elapsed`` seconds into the plan."""
        if elapsed < self.start:
            return 0
        if elapsed >= self.end:
            return self.count
        return int(self.count * (elapsed - self.start) / (self.end - self.start))


@dataclass(frozen=True, slots=True)
class LoadPlan:
    phases: tuple[Phase, ...]

    @property
    def duration(self) -> float:
        return max((p.end for p in self.phases), default=0.0)

    @property
    def total(self) -> int:
        return sum(p.count for p in self.phases)


def demo_plan(cpu_queue: str = "cpu", io_queue: str = "io", scale: float = 1.0) -> LoadPlan:
    """About 25 s of load: a steady I/O stream, two CPU bursts and one big I/O spike; then quiet."""

    def n(count: int) -> int:
        return max(1, round(count * scale))

    return LoadPlan(
        (
            Phase(io_queue, demo_app.IO_TASK, n(500), 0.0, 20.0, 1.0, 3.0),
            Phase(cpu_queue, demo_app.CPU_TASK, n(30), 1.0, 1.0, 300_000, 500_000),
            Phase(cpu_queue, demo_app.CPU_TASK, n(30), 14.0, 14.0, 300_000, 500_000),
            Phase(io_queue, demo_app.IO_TASK, n(400), 22.0, 22.0, 0.5, 1.5),
        )
    )


@dataclass
class SendResult:
    sent: dict[str, list[str]] = field(default_factory=dict)  # queue -> task ids, in order sent
    error: str | None = None

    @property
    def ids(self) -> list[str]:
        return [task_id for ids in self.sent.values() for task_id in ids]


def send_plan(
    broker_url: str,
    plan: LoadPlan,
    stop: threading.Event,
    *,
    seed: int = 7,
    step: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    result: SendResult | None = None,
) -> SendResult:
    """Send ``plan`` in real time until done or ``stop`` is set. Blocking: run it in a thread."""
    rng = random.Random(seed)
    result = result if result is not None else SendResult()
    app = demo_app.app
    app.conf.broker_url = broker_url
    sent_per_phase = [0] * len(plan.phases)
    started = clock()
    try:
        with app.producer_or_acquire() as producer:
            while not stop.is_set():
                elapsed = clock() - started
                for i, phase in enumerate(plan.phases):
                    for _ in range(phase.due(elapsed) - sent_per_phase[i]):
                        argument: float = rng.uniform(phase.low, phase.high)
                        if phase.task == demo_app.CPU_TASK:
                            argument = int(argument)
                        message = app.send_task(
                            phase.task, args=[argument, time.time()], queue=phase.queue, producer=producer
                        )
                        result.sent.setdefault(phase.queue, []).append(message.id)
                        sent_per_phase[i] += 1
                if elapsed >= plan.duration:
                    break
                stop.wait(step)
    except Exception as error:  # the broker went away: say so, keep what was sent
        result.error = f"{type(error).__name__}: {error}"
    return result
