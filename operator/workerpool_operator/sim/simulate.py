"""Replay a workload trace against a simulated queue under a scaling policy: ours (the real engine) or KEDA's.

A discrete-event simulation, deterministic for a seed. Tasks arrive from the trace into one FIFO queue. Each
pod starts ``startup_delay`` seconds after it is created, then runs up to ``concurrency`` tasks at a time;
a free slot takes the next waiting task at once (Redis serves blocked BRPOPs in order, so slots are handed
out oldest-waiting first). A pod that is scaled down stops taking tasks, finishes what it runs (Celery's warm
shutdown) and goes; a pod still starting goes at once. Replica-seconds count every pod from creation to
exit, the price of the pods that start and drain included.

- ``ours``: every ``poll_interval`` the engine's ``decide`` sees the backlog, the tasks in flight and each
  ready pod's load, as the operator's observer would; scale-downs remove the pods it names first.
- ``keda``: ``keda_model``'s two loops see only the list length; Kubernetes' ReplicaSet removes starting pods
  first, then the youngest.

After the trace ends the simulation runs on until every task is done and the replicas are back at the
minimum (at most ``drain_limit`` seconds more), so each policy pays for its own scale-down tail.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from workerpool_operator.engine import QueueState, ScalingPolicy, decide
from workerpool_operator.observation import QueueObservation, WorkerLoad
from workerpool_operator.sim.keda_model import KedaSettings, KedaState, hpa_sync, keda_poll

PolicyName = Literal["ours", "keda"]

STARTING, READY, DRAINING, GONE = 0, 1, 2, 3
POD_READY, TASK_DONE, POLL, KEDA_POLL, HPA_SYNC = 0, 1, 2, 3, 4

TIMELINE_COLUMNS = ("policy", "time", "backlog", "in_flight", "replicas", "ready", "pods", "desired", "reason")


@dataclass(frozen=True, slots=True)
class QueueSetup:
    """What the simulator needs of one queue of a WorkerPool."""

    name: str
    policy: ScalingPolicy
    concurrency: int
    poll_interval: float


@dataclass(slots=True)
class Pod:
    number: int
    name: str
    created: float
    state: int = STARTING
    running: int = 0
    free: int = 0  # free slots while ready
    ready_at: float = math.inf


@dataclass(frozen=True, slots=True)
class TimelineRow:
    time: float
    backlog: int
    in_flight: int
    replicas: int  # pods the Deployment wants (starting + ready)
    ready: int
    pods: int  # every pod that exists, draining ones included
    desired: int
    reason: str


@dataclass(slots=True)
class SimResult:
    policy: PolicyName
    queue: str
    tasks: int
    finished: int
    waits: list[float]  # seconds each started task waited, in start order
    replica_seconds: float
    scale_events: int
    peak_replicas: int
    duration: float  # simulated seconds (the trace plus the drain)
    trace_end: float
    timeline: list[TimelineRow] = field(default_factory=list)

    def wait_percentile(self, q: float) -> float:
        """Nearest-rank percentile of the task waits (unstarted tasks count with their wait so far)."""
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    @property
    def max_wait(self) -> float:
        return max(self.waits, default=0.0)


def simulate(
    tasks: Sequence[tuple[float, float]],
    setup: QueueSetup,
    policy: PolicyName = "ours",
    *,
    startup_delay: float = 20.0,
    trace_end: float | None = None,
    initial_replicas: int | None = None,
    drain_limit: float = 4 * 3600.0,
    keda: KedaSettings | None = None,
) -> SimResult:
    """Run the tasks (sorted (arrival, duration) pairs) through a queue scaled by ``policy``."""
    return _Simulation(tasks, setup, policy, startup_delay, trace_end, initial_replicas, drain_limit, keda).run()


class _Simulation:
    def __init__(
        self,
        tasks: Sequence[tuple[float, float]],
        setup: QueueSetup,
        policy: PolicyName,
        startup_delay: float,
        trace_end: float | None,
        initial_replicas: int | None,
        drain_limit: float,
        keda: KedaSettings | None,
    ) -> None:
        if policy not in ("ours", "keda"):
            raise ValueError(f"unknown policy {policy!r}: ours or keda")
        if startup_delay < 0 or setup.concurrency < 1 or setup.poll_interval <= 0:
            raise ValueError("startup delay must be >= 0, concurrency >= 1 and the poll interval > 0")
        self.tasks = tasks
        self.setup = setup
        self.policy_name: PolicyName = policy
        self.startup_delay = startup_delay
        last_arrival = tasks[-1][0] if tasks else 0.0
        self.trace_end = max(trace_end if trace_end is not None else 0.0, last_arrival)
        self.horizon = self.trace_end + drain_limit
        self.keda = keda or KedaSettings.like(setup.policy)
        self.floor = setup.policy.min_replicas if policy == "ours" else self.keda.min_replicas
        start = self.floor if initial_replicas is None else initial_replicas

        self.pods: dict[int, Pod] = {}
        self.alive: list[Pod] = []  # starting + ready, oldest first: the Deployment's replicas
        self.draining = 0
        self.free_slots: deque[int] = deque()  # one entry per free slot, by pod number; stale ones skipped
        self.free_total = 0
        self.queue: deque[int] = deque()  # waiting task indexes
        self.in_flight = 0
        self.heap: list[tuple[float, int, int, int]] = []  # (time, kind, sequence, payload)
        self.sequence = 0
        self.waits: list[float] = []
        self.finished = 0
        self.pod_seconds_done = 0.0  # of pods gone
        self.pod_numbers = 0
        self.scale_events = 0
        self.peak = 0
        self.timeline: list[TimelineRow] = []
        self.state = QueueState()
        self.keda_state = KedaState()
        self.now = 0.0
        for _ in range(start):
            self._create_pod(ready_now=True)

    # --- events ---------------------------------------------------------------------------------------

    def _push(self, time: float, kind: int, payload: int = 0) -> None:
        self.sequence += 1
        heapq.heappush(self.heap, (time, kind, self.sequence, payload))

    def run(self) -> SimResult:
        tasks, n = self.tasks, len(self.tasks)
        if self.policy_name == "ours":
            self._push(0.0, POLL)
        else:
            self._push(0.0, KEDA_POLL)
            self._push(0.0, HPA_SYNC)
        heap, queue, free_slots, pods = self.heap, self.queue, self.free_slots, self.pods
        heappop, heappush = heapq.heappop, heapq.heappush
        waits_append = self.waits.append
        index = 0
        next_arrival = tasks[0][0] if n else math.inf
        while True:
            event_time = heap[0][0] if heap else math.inf
            if next_arrival <= event_time:  # an arrival (arrivals before events at the same instant)
                now = next_arrival
                if now > self.horizon:
                    break
                # a free slot takes it at once, else it waits
                started = False
                while self.free_total:
                    pod = pods.get(free_slots.popleft())  # type: ignore[assignment]
                    if pod is None or pod.state != READY or not pod.free:
                        continue
                    pod.free -= 1
                    self.free_total -= 1
                    pod.running += 1
                    self.in_flight += 1
                    waits_append(0.0)
                    self.sequence += 1
                    heappush(heap, (now + tasks[index][1], TASK_DONE, self.sequence, pod.number))
                    started = True
                    break
                if not started:
                    queue.append(index)
                index += 1
                next_arrival = tasks[index][0] if index < n else math.inf
                continue
            if event_time > self.horizon:
                break
            now, kind, _, payload = heappop(heap)
            self.now = now
            if kind == TASK_DONE:
                pod = pods[payload]
                pod.running -= 1
                self.in_flight -= 1
                self.finished += 1
                if pod.state == READY:
                    if queue:
                        task = queue.popleft()
                        pod.running += 1
                        self.in_flight += 1
                        waits_append(now - tasks[task][0])
                        self.sequence += 1
                        heappush(heap, (now + tasks[task][1], TASK_DONE, self.sequence, pod.number))
                    else:
                        pod.free += 1
                        self.free_total += 1
                        free_slots.append(pod.number)
                elif pod.state == DRAINING and not pod.running:
                    self._gone(pod, now)
            elif kind == POD_READY:
                pod = pods[payload]
                if pod.state == STARTING:
                    self._ready(pod, now)
            else:
                self._control(kind, now)
                if index >= n and self._settled():
                    break
        end = min(max(self.now, self.trace_end), self.horizon)
        for task in self.queue:  # never started: count what they waited so far
            self.waits.append(end - tasks[task][0])
        pod_seconds = self.pod_seconds_done + sum(end - p.created for p in self.pods.values() if p.state != GONE)
        return SimResult(
            policy=self.policy_name,
            queue=self.setup.name,
            tasks=n,
            finished=self.finished,
            waits=self.waits,
            replica_seconds=pod_seconds,
            scale_events=self.scale_events,
            peak_replicas=self.peak,
            duration=end,
            trace_end=self.trace_end,
            timeline=self.timeline,
        )

    def _settled(self) -> bool:
        return (
            self.now >= self.trace_end
            and not self.queue
            and not self.in_flight
            and not self.draining
            and len(self.alive) <= self.floor
        )

    # --- pods -----------------------------------------------------------------------------------------

    def _create_pod(self, ready_now: bool = False) -> None:
        self.pod_numbers += 1
        number = self.pod_numbers
        pod = Pod(number, f"{self.setup.name}-{number}", self.now)
        self.pods[number] = pod
        self.alive.append(pod)
        if ready_now:
            self._ready(pod, self.now)
        else:
            pod.ready_at = self.now + self.startup_delay
            self._push(pod.ready_at, POD_READY, number)

    def _ready(self, pod: Pod, now: float) -> None:
        pod.state = READY
        pod.ready_at = now
        concurrency = self.setup.concurrency
        tasks = self.tasks
        while self.queue and pod.running < concurrency:
            task = self.queue.popleft()
            pod.running += 1
            self.in_flight += 1
            self.waits.append(now - tasks[task][0])
            self._push(now + tasks[task][1], TASK_DONE, pod.number)
        pod.free = concurrency - pod.running
        self.free_total += pod.free
        self.free_slots.extend([pod.number] * pod.free)

    def _gone(self, pod: Pod, now: float) -> None:
        if pod.state == DRAINING:
            self.draining -= 1
        pod.state = GONE
        self.pod_seconds_done += now - pod.created
        del self.pods[pod.number]

    def _remove(self, pod: Pod) -> None:
        self.alive.remove(pod)
        if pod.state == STARTING:
            self._gone(pod, self.now)
            return
        self.free_total -= pod.free
        pod.free = 0
        if pod.running:
            pod.state = DRAINING
            self.draining += 1
        else:
            self._gone(pod, self.now)

    def _scale(self, desired: int, remove_first: Sequence[str] = ()) -> None:
        current = len(self.alive)
        if desired == current:
            return
        self.scale_events += 1
        if desired > current:
            for _ in range(desired - current):
                self._create_pod()
            self.peak = max(self.peak, desired)
            return
        count = current - desired
        victims = [p for p in reversed(self.alive) if p.state == STARTING][:count]
        if self.policy_name == "ours":
            # the operator marks the pods it names (pod-deletion-cost): those go first, then the idlest
            named = {p.name: p for p in self.alive if p.state == READY}
            victims += [named[name] for name in remove_first if name in named][: count - len(victims)]
            if len(victims) < count:
                rest = sorted(
                    (p for p in self.alive if p.state == READY and p not in victims), key=lambda p: (p.running, p.name)
                )
                victims += rest[: count - len(victims)]
        else:
            # the ReplicaSet: not ready first (above), then the most recently ready
            ready = sorted((p for p in self.alive if p.state == READY), key=lambda p: -p.ready_at)
            victims += ready[: count - len(victims)]
        for pod in victims[:count]:
            self._remove(pod)

    # --- control loops --------------------------------------------------------------------------------

    def _control(self, kind: int, now: float) -> None:
        replicas = len(self.alive)
        backlog = len(self.queue)
        if kind == POLL:
            workers = tuple(WorkerLoad(p.name, running=p.running) for p in self.alive if p.state == READY)
            observation = QueueObservation(self.setup.name, backlog, self.in_flight, workers, replicas=replicas)
            decision, self.state = decide(observation, self.state, self.setup.policy, now)
            desired, reason = decision.desired_replicas, decision.reason
            self._scale(desired, decision.remove_first)
            self._push(now + self.setup.poll_interval, POLL)
        elif kind == KEDA_POLL:
            action, self.keda_state = keda_poll(backlog, replicas, self.keda_state, self.keda, now)
            desired, reason = action
            self._scale(desired)
            self._push(now + self.keda.polling_interval, KEDA_POLL)
        else:
            action, self.keda_state = hpa_sync(backlog, replicas, self.keda_state, self.keda, now)
            desired, reason = action
            self._scale(desired)
            self._push(now + self.keda.hpa_sync_period, HPA_SYNC)
        ready = sum(1 for p in self.alive if p.state == READY)
        self.timeline.append(
            TimelineRow(now, backlog, self.in_flight, len(self.alive), ready, len(self.pods), desired, reason)
        )


# --- output -------------------------------------------------------------------------------------------


def summary_rows(results: Sequence[SimResult]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("", *(r.policy for r in results))]
    rows.append(("tasks done", *(f"{r.finished:,} of {r.tasks:,}" for r in results)))
    rows.append(("task wait p50", *(f"{r.wait_percentile(50):.1f} s" for r in results)))
    rows.append(("task wait p95", *(f"{r.wait_percentile(95):.1f} s" for r in results)))
    rows.append(("task wait max", *(f"{r.max_wait:.1f} s" for r in results)))
    rows.append(("replica-seconds", *(f"{r.replica_seconds:,.0f}" for r in results)))
    rows.append(("mean replicas", *(f"{r.replica_seconds / max(r.duration, 1e-9):.2f}" for r in results)))
    rows.append(("peak replicas", *(str(r.peak_replicas) for r in results)))
    rows.append(("scale events", *(str(r.scale_events) for r in results)))
    rows.append(("simulated", *(f"{r.duration / 3600:.2f} h" for r in results)))
    return rows


def format_summary(results: Sequence[SimResult]) -> str:
    rows = summary_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def write_timeline(path: str, results: Sequence[SimResult]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TIMELINE_COLUMNS)
        for result in results:
            for row in result.timeline:
                writer.writerow(
                    (result.policy, f"{row.time:.3f}", row.backlog, row.in_flight, row.replicas, row.ready, row.pods,
                     row.desired, row.reason)
                )  # fmt: skip


def plot_timeline(path: str, results: Sequence[SimResult], title: str) -> None:
    """A PNG of backlog and replicas over time, one line per policy."""
    from matplotlib.figure import Figure  # optional dependency, imported only for --plot
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 6.5), layout="constrained")
    backlog_axes, replica_axes = figure.subplots(2, 1, sharex=True)
    span = max((r.duration for r in results), default=0.0)
    scale, unit = (3600.0, "hours") if span > 3 * 3600 else (60.0, "minutes")
    colors = {"ours": "tab:blue", "keda": "tab:orange"}
    for result in results:
        times = [row.time / scale for row in result.timeline]
        color = colors.get(result.policy)
        layer = 3 if result.policy == "ours" else 2  # ours on top: it is the one being tried
        label = (
            f"{result.policy} (wait p95 {result.wait_percentile(95):.1f} s, {result.replica_seconds:,.0f} replica-s)"
        )
        backlog_axes.plot(
            times, [row.backlog for row in result.timeline], color=color, lw=1.0, label=label, zorder=layer
        )
        replica_axes.step(times, [row.pods for row in result.timeline], where="post", color=color, lw=1.2,
                          label=f"{result.policy}: pods (starting, ready, draining)", zorder=layer)  # fmt: skip
        replica_axes.step(times, [row.ready for row in result.timeline], where="post", color=color, lw=0.8,
                          ls=":", label=f"{result.policy}: ready", zorder=layer)  # fmt: skip
    if results and results[0].trace_end < span:
        for axes in (backlog_axes, replica_axes):
            axes.axvline(results[0].trace_end / scale, color="grey", lw=0.8, ls="--")
    backlog_axes.set_ylabel("tasks waiting")
    backlog_axes.set_title(title)
    backlog_axes.legend(loc="upper right", fontsize="small")
    replica_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    replica_axes.set_ylabel("pods")
    replica_axes.set_xlabel(f"time ({unit})")
    replica_axes.legend(loc="upper right", fontsize="small")
    for axes in (backlog_axes, replica_axes):
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
        axes.set_xlim(0, span / scale if span else 1)
    figure.savefig(path, dpi=110)


# --- the `simulate` command ---------------------------------------------------------------------------

DEFAULT_SERVICE_TIME = "exp:1"


class SimulationError(ValueError):
    """Bad input to the simulate command (file, queue, trace); the message says what to fix."""


def load_setup(path: str, queue: str | None) -> tuple[str, QueueSetup]:
    """The pool's name and one queue's setup, read from a WorkerPool YAML file (other documents are skipped)."""
    import yaml

    from workerpool_operator.spec import SpecError, WorkerPool

    try:
        with open(path) as handle:
            documents = [d for d in yaml.safe_load_all(handle) if isinstance(d, dict)]
    except OSError as exc:
        raise SimulationError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SimulationError(f"{path}: not valid YAML: {exc}") from None
    pools = [d for d in documents if d.get("kind") == "WorkerPool"]
    if len(pools) != 1:
        found = "no WorkerPool" if not pools else f"{len(pools)} WorkerPools"
        raise SimulationError(f"{path}: expected one WorkerPool, found {found}")
    try:
        pool = WorkerPool.from_object(pools[0])
    except SpecError as exc:
        raise SimulationError(f"{path}: {exc}") from None
    spec = pool.spec
    name = queue or spec.queues[0].name
    try:
        queue_spec = spec.queue(name)
    except KeyError as exc:
        raise SimulationError(f"{path}: {exc.args[0]}") from None
    setup = QueueSetup(name, spec.policy_for(name), queue_spec.concurrency, spec.poll_interval_for(name))
    return pool.name, setup


def run_command(
    filename: str,
    trace_path: str,
    *,
    queue: str | None = None,
    policy: str = "ours",
    startup_delay: float = 20.0,
    service_time: str | None = None,
    seed: int = 1,
    replicas: int | None = None,
    out: str | None = None,
    plot: str | None = None,
) -> str:
    """What ``workerpool-operator simulate`` does; returns the text to print. Raises ``ValueError`` subclasses
    (``SimulationError``, ``TraceError``) with a message for the user."""
    from workerpool_operator.sim.trace import draw_tasks, read_trace

    pool, setup = load_setup(filename, queue)
    if startup_delay < 0:
        raise SimulationError(f"--startup-delay must not be negative, got {startup_delay:g}")
    if replicas is not None and replicas < 0:
        raise SimulationError(f"--replicas must not be negative, got {replicas}")
    trace = read_trace(trace_path)
    tasks = draw_tasks(trace, DEFAULT_SERVICE_TIME, seed, override=service_time)
    names: list[PolicyName] = ["ours", "keda"] if policy == "both" else [policy]  # type: ignore[list-item]
    results = [
        simulate(tasks, setup, name, startup_delay=startup_delay, trace_end=trace.end, initial_replicas=replicas)
        for name in names
    ]
    p = setup.policy
    lines = [
        f"queue {setup.name} of WorkerPool {pool}: concurrency {setup.concurrency}, target {p.target_per_replica} "
        f"per replica, replicas {p.min_replicas}..{p.max_replicas}, poll every {setup.poll_interval:g}s",
        f"trace {trace_path}: {len(tasks):,} tasks over {trace.end / 3600:.2f} h; pod start-up {startup_delay:g}s; "
        f"seed {seed}",
        "",
        format_summary(results),
    ]
    if out:
        write_timeline(out, results)
        lines.append(f"\ntimeline written to {out}")
    if plot:
        plot_timeline(plot, results, f"{pool}/{setup.name} on {trace_path.rsplit('/', 1)[-1]}")
        lines.append(f"plot written to {plot}")
    return "\n".join(lines)
