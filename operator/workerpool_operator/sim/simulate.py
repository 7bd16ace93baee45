"""Replay a workload trace against a simulated queue under a scaling policy: ours (the real engine) or KEDA's.

A discrete-event simulation, deterministic for a seed. ``cluster.py`` models Redis, the Celery workers
(concurrency, prefetch, drain, warm shutdown within the grace period, kills and redelivery) and the
ReplicaSet; this module adds the control loops and runs the clock:

- ``ours``: every ``poll_interval`` the engine's ``decide`` sees the backlog, the tasks in flight and each
  ready worker's report (running, reserved, done, draining, when it became ready), as the operator's
  observer would. The simulator then does what the operator's backend does: it asks the workers the
  decision names to drain or to come back, marks the pods in ``remove_first`` with a low deletion cost and
  sets the replicas.
- ``keda``: ``keda_model``'s two loops see only the list length; the ReplicaSet removes pods that are not
  ready first, then the most recently ready, busy or not.

Each pod's start-up delay is drawn from a distribution (``startup``: ``const:20``, ``uniform:10,40``, ...).
After the trace ends the simulation runs on until every task is done and the replicas are back at the
minimum (at most ``drain_limit`` seconds more), so each policy pays for its own scale-down tail.
"""

from __future__ import annotations

import datetime
import functools
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cronsim import CronSim

from workerpool_operator.engine import QueueState, ScalingPolicy, decide
from workerpool_operator.engine.execute import Actions, actions
from workerpool_operator.observation import QueueObservation, WorkerLoad
from workerpool_operator.sim.cluster import CONTROL, READY, Cluster, WorkerModel
from workerpool_operator.sim.keda_model import KedaSettings, KedaState, hpa_sync, keda_poll
from workerpool_operator.sim.trace import parse_distribution

PolicyName = Literal["ours", "keda"]

POLL, KEDA_POLL, HPA_SYNC = 0, 1, 2
REPORT_INTERVAL = 2.0  # seconds between a worker's reports (reports.DEFAULT_INTERVAL)
EXIT_SECONDS = 2.0  # SIGTERM (or the end of the last task) to a worker's exit: measured by bench/bench_calibrate.py
EPOCH = 1_767_571_200.0  # 2026-01-05T00:00:00Z, a Monday: simulated time 0, for cron schedules and reports

TIMELINE_COLUMNS = (
    "policy", "time", "backlog", "in_flight", "replicas", "ready", "pods", "draining", "desired", "reason",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueueSetup:
    """What the simulator needs of one queue of a WorkerPool."""

    name: str
    policy: ScalingPolicy
    concurrency: int
    poll_interval: float
    prefetch_multiplier: int = 1
    grace: float = 30.0  # the pods' terminationGracePeriodSeconds


@dataclass(frozen=True, slots=True)
class TimelineRow:
    time: float
    backlog: int
    in_flight: int
    replicas: int  # pods the Deployment wants (starting + ready, draining included)
    ready: int
    pods: int  # every pod that exists, terminating ones included
    draining: int
    desired: int
    reason: str


@dataclass(frozen=True, slots=True)
class Executed:
    """One poll of our policy, as ``simulate(..., record_polls=True)`` keeps it: what it saw and what it did."""

    at: float  # unix time (simulated time + EPOCH), the engine's ``now``
    observation: QueueObservation  # replicas included
    actions: Actions


@dataclass(slots=True)
class SimResult:
    policy: PolicyName
    queue: str
    tasks: int
    finished: int
    waits: list[float]  # seconds each task waited before the run that counted (unstarted: its wait so far)
    replica_seconds: float
    scale_events: int
    peak_replicas: int
    duration: float  # simulated seconds (the trace plus the drain)
    trace_end: float
    physical_minimum: float = 0.0  # total task time / concurrency: a perfectly packed fleet's replica-seconds
    killed: int = 0  # tasks killed at the end of a pod's grace period
    redelivered: int = 0  # killed acks_late tasks that came back after the visibility timeout
    lost: int = 0  # killed tasks that were not acks_late
    drains: int = 0  # workers asked to drain
    label: str = ""  # how the summary names this run (default: the policy)
    timeline: list[TimelineRow] = field(default_factory=list)
    polls: list[Executed] = field(default_factory=list)  # with record_polls: every poll of our policy

    def __post_init__(self) -> None:
        self.label = self.label or self.policy

    def wait_percentile(self, q: float) -> float:
        """Nearest-rank percentile of the task waits."""
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    @property
    def max_wait(self) -> float:
        return max(self.waits, default=0.0)

    @property
    def cost_ratio(self) -> float:
        """Replica-seconds / the physical minimum (inf when the trace has no work)."""
        return self.replica_seconds / self.physical_minimum if self.physical_minimum > 0 else math.inf


def simulate(
    tasks: Sequence[tuple[float, float]],
    setup: QueueSetup,
    policy: PolicyName = "ours",
    *,
    startup_delay: float | str = 20.0,
    trace_end: float | None = None,
    initial_replicas: int | None = None,
    drain_limit: float = 4 * 3600.0,
    keda: KedaSettings | None = None,
    acks_late: bool = False,
    visibility_timeout: float = 3600.0,
    seed: int = 1,
    beat: Sequence[str] = (),
    report_interval: float = REPORT_INTERVAL,
    exit_seconds: float = EXIT_SECONDS,
    record_polls: bool = False,
) -> SimResult:
    """Run the tasks (sorted (arrival, duration) pairs) through a queue scaled by ``policy``.

    ``startup_delay``: seconds from a pod's creation to its first task, a number or a distribution.
    ``beat``: cron expressions of the trace's periodic tasks, announced to our engine as Celery beat announces
    its next fires (``QueueObservation.fires``, an hour ahead): beat-aware capacity. KEDA knows nothing of them.
    ``record_polls``: keep every poll of our policy in ``SimResult.polls`` (what the scaling loop would be handed).
    """
    if policy not in ("ours", "keda"):
        raise ValueError(f"unknown policy {policy!r}: ours or keda")
    if setup.concurrency < 1 or setup.poll_interval <= 0:
        raise ValueError("concurrency must be >= 1 and the poll interval > 0")
    model = WorkerModel(
        setup.concurrency, setup.prefetch_multiplier, acks_late, setup.grace, visibility_timeout, report_interval,
        exit_seconds,
    )  # fmt: skip
    run = _Simulation(tasks, setup, policy, model, _startup(startup_delay, seed), keda)
    run.beat = tuple(beat)
    if record_polls:
        run.polls = []
    return run.run(trace_end, initial_replicas, drain_limit)


def announced_fires(crons: Sequence[str], at: float, horizon: float = 3600.0) -> tuple[tuple[float, str], ...]:
    """The fires of ``crons`` after ``at`` and within ``horizon``, as beat announces them (source: the cron)."""
    fires = []
    for cron in crons:
        fire = _next_fire(cron, at - at % 60.0)
        if fire <= at:
            fire = _next_fire(cron, at - at % 60.0 + 60.0)
        if fire <= at + horizon:
            fires.append((fire, cron))
    return tuple(fires)


@functools.lru_cache(maxsize=1024)
def _next_fire(cron: str, minute: float) -> float:
    return next(CronSim(cron, datetime.datetime.fromtimestamp(minute, datetime.UTC))).timestamp()


def _startup(spec: float | str, seed: int) -> Callable[[], float]:
    if isinstance(spec, int | float):
        if spec < 0 or not math.isfinite(spec):
            raise ValueError("the start-up delay must be a finite number >= 0")
        spec = f"const:{spec}" if spec > 0 else "const:0"
    sample = parse_distribution(spec, allow_zero=True)
    rng = random.Random(f"{seed}:startup")
    return lambda: sample(rng)


class _Simulation(Cluster):
    def __init__(
        self,
        tasks: Sequence[tuple[float, float]],
        setup: QueueSetup,
        policy: PolicyName,
        model: WorkerModel,
        startup: Callable[[], float],
        keda: KedaSettings | None,
    ) -> None:
        super().__init__(tasks, setup.name, model)
        self.setup = setup
        self.policy_name: PolicyName = policy
        self.startup = startup
        self.keda = keda or KedaSettings.like(setup.policy)
        self.floor = setup.policy.min_replicas if policy == "ours" else self.keda.min_replicas
        self.state = QueueState()
        self.keda_state = KedaState()
        self.scale_events = 0
        self.peak = 0
        self.drains = 0
        self.timeline: list[TimelineRow] = []
        self.beat: tuple[str, ...] = ()
        self.polls: list[Executed] | None = None  # recording: see simulate(record_polls=)

    def run(self, trace_end: float | None, initial_replicas: int | None, drain_limit: float) -> SimResult:
        tasks, n = self.tasks, len(self.tasks)
        last_arrival = tasks[-1][0] if tasks else 0.0
        end_of_trace = max(trace_end if trace_end is not None else 0.0, last_arrival)
        horizon = end_of_trace + drain_limit
        for _ in range(self.floor if initial_replicas is None else initial_replicas):
            self.create_pod(0.0)
        self.peak = len(self.pods)
        if self.policy_name == "ours":
            self.push(0.0, CONTROL, POLL)
        else:
            self.push(0.0, CONTROL, KEDA_POLL)
            self.push(0.0, CONTROL, HPA_SYNC)
        heap, heappop = self.heap, heapq.heappop
        index = 0
        next_arrival = tasks[0][0] if n else math.inf
        while True:
            event_time = heap[0][0] if heap else math.inf
            if next_arrival <= event_time:  # arrivals before events at the same instant
                if next_arrival > horizon:
                    break
                self.now = next_arrival
                self.arrive(index)
                index += 1
                next_arrival = tasks[index][0] if index < n else math.inf
                continue
            if event_time > horizon:
                break
            now, kind, _, pod, task = heappop(heap)
            self.now = now
            if kind != CONTROL:
                self.handle(kind, pod, task)
                continue
            self._control(pod)
            if index >= n and now >= end_of_trace and self._settled():
                break
        return self._result(end_of_trace, horizon)

    def _settled(self) -> bool:
        return not self.busy() and not self.terminating and len(self.replicas()) <= self.floor

    def _result(self, trace_end: float, horizon: float) -> SimResult:
        end = min(max(self.now, trace_end), horizon)
        tasks = self.tasks
        waits = [
            start - arrival if start == start else end - arrival  # NaN: never started
            for start, (arrival, _) in zip(self.starts, tasks, strict=True)
        ]
        return SimResult(
            policy=self.policy_name,
            queue=self.setup.name,
            tasks=len(tasks),
            finished=self.finished,
            waits=waits,
            replica_seconds=self.pod_seconds(end),
            scale_events=self.scale_events,
            peak_replicas=self.peak,
            duration=end,
            trace_end=trace_end,
            physical_minimum=sum(d for _, d in tasks) / self.concurrency,
            killed=self.killed,
            redelivered=self.redelivered,
            lost=self.lost,
            drains=self.drains,
            timeline=self.timeline,
            polls=self.polls or [],
        )

    # --- control loops --------------------------------------------------------------------------------

    def _scale(self, desired: int, marked: Sequence[str] = ()) -> None:
        if self.scale_to(desired, marked, self.startup):
            self.scale_events += 1
            self.peak = max(self.peak, len(self.replicas()))

    def _control(self, loop: int) -> None:
        now = self.now
        backlog = len(self.queue)
        replicas = len(self.replicas())
        if loop == POLL:
            desired, reason = self._decide(now, backlog, replicas)
            self.push(now + self.setup.poll_interval, CONTROL, POLL)
        elif loop == KEDA_POLL:
            (desired, reason), self.keda_state = keda_poll(backlog, replicas, self.keda_state, self.keda, now)
            self._scale(desired)
            self.push(now + self.keda.polling_interval, CONTROL, KEDA_POLL)
        else:
            (desired, reason), self.keda_state = hpa_sync(backlog, replicas, self.keda_state, self.keda, now)
            self._scale(desired)
            self.push(now + self.keda.hpa_sync_period, CONTROL, HPA_SYNC)
        alive = self.replicas()
        ready = [p for p in alive if p.state == READY]
        self.timeline.append(
            TimelineRow(
                now, backlog, self.in_flight(), len(alive), len(ready), len(self.pods),
                sum(1 for p in ready if p.draining), desired, reason,
            )
        )  # fmt: skip

    def _decide(self, now: float, backlog: int, replicas: int) -> tuple[int, str]:
        """One poll of the operator: reports in, decision out, applied as the backend applies it."""
        at = EPOCH + now
        ready = sorted((p for p in self.pods.values() if p.state == READY), key=lambda p: p.number)
        concurrency, report_of = self.concurrency, self.report_of
        workers = tuple(
            WorkerLoad(p.name, running, reserved, done, EPOCH + reported, concurrency, draining, EPOCH + p.ready_at)
            for p in ready
            for running, reserved, done, draining, reported in (report_of(p),)
        )
        in_flight = sum(w.running + w.reserved for w in workers)
        fires = announced_fires(self.beat, at) if self.beat else ()
        observation = QueueObservation(self.name, backlog, in_flight, workers, replicas=replicas, fires=fires)
        before = self.state
        decision, self.state = decide(observation, before, self.setup.policy, at)
        todo = actions(before, self.state, decision, replicas, at, workers)
        if self.polls is not None:
            self.polls.append(Executed(at, observation, todo))
        by_name = {p.name: p for p in ready}
        for name in todo.drain:  # every request held, every poll: a worker reads its own at its next report
            pod = by_name.get(name)
            if pod is not None and not pod.requested:
                self.ask_drain(pod)
                self.drains += 1
        for name in todo.release:
            if name in by_name:
                self.ask_drain(by_name[name], False)
        if todo.scale_to is not None:
            self._scale(todo.scale_to, todo.remove_first)
        return decision.desired_replicas, decision.reason
