"""What users see of each poll: metrics always, Events on changes, and the status when it is worth a write.

The scaling loop hands every pool's :class:`~workerpool_operator.scaling_types.PoolResult` to
:meth:`StatusReporter.report`; reconcile hands it the pool's problems through :meth:`StatusReporter.write`.
What the status says is decided by the pure functions of ``status.py`` and ``conditions.py``; this class keeps,
per pool, what it last wrote, and writes only while this replica may (it holds the Lease, or runs alone).

It also keeps each queue's waits (``engine/wait_watch.py``): a watch per queue that has a target wait or had tasks
waiting within the window (an idle queue without a target keeps none), resumed from the status a previous leader
wrote (since when the queue is above its target), and the targets broken now, which ``WaitsWithinTarget`` and the
``WaitAboveTarget`` / ``WaitWithinTarget`` Events say.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from workerpool_operator.engine import QueueState, ScalingPolicy
from workerpool_operator.engine.wait_watch import Breach, Change, Waits, WaitWatch
from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube import metrics
from workerpool_operator.kube.api import ApiError, KubeApi
from workerpool_operator.kube.backend import KubeBackend
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.status import (
    QueueFigures,
    build_status,
    from_wire,
    merge_patch,
    pending,
    pool_figures,
    scaler_states,
    to_wire,
    unix_time,
    wait_poll,
    write_needed,
)
from workerpool_operator.kube.workloads import Told, WorkloadFacts, WorkloadNotes
from workerpool_operator.scaling_types import PoolKey, PoolResult, QueueResult

logger = logging.getLogger(__name__)

WRITES_IN_FLIGHT = 16  # status writes of the scaling loop's reports on their way at once (see StatusReporter.report)


class PoolFacts(WorkloadFacts, Protocol):
    """What the reporter needs to know of a pool besides a poll (its workloads': ``workloads.WorkloadFacts``)."""

    @property
    def key(self) -> PoolKey: ...
    @property
    def uid(self) -> str | None: ...
    @property
    def generation(self) -> int | None: ...
    @property
    def queue_names(self) -> list[str]: ...
    @property
    def problem(self) -> cond.Problem | None: ...
    @property
    def broker_label(self) -> str: ...
    def bounds(self, queue: str) -> tuple[int, int] | None:
        """The queue's min and max replicas, if the pool has a plan."""

    def policy(self, queue: str) -> ScalingPolicy | None:
        """The queue's scaling policy, if the pool has a plan."""

    @property
    def beat_deployment(self) -> str | None: ...
    @property
    def versions(self) -> Mapping[str, int]:
        """Each queue's current pod template version (``reports.version_number``); empty without a plan."""

    @property
    def beat_duplicates(self) -> tuple[str, ...]: ...


@dataclass
class _Written:
    """The status of one pool as last written by this replica (or as last seen, while it did not write)."""

    status: dict[str, Any] | None = None
    at: float = 0.0
    broker_error: str | None = None
    observed: bool = False  # a poll came back since this replica began to serve the pool
    drain_failing: set[str] = field(default_factory=set)  # queues whose drain requests could not be sent
    watches: dict[str, WaitWatch] = field(default_factory=dict)  # queues with a target, or tasks waiting lately
    breaches: dict[str, Breach] = field(default_factory=dict)  # queues whose target is broken now
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    told: Told = field(default_factory=Told)  # what the workload Events said last
    # What the last poll reported amounted to (see StatusReporter._quiet), when it left nothing to write later.
    quiet: tuple[Any, ...] | None = None
    sending: asyncio.Task[None] | None = None  # a write of the status on its way (report(..., wait=False))


_IDLE = Waits(0.0, None, 0.0, None, None, None)  # a queue without a target that has had nothing waiting lately


def _watch_waits(
    pool: PoolFacts, result: QueueResult, ready: int | None, written: _Written, now: float
) -> tuple[Waits, tuple[str, str, str] | None]:
    """The queue's waits after this poll (its watch made when it has a target or tasks wait, dropped once it has
    nothing to remember) and their metrics; and the Event (type, reason, message) to post when its target is broken
    or kept again. (Not a coroutine: it runs for every queue at every poll, most of them idle.)"""
    name, observation = result.queue, result.observation
    policy = pool.policy(name)
    watch = written.watches.get(name)
    if watch is None:
        if not observation.backlog and observation.ok and (policy is None or policy.target_wait is None):
            metrics.record_waits(*pool.key, name, oldest=0.0, p95=0.0, target=None, above_target=False)
            return _IDLE, None
        watch = written.watches[name] = WaitWatch(above_since=_above_since(written.status, name))
    poll = wait_poll(result, policy, ready, now)
    waits, change = watch.update(poll)
    if poll.target is None and watch.idle:
        del written.watches[name]
    if waits.breach is not None:
        written.breaches[name] = waits.breach
    else:
        written.breaches.pop(name, None)
    metrics.record_waits(
        *pool.key, name, oldest=waits.oldest, p95=waits.p95, target=waits.target, above_target=bool(waits.breach)
    )
    return waits, _wait_event(name, waits, change)


def _at_rest(state: QueueState) -> QueueState:
    """The engine state without the time of its latest recommendation, which moves at every poll at rest."""
    recommendations = state.recommendations
    if not recommendations:
        return state
    return state._replace(recommendations=(*recommendations[:-1], (0.0, recommendations[-1][1])))


def _above_since(status: Mapping[str, Any] | None, queue: str) -> float | None:
    """Since when the queue has been above its target, as the status last written or seen says (a new leader goes
    on from there)."""
    for entry in (status or {}).get("queues") or ():
        if isinstance(entry, Mapping) and entry.get("name") == queue:
            return unix_time(entry.get("waitAboveTargetSince"))
    return None


def _wait_event(queue: str, waits: Waits, change: Change) -> tuple[str, str, str] | None:
    """The Event (type, reason, message) for a target broken or kept again."""
    if change == "broken" and waits.breach is not None:
        return "Warning", "WaitAboveTarget", f"queue {queue}: {waits.breach.message}"
    if change != "kept":
        return None
    if waits.target is None:
        return "Normal", "WaitWithinTarget", f"queue {queue}: no target wait any more"
    oldest = "nothing waits" if not waits.oldest else f"the oldest task has waited {waits.oldest:.0f}s"
    return "Normal", "WaitWithinTarget", f"queue {queue}: {oldest}, within the {waits.target:g}s target again"


def _rest_digest(
    result: PoolResult,
    pool: PoolFacts,
    written: _Written,
    ready: Mapping[str, int | None],
    beat: Callable[[PoolFacts], Mapping[str, Any] | None],
    workloads: Callable[[PoolFacts], Any],
) -> tuple[Any, ...] | None:
    """All that a poll of a pool at rest brings to the report, for comparing with the last one (``None``: not at
    rest, or something in it depends on time); ``beat`` and ``workloads``: what else the report reads (the beat
    Deployment, the workloads' notes), asked only of a pool at rest.
    Reporting the same again would record the same metrics, post no Event and build the same status but for the time
    of the engine's latest recommendation, which is never written on its own (``status.write_needed``): at 10,000
    pools that was most of a tick's CPU for nothing. A poll with anything in motion (a broker error, a wait being
    watched, a scale, a drain, a failure, Shadow mode) is reported in full."""
    if result.broker_error is not None or written.watches or written.status is None:
        return None
    queues: list[tuple[Any, ...]] = []
    for q in result.queues:
        policy = pool.policy(q.queue)
        decision = q.decision
        if (
            (policy is not None and policy.target_wait is not None)
            or pool.shadow(q.queue)
            or q.observation.error is not None
            or q.scaled_from is not None
            or q.scale_error is not None
            or q.drain_error is not None
            or q.cancelled
            or (decision is not None and decision.drain)
            or q.queue in written.drain_failing
        ):
            return None
        queues.append((q.queue, q.observation, decision, _at_rest(q.state), ready.get(q.queue)))
    versions = tuple(sorted(pool.versions.items()))
    live_beat = beat(pool)
    return (
        pool.generation,
        pool.problem,
        tuple(pool.queue_names),
        pool.beat_duplicates,
        versions,
        None if live_beat is None else tuple(live_beat.items()),
        workloads(pool),
        tuple(queues),
    )


async def _send_status(
    api: KubeApi, slots: asyncio.Semaphore, pool: PoolKey, written: _Written, patch: dict[str, Any], before: Any
) -> None:
    """A write ``write(..., wait=False)`` decided on; on failure the status is taken as unwritten again, so the next
    poll writes it."""
    try:
        async with slots:
            await asyncio.to_thread(api.patch_pool_status, *pool, patch)
    except Exception as exc:
        if not (isinstance(exc, ApiError) and exc.status == 404):  # deleted meanwhile: nothing to write to
            logger.warning("%s/%s: writing the status failed, writing it again at the next poll: %s", *pool, exc)
            written.status, written.at = before
    finally:
        written.sending = None


class StatusReporter:
    def __init__(
        self,
        api: KubeApi,
        backend: KubeBackend,
        events: EventSink,
        may_write: Callable[[], bool],
        *,
        clock: Callable[[], float] = time.time,
        figures_refresh: float = 30.0,
    ) -> None:
        self._api = api
        self._backend = backend
        self._events = events
        self._may_write = may_write
        self._clock = clock
        self.figures_refresh = figures_refresh
        self._pools: dict[PoolKey, _Written] = {}
        self._notes = WorkloadNotes(backend, events)
        self._last_poll: dict[str, float] = {}  # broker -> time of the poll last recorded in the histogram
        self._sending: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(WRITES_IN_FLIGHT)

    def seen(self, key: PoolKey, status: Mapping[str, Any] | None) -> None:
        """The pool's status as the watch delivered it. Kept while this replica does not write (a standby, or a
        pool not served yet), so that writing resumes from what is there, engine state included."""
        written = self._pools.setdefault(key, _Written())
        if written.status is None or not self._may_write():
            written.status = from_wire(status)
            written.at = self._clock()

    def persisted_states(self, key: PoolKey, queues: Sequence[str]) -> dict[str, QueueState]:
        """The engine state of each queue from the status, for a pool that starts being scaled here."""
        saved = ((self._pools.get(key) or _Written()).status or {}).get("scalerState") or {}
        states: dict[str, QueueState] = {}
        for queue, data in saved.items():
            if queue not in queues:
                continue
            try:
                states[queue] = QueueState.from_dict(data)
            except ValueError as exc:  # someone edited status by hand: start fresh, conservatively
                logger.warning("%s/%s: ignoring the saved scaling state of %s: %s", *key, queue, exc)
        return states

    def forget_queues(self, key: PoolKey, queues: Sequence[str]) -> None:
        """Queues taken out of the pool: drop their metrics and their waits."""
        written = self._pools.get(key)
        for queue in queues:
            metrics.forget_queue(key[0], key[1], queue)
            if written is not None:
                written.watches.pop(queue, None)
                written.breaches.pop(queue, None)

    def forget_pool(self, key: PoolKey, queues: Sequence[str]) -> None:
        """The pool is gone: drop its metrics and what was written."""
        metrics.forget_pool(key[0], key[1], list(queues))
        self._pools.pop(key, None)

    async def report(self, result: PoolResult, pool: PoolFacts, *, wait: bool = True) -> None:
        """One poll of the pool: metrics, Events on scale decisions and broker changes, status if worth it. With
        ``wait`` False the status write goes on in the background (at most WRITES_IN_FLIGHT at once): waiting for
        each write held the scaling loop's tick for as many API round trips as pools had news."""
        written = self._pools.setdefault(result.pool, _Written())
        namespace, name = result.pool
        if self._last_poll.get(pool.broker_label) != result.observed_at:
            self._last_poll[pool.broker_label] = result.observed_at
            metrics.record_poll(pool.broker_label, result.poll_duration)
        if result.broker_error is not None:
            metrics.record_observation_error(namespace, name)
        ready = {q.queue: self._ready(result.pool, q.queue) for q in result.queues}
        quiet = (
            _rest_digest(result, pool, written, ready, self._beat, self._notes.workloads) if self._may_write() else None
        )
        if quiet is not None and quiet == written.quiet:
            return  # the same as the last poll, which left nothing to say, write or record anew
        written.quiet = None
        if result.broker_error != written.broker_error:
            if result.broker_error is not None:
                message = f"cannot observe the broker: {result.broker_error}; replicas are held"
                await self._events(pool.key, pool.uid, "Warning", cond.REASON_REDIS_UNREACHABLE, message)
            elif written.broker_error is not None:
                await self._events(pool.key, pool.uid, "Normal", "BrokerReachable", "the broker answers again")
        written.broker_error = result.broker_error
        written.observed = True
        waits: dict[str, Waits] = {}
        for queue in result.queues:
            waits[queue.queue], event = _watch_waits(pool, queue, ready[queue.queue], written, result.observed_at)
            if event is not None:
                await self._events(pool.key, pool.uid, *event)
        facts = {q.queue: await self._notes.facts(pool, q, written.told) for q in result.queues}
        figures = pool_figures(result, ready, waits, pool.versions, facts)
        for queue in result.queues:
            await self._record(pool, queue, figures[queue.queue], result)
        await self._notes.tell(pool, written.told)
        if await self.write(pool, figures=figures, scaler_state=scaler_states(result), wait=wait) and quiet is not None:
            written.quiet = quiet

    async def sent(self) -> None:
        """Until every status write on its way is done."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _beat(self, pool: PoolFacts) -> dict[str, Any] | None:
        """The beat Deployment as the watch last saw it (replica counts ``None`` until it has been seen)."""
        if pool.beat_deployment is None:
            return None
        cached = self._backend.cached(pool.key[0], pool.beat_deployment)
        return {
            "deployment": pool.beat_deployment,
            "replicas": None if cached is None else cached.replicas,
            "readyReplicas": None if cached is None else cached.ready,
        }

    def _ready(self, pool: PoolKey, queue: str) -> int | None:
        deployment = self._backend.deployment_name(pool, queue)
        cached = self._backend.cached(pool[0], deployment) if deployment else None
        return cached.ready if cached is not None else None

    async def _record(self, pool: PoolFacts, result: QueueResult, figures: QueueFigures, poll: PoolResult) -> None:
        """One queue's metrics, and its Event when it was scaled (or a scale failed)."""
        namespace, name = pool.key
        queue, decision, scaled_from = result.queue, result.decision, result.scaled_from
        bounds = pool.bounds(queue)
        metrics.record_queue(
            namespace,
            name,
            queue,
            backlog=figures.backlog,
            in_flight=figures.in_flight,
            replicas=figures.replicas,
            desired=figures.desired_replicas,
            ready=figures.ready_replicas,
            draining=len(result.state.draining),
            min_replicas=bounds[0] if bounds else None,
            max_replicas=bounds[1] if bounds else None,
            paused=decision.paused if decision is not None else None,
            fallback=decision.fallback_active if decision is not None else None,
            shadow=figures.shadow,
        )
        await self._drain_events(pool, result)
        if result.cancelled:
            metrics.record_cancelled_tasks(namespace, name, queue, result.cancelled)
        if figures.scaled and scaled_from is not None and figures.desired_replicas is not None:
            reaction = self._clock() - (poll.observed_at - poll.poll_duration)  # from the start of the poll
            reason = figures.reason or ""
            metrics.record_scale(
                namespace, name, queue, scaled_from, figures.desired_replicas, reason=reason, reaction_seconds=reaction
            )
            message = f"queue {queue}: {scaled_from} -> {figures.desired_replicas} replicas ({figures.reason})"
            await self._events(pool.key, pool.uid, "Normal", "Scaled", message)
        elif result.scale_error is not None:
            await self._events(pool.key, pool.uid, "Warning", "ScaleFailed", f"queue {queue}: {result.scale_error}")

    async def _drain_events(self, pool: PoolFacts, result: QueueResult) -> None:
        """Events for workers asked to drain, and for drained workers removed once idle."""
        decision, queue = result.decision, result.queue
        if decision is None:
            return
        loads = {w.worker: w for w in result.observation.workers}
        if decision.drain:
            running = sum(loads[w].running for w in decision.drain if w in loads)
            count = len(decision.drain)
            message = f"queue {queue}: draining {count} worker{'s' if count != 1 else ''} ({running} tasks running)"
            await self._events(pool.key, pool.uid, "Normal", "Draining", message)
        if result.scaled_from is not None and result.scale_error is None:
            removed = decision.remove_first[: max(0, result.scaled_from - decision.desired_replicas)]
            for worker in removed:
                load = loads.get(worker)
                if load is not None and load.draining and load.in_flight == 0:
                    message = f"queue {queue}: removed idle worker {worker}"
                    await self._events(pool.key, pool.uid, "Normal", "WorkerRemoved", message)
        failing = self._pools.setdefault(pool.key, _Written()).drain_failing
        if result.drain_error is not None and queue not in failing:  # once per outage
            failing.add(queue)
            message = f"queue {queue}: cannot send drain requests: {result.drain_error}"
            await self._events(pool.key, pool.uid, "Warning", "DrainFailed", message)
        elif result.drain_error is None:
            failing.discard(queue)

    async def write(
        self,
        pool: PoolFacts,
        *,
        figures: Mapping[str, QueueFigures] | None = None,
        scaler_state: Mapping[str, Mapping[str, Any]] | None = None,
        wait: bool = True,
    ) -> bool:
        """Write the pool's status if something worth writing changed (and this replica may write). Whether what it
        would write is written now (nothing left for a later figures refresh). ``wait`` False: the write goes on in
        the background (see :meth:`report`); while one is on its way, the next waits for a later poll."""
        written = self._pools.setdefault(pool.key, _Written())
        async with written.lock:
            if not self._may_write() or self._pools.get(pool.key) is not written:
                return False
            if written.sending is not None:
                if not wait:
                    return False  # the next poll's report writes what is new then
                await asyncio.wait([written.sending])  # after the one on its way, never beside it
            conditions = cond.conditions_for_problem(
                pool.problem, broker_error=written.broker_error, observed=written.observed
            )
            conditions[0], more = cond.workload_conditions(conditions[0], self._notes.workloads(pool))
            conditions += more
            ready = any(c.type == cond.READY and c.status == "True" for c in conditions)
            broker_up = written.broker_error is None if written.observed and pool.problem is None else None
            metrics.record_pool(*pool.key, broker_up=broker_up, ready=ready)
            beat = self._beat(pool)
            if beat is not None:
                conditions.append(cond.beat_condition(beat["deployment"], beat["readyReplicas"], pool.beat_duplicates))
            if any(
                (policy := pool.policy(queue)) is not None and policy.target_wait is not None
                for queue in pool.queue_names
            ):
                breaches = [(queue, written.breaches[queue]) for queue in pool.queue_names if queue in written.breaches]
                conditions.append(cond.wait_condition(breaches, observed=written.observed))
            now = self._clock()
            new = build_status(
                written.status,
                generation=pool.generation,
                queue_names=pool.queue_names,
                conditions=conditions,
                figures=figures,
                scaler_state=scaler_state,
                beat=beat,
                now=now,
            )
            refresh = self.figures_refresh
            if not write_needed(written.status, new, seconds_since_write=now - written.at, figures_refresh=refresh):
                return not pending(written.status, new)
            written.quiet = None
            patch = merge_patch(to_wire(written.status) if written.status else None, to_wire(new))
            if not patch:
                return True
            if not wait:
                before = (written.status, written.at)
                written.status, written.at = new, now
                written.sending = task = asyncio.create_task(
                    _send_status(self._api, self._slots, pool.key, written, patch, before)
                )
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
                return True
            try:
                await asyncio.to_thread(self._api.patch_pool_status, *pool.key, patch)
            except ApiError as exc:
                if exc.status == 404:  # deleted meanwhile
                    return False
                raise
            written.status, written.at = new, now
            return True
