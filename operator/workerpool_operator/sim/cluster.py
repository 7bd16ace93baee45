"""The simulated queue and its worker pods: what Redis, Celery and the ReplicaSet do, without any policy.

One FIFO list in Redis (``queue``: task indexes, the next to be consumed at the left). Each pod, once ready,
consumes like a Celery worker: it holds up to ``concurrency`` running tasks plus what it prefetched
(``reserved``); with Celery's default early acknowledgement a running task no longer counts against the
prefetch limit, so a busy worker still reserves ``prefetch_multiplier x concurrency`` more; with ``acks_late``
running and reserved together stay within that limit. A reserved task waits inside its worker for one of
that worker's slots, even while another pod is idle. Free capacity is handed out to pods in the order they
asked for it, as Redis serves blocked ``BRPOP`` clients.

- **Drain** (the engine's request): the worker stops consuming and hands back what it prefetched (to the head
  of the list, as kombu restores unacknowledged messages); its running tasks finish; it stays a pod, idle,
  until it is removed. **Undrain**: it consumes again.
- **Removal** (the ReplicaSet lowering replicas): pods that are not ready go first, then pods marked with a low
  ``pod-deletion-cost``, then the most recently ready. A starting pod goes at once; a ready one gets SIGTERM:
  it stops consuming, hands back its prefetched tasks and finishes its running ones; at
  ``terminationGracePeriodSeconds`` the tasks still running are killed. A killed task comes back to the list
  after the broker's visibility timeout when it is ``acks_late``; otherwise it is lost.

Replica-seconds count every pod from creation until it is gone. Pure and deterministic.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

STARTING, READY, TERMINATING, GONE = 0, 1, 2, 3
# Event kinds, in the order events at the same instant are handled.
TASK_DONE, POD_READY, GRACE_END, REDELIVER, REPORT_TICK, EXITED, CONTROL = 0, 1, 2, 3, 4, 5, 6
GOLDEN = 0.6180339887498949  # spreads the workers' report phases over the interval without a random stream


@dataclass(frozen=True, slots=True)
class WorkerModel:
    """How the simulated workers behave: the queue's Celery settings and the pod's grace period."""

    concurrency: int = 1
    prefetch_multiplier: int = 1  # Celery's worker_prefetch_multiplier
    acks_late: bool = False  # Celery's task_acks_late (default: acknowledged when the task starts)
    grace: float = 30.0  # terminationGracePeriodSeconds
    visibility_timeout: float = 3600.0  # kombu's: a killed acks_late task comes back after this
    report_interval: float = 2.0  # seconds between a worker's reports (and its reads of its drain request); 0: live
    exit_seconds: float = 0.0  # seconds from the end of a worker's last task after SIGTERM until its pod is gone

    @property
    def hold_limit(self) -> int:
        """Tasks one worker holds at most (running + reserved)."""
        prefetch = self.prefetch_multiplier * self.concurrency
        return prefetch if self.acks_late else prefetch + self.concurrency


Report = tuple[int, int, int, bool, float]  # running, reserved, done, draining, when it was published


@dataclass(slots=True)
class Pod:
    number: int
    name: str
    created: float
    state: int = STARTING
    ready_at: float = math.inf
    running: set[int] = field(default_factory=set)  # task indexes
    reserved: deque[int] = field(default_factory=deque)
    done: int = 0
    draining: bool = False
    requested: bool = False  # the operator asks this worker to drain (its field in the drain-request hash)
    report: Report = (0, 0, 0, False, 0.0)  # the last report
    next_tick: float = math.inf  # when the worker next publishes its report and reads its drain request

    @property
    def consuming(self) -> bool:
        return self.state == READY and not self.draining

    @property
    def held(self) -> int:
        return len(self.running) + len(self.reserved)

    def publish(self, now: float, interval: float) -> None:
        """The report of its last tick at or before ``now``. The cluster calls it before every change of what the
        pod holds (and before a read), so the pod's state now is its state at that tick."""
        tick = self.next_tick + interval * math.floor((now - self.next_tick) / interval)
        self.report = (len(self.running), len(self.reserved), self.done, self.draining, tick)
        self.next_tick = tick + interval


class Cluster:
    """The queue, the pods and the event heap. Control loops are added by ``simulate``."""

    def __init__(self, tasks: Sequence[tuple[float, float]], name: str, model: WorkerModel) -> None:
        self.tasks = tasks
        self.name = name
        self.model = model
        self.concurrency = model.concurrency
        self.hold_limit = model.hold_limit
        self.queue: deque[int] = deque()
        self.pods: dict[int, Pod] = {}
        self.free: deque[int] = deque()  # pod numbers, one entry per unit of free capacity; stale ones skipped
        self.heap: list[tuple[float, int, int, int, int]] = []  # (time, kind, sequence, pod, task)
        self.sequence = 0
        self.now = 0.0
        self.starts: list[float] = [math.nan] * len(tasks)  # when each task last started
        self.finished = 0
        self.killed = 0
        self.redelivered = 0
        self.lost = 0
        self.pending_redeliveries = 0
        self.pod_numbers = 0
        self.pod_seconds_done = 0.0
        self.terminating = 0
        self.report_interval = model.report_interval

    # --- events ---------------------------------------------------------------------------------------

    def push(self, time: float, kind: int, pod: int = 0, task: int = 0) -> None:
        self.sequence += 1
        heapq.heappush(self.heap, (time, kind, self.sequence, pod, task))

    def handle(self, kind: int, pod_number: int, task: int) -> None:
        """One event of the cluster's own (not a control loop's)."""
        pod = self.pods.get(pod_number)
        if kind == TASK_DONE:
            if pod is not None:  # a killed pod's tasks never finish
                self._task_done(pod, task)
        elif kind == POD_READY:
            if pod is not None and pod.state == STARTING:
                self.ready(pod)
        elif kind == GRACE_END:
            if pod is not None and pod.state == TERMINATING:
                self._kill(pod)
        elif kind == REDELIVER:
            self.pending_redeliveries -= 1
            self.redelivered += 1
            self.queue.appendleft(task)
            self.dispatch()
        elif kind == REPORT_TICK:
            if pod is not None and pod.state == READY:
                self._read_request(pod)
        elif kind == EXITED and pod is not None and pod.state == TERMINATING and not pod.running:
            self._gone(pod)

    # --- tasks ----------------------------------------------------------------------------------------

    def arrive(self, task: int) -> None:
        """A task lands in Redis: a waiting consumer takes it at once, else it waits in the list."""
        pods, free = self.pods, self.free
        while free:
            pod = pods.get(free.popleft())
            if pod is not None and pod.state == READY and not pod.draining and pod.held < self.hold_limit:
                self._take(pod, task)
                return
        self.queue.append(task)

    def dispatch(self) -> None:
        """Hand waiting tasks to consumers with free capacity (after tasks came back to the list)."""
        pods, free, queue = self.pods, self.free, self.queue
        while queue and free:
            pod = pods.get(free.popleft())
            if pod is not None and pod.state == READY and not pod.draining and pod.held < self.hold_limit:
                self._take(pod, queue.popleft())

    def _take(self, pod: Pod, task: int) -> None:
        if self.now >= pod.next_tick:
            pod.publish(self.now, self.report_interval)
        if len(pod.running) < self.concurrency:
            self._start(pod, task)
        else:
            pod.reserved.append(task)

    def _start(self, pod: Pod, task: int) -> None:
        now = self.now
        pod.running.add(task)
        self.starts[task] = now
        self.sequence += 1
        heapq.heappush(self.heap, (now + self.tasks[task][1], TASK_DONE, self.sequence, pod.number, task))

    def _task_done(self, pod: Pod, task: int) -> None:
        if self.now >= pod.next_tick:
            pod.publish(self.now, self.report_interval)
        pod.running.discard(task)
        pod.done += 1
        self.finished += 1
        if pod.state == TERMINATING:
            if not pod.running:
                self._exit(pod)
            return
        if pod.reserved:
            self._start(pod, pod.reserved.popleft())
        if pod.state == READY and not pod.draining:
            self._consume(pod)

    def _consume(self, pod: Pod) -> None:
        """A consuming pod fills its free capacity from the list; what stays free waits for arrivals."""
        queue = self.queue
        while queue and pod.held < self.hold_limit:
            self._take(pod, queue.popleft())
        self.free.extend([pod.number] * (self.hold_limit - pod.held))

    def _hand_back(self, pod: Pod) -> None:
        if self.now >= pod.next_tick:
            pod.publish(self.now, self.report_interval)
        if pod.reserved:
            self.queue.extendleft(reversed(pod.reserved))
            pod.reserved.clear()
            self.dispatch()

    # --- pods -----------------------------------------------------------------------------------------

    def create_pod(self, startup: float) -> Pod:
        self.pod_numbers += 1
        number = self.pod_numbers
        pod = Pod(number, f"{self.name}-{number:05d}", self.now)
        self.pods[number] = pod
        if startup <= 0:
            self.ready(pod)
        else:
            self.push(self.now + startup, POD_READY, number)
        return pod

    def ready(self, pod: Pod) -> None:
        pod.state = READY
        pod.ready_at = self.now
        if self.report_interval > 0:  # the first report as it becomes ready (Celery's worker_ready comes before
            # its event loop takes a task), then one every interval at the worker's own phase
            pod.report = (0, 0, pod.done, pod.draining, self.now)
            pod.next_tick = self.now + self.report_interval * (1.0 - (pod.number * GOLDEN) % 1.0)
        self._consume(pod)

    # --- reports and drain requests ---------------------------------------------------------------------

    def report_of(self, pod: Pod) -> Report:
        """What the operator reads of a ready pod: its last report (live with ``report_interval`` 0)."""
        if self.report_interval <= 0:
            return len(pod.running), len(pod.reserved), pod.done, pod.draining, self.now
        if self.now >= pod.next_tick:
            pod.publish(self.now, self.report_interval)
        return pod.report

    def ask_drain(self, pod: Pod, drain: bool = True) -> None:
        """The operator writes (``drain``) or deletes the pod's drain request; the worker reads it at its next
        report, drains or takes tasks again, and reports that at once (live with ``report_interval`` 0)."""
        if pod.state != READY or pod.requested == drain:
            return
        pod.requested = drain
        if self.report_interval <= 0:
            self._read_request(pod)
            return
        if self.now >= pod.next_tick:
            pod.publish(self.now, self.report_interval)
        self.push(pod.next_tick, REPORT_TICK, pod.number)

    def _read_request(self, pod: Pod) -> None:
        if pod.requested == pod.draining:
            return
        if self.report_interval > 0 and self.now >= pod.next_tick:
            pod.publish(self.now, self.report_interval)
        if pod.requested:
            pod.draining = True
            self._hand_back(pod)
        else:
            pod.draining = False
            self._consume(pod)
        if self.report_interval > 0:  # the worker reports at once what it does now
            pod.report = (len(pod.running), len(pod.reserved), pod.done, pod.draining, self.now)

    def replicas(self) -> list[Pod]:
        """The Deployment's pods: starting, ready and draining (not those already terminating)."""
        return [p for p in self.pods.values() if p.state in (STARTING, READY)]

    def scale_to(self, desired: int, marked: Sequence[str], startup: Callable[[], float]) -> bool:
        """The ReplicaSet follows a new replica count; ``marked`` pods carry a low deletion cost."""
        alive = self.replicas()
        if desired == len(alive):
            return False
        if desired > len(alive):
            for _ in range(desired - len(alive)):
                self.create_pod(startup())
            return True
        low_cost = set(marked)
        ranked = sorted(
            alive, key=lambda p: (p.state == READY, p.name not in low_cost, -p.ready_at, -p.created, -p.number)
        )
        for pod in ranked[: len(alive) - desired]:
            self.terminate(pod)
        return True

    def terminate(self, pod: Pod) -> None:
        """SIGTERM: a starting pod goes at once; a ready one stops consuming and finishes within the grace."""
        if pod.state == STARTING:
            self._gone(pod)
            return
        pod.state = TERMINATING
        self.terminating += 1
        self._hand_back(pod)
        if pod.running:
            self.push(self.now + self.model.grace, GRACE_END, pod.number)
        else:
            self._exit(pod)

    def _exit(self, pod: Pod) -> None:
        """The warm shutdown's last task ended: the process exits and the pod goes after ``exit_seconds``."""
        if self.model.exit_seconds <= 0:
            self._gone(pod)
        else:
            self.push(self.now + min(self.model.exit_seconds, self.model.grace), EXITED, pod.number)

    def _kill(self, pod: Pod) -> None:
        """The grace period is over: SIGKILL. Running acks_late tasks come back after the visibility timeout."""
        for task in sorted(pod.running):
            self.killed += 1
            if self.model.acks_late:
                self.pending_redeliveries += 1
                self.push(self.now + self.model.visibility_timeout, REDELIVER, 0, task)
            else:
                self.lost += 1
        pod.running.clear()
        self._gone(pod)

    def _gone(self, pod: Pod) -> None:
        if pod.state == TERMINATING:
            self.terminating -= 1
        pod.state = GONE
        self.pod_seconds_done += self.now - pod.created
        del self.pods[pod.number]

    # --- what is there --------------------------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(p.held for p in self.pods.values() if p.state == READY)

    def busy(self) -> bool:
        """Tasks waiting, held by a pod, or due to come back."""
        return bool(self.queue) or self.pending_redeliveries > 0 or any(p.held for p in self.pods.values())

    def pod_seconds(self, end: float) -> float:
        return self.pod_seconds_done + sum(end - p.created for p in self.pods.values())
