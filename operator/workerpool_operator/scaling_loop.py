"""The scaling loop shared by the operator and the local runtime.

Each tick: take the queues that are due, group them by broker, observe every broker once (one pipelined
round trip each, all brokers concurrently), run the engine per queue, and ask the backend to scale only
where the desired count differs from the current one. Every pool's outcome goes to a result handler (status,
events and metrics in the operator; the terminal view locally). The loop holds no Kubernetes or process
knowledge: that lives behind :class:`~.scaling_types.WorkloadBackend`. What a decision leads to (drain requests,
the new count, the workers removed first) is :func:`~.engine.execute.actions`, which the simulator carries out too;
the names the runtimes share are in ``scaling_types.py``.

A queue of a plan is a worker group: its workers may consume several Celery queues (``worker_groups.py`` says what
the engine sees of them, and which queues a poll reads), and its drain requests go to each of them. A queue in
Shadow mode (``QueuePlan.shadow``) is decided like any other, and its actions are handed to the result handler
instead of carried out: nothing is written, save taking back the drain requests an active mode left (its workers
would otherwise take no task until those expire). A shadow decision drains nothing (``drain_timeout`` 0): the count
it shows is the one a scale-down would settle at, not the steps of a drain its workers never received.

Wake-ups: :meth:`ScalingLoop.wake` takes the keys a broker says changed (``observe/wakeups.py``) and brings the
polls of the queues that read them forward, to now, but never nearer than ``WAKE_MIN_GAP`` of an interval to the
queue's last poll: a burst on a quiet queue is acted on within a round trip, and a busy queue, whose every poll
is followed by a change, is polled at most ``1 / WAKE_MIN_GAP`` times per interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from workerpool_operator import drain_requests
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.engine import QueueState, decide
from workerpool_operator.engine.execute import Actions, actions
from workerpool_operator.observation import BrokerObservation
from workerpool_operator.poll_schedule import PollSchedule
from workerpool_operator.scaling_types import (
    BrokerObserver,
    DrainSender,
    PoolKey,
    PoolResult,
    QueuePlan,
    QueueResult,
    ResultHandler,
    WorkloadBackend,
)
from workerpool_operator.wake_index import WakeIndex
from workerpool_operator.worker_groups import Grouping, group_observation, grouping

logger = logging.getLogger(__name__)

SLICE = 100  # pools decided and reported between two turns of the event loop (a tick over 10,000 held it 2.9 s)
WAKE_MIN_GAP = 0.25  # of a queue's poll interval: the least time between its last poll and one a wake-up brings


def brokers_to_forget(connected: Collection[BrokerConfig], in_use: Collection[BrokerConfig]) -> frozenset[BrokerConfig]:
    """The brokers polled before that no registered pool uses any more (pool gone, or its Secret now names
    another broker): their connections can be closed."""
    return frozenset(connected) - frozenset(in_use)


class BrokerUsers:
    """How many registered pools use each broker; ``lost_one``: a broker lost its last pool since it was cleared."""

    def __init__(self) -> None:
        self._count: dict[BrokerConfig, int] = {}
        self.lost_one = False

    def add(self, broker: BrokerConfig) -> None:
        self._count[broker] = self._count.get(broker, 0) + 1

    def release(self, broker: BrokerConfig) -> None:
        left = self._count[broker] - 1
        if left:
            self._count[broker] = left
        else:
            del self._count[broker]
            self.lost_one = True

    def in_use(self) -> frozenset[BrokerConfig]:
        return frozenset(self._count)


@dataclass
class _Registration:
    key: PoolKey
    broker: BrokerConfig
    plans: dict[str, QueuePlan]
    states: dict[str, QueueState]
    beat_app: str | None = None  # the app whose beat forecast announces this pool's periodic work
    polled_at: dict[str, float] = field(default_factory=dict)
    groups: Grouping = field(default_factory=lambda: grouping({}))


class ScalingLoop:
    """Polls, decides and scales every registered pool. Register and unregister pools at any time."""

    def __init__(
        self,
        backend: WorkloadBackend,
        on_result: ResultHandler,
        observer: BrokerObserver,
        drains: DrainSender,
        *,
        clock: Callable[[], float] = time.time,
        observe_timeout: float = 2.0,
        tick: float = 0.2,
    ) -> None:
        self._backend = backend
        self._on_result = on_result
        self._observer = observer
        self._drains = drains
        self._clock = clock
        self._observe_timeout = observe_timeout
        self._tick = tick
        self._pools: dict[PoolKey, _Registration] = {}
        self._wakeup = asyncio.Event()
        self._connected: frozenset[BrokerConfig] = frozenset()  # brokers the observer may hold connections to
        self._readers = WakeIndex()  # which pool's queue reads which key: what a wake-up wakes
        self._schedule = PollSchedule()  # every queue's next poll
        self._users = BrokerUsers()  # a tick asks which brokers are in use

    # --- registry ------------------------------------------------------------------------------------

    def register(
        self,
        key: PoolKey,
        broker: BrokerConfig,
        plans: Mapping[str, QueuePlan],
        states: Mapping[str, QueueState] | None = None,
        beat_app: str | None = None,
    ) -> None:
        """Add a pool or update it in place. Engine state survives for queues that stay. ``beat_app``: the pool
        runs a beat for that app, whose forecast (``beat_forecast.py``) is read with the pool's queues."""
        previous = self._pools.get(key)
        kept = dict(previous.states) if previous is not None else {}
        kept.update(states or {})
        pool = _Registration(
            key=key,
            broker=broker,
            plans=dict(plans),
            states={queue: kept.get(queue, QueueState()) for queue in plans},
            beat_app=beat_app,
            groups=grouping({queue: plan.celery_queues for queue, plan in plans.items()}),
        )
        if previous is not None:
            self._schedule.forget(key, [queue for queue in previous.plans if queue not in plans])
            pool.polled_at = {q: t for q, t in previous.polled_at.items() if q in plans}
            self._readers.forget(previous.broker, key, previous.groups.polled)
            self._users.release(previous.broker)
        self._pools[key] = pool
        self._users.add(broker)
        for queue in plans:
            if self._schedule.next_poll(key, queue) is None:
                self._schedule.put(key, queue, 0.0)  # new: due at once
        self._readers.add(broker, key, pool.groups.polled)
        self._wakeup.set()

    def unregister(self, key: PoolKey) -> None:
        pool = self._pools.pop(key, None)
        if pool is not None:
            self._readers.forget(pool.broker, key, pool.groups.polled)
            self._schedule.forget(key, pool.plans)
            self._users.release(pool.broker)

    def registered(self) -> list[PoolKey]:
        return list(self._pools)

    @property
    def pool_count(self) -> int:
        """How many pools are registered."""
        return len(self._pools)

    def states(self, key: PoolKey) -> dict[str, QueueState]:
        pool = self._pools.get(key)
        return dict(pool.states) if pool is not None else {}

    # --- wake-ups ------------------------------------------------------------------------------------

    def wake(self, broker: BrokerConfig, keys: Collection[str]) -> None:
        """Keys of ``broker`` changed: poll the queues that read them now (``WAKE_MIN_GAP`` after their last poll
        at the soonest). Keys no queue reads are ignored."""
        now = self._clock()
        woken = False
        for pool_key, planned in self._readers.readers(broker, keys):
            pool = self._pools.get(pool_key)
            if pool is None or planned not in pool.plans:
                continue
            due = self._schedule.next_poll(pool_key, planned)
            due = now if due is None else due
            soonest = max(now, pool.polled_at.get(planned, 0.0) + pool.plans[planned].interval * WAKE_MIN_GAP)
            if soonest < due:
                self._schedule.put(pool_key, planned, soonest)
                woken = True
        if woken:
            self._wakeup.set()

    # --- the loop ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set. A failing tick is logged, never fatal."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                logger.exception("scaling tick failed; continuing")
            self._wakeup.clear()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wakeup.wait())]
            await asyncio.wait(waiters, timeout=self._seconds_to_next_due(), return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    def _seconds_to_next_due(self) -> float:
        # The soonest due, past ones included: a wake-up that came while a tick ran is due now.
        soonest = self._schedule.soonest()
        if soonest is None:
            return self._tick
        return max(0.0, min(soonest - self._clock(), self._tick * 25))

    def make_all_due(self) -> None:
        """Every queue of every pool due now (the loop-stall benchmark's worst tick)."""
        for pool in self._pools.values():
            for queue in pool.plans:
                self._schedule.put(pool.key, queue, 0.0)

    async def run_once(self) -> list[PoolResult]:
        """One tick: observe and scale every queue that is due. Returns what was reported."""
        await self._forget_unused_brokers()
        now = self._clock()
        taken = self._schedule.take_due(now)
        if not taken:
            return []
        due: dict[PoolKey, list[str]] = {}
        for key, chosen in taken.items():
            pool = self._pools[key]
            due[key] = queues = [q for q in pool.plans if q in chosen]  # in the plan's order
            for queue in queues:
                self._schedule.put(key, queue, now + pool.plans[queue].interval)
                pool.polled_at[queue] = now

        wanted, beats, aged = _reads([(self._pools[key], queues) for key, queues in due.items()])
        self._connected |= wanted.keys()
        started = time.monotonic()
        observed = await self._observer.observe(wanted, self._observe_timeout, beats, aged)
        duration = time.monotonic() - started
        observed_at = self._clock()

        reported: list[PoolResult] = []
        pools = list(due.items())
        for start in range(0, len(pools), SLICE):  # a slice at a time, the event loop's turn between two
            results = await asyncio.gather(
                *(
                    self._scale_pool(key, queues, observed, observed_at, duration)
                    for key, queues in pools[start : start + SLICE]
                )
            )
            for result in results:
                if result is None:
                    continue
                reported.append(result)
                try:
                    await self._on_result(result)
                except Exception:
                    logger.exception("reporting pool %s/%s failed", *result.pool)
            await asyncio.sleep(0)
        return reported

    async def _forget_unused_brokers(self) -> None:
        """Close the connections of brokers no registered pool uses any more (between polls, so never a
        connection in use)."""
        if not self._users.lost_one:
            return
        self._users.lost_one = False
        in_use = self._users.in_use()
        unused = brokers_to_forget(self._connected, in_use)
        if not unused:
            return
        try:
            await self._observer.forget(keep=in_use)
        except Exception:
            self._users.lost_one = True  # tried again at the next tick
            logger.exception("closing the connections of brokers no longer used failed")
        else:
            self._connected -= unused

    async def _scale_pool(
        self,
        key: PoolKey,
        queues: Sequence[str],
        observed: Mapping[BrokerConfig, BrokerObservation],
        now: float,
        duration: float,
    ) -> PoolResult | None:
        pool = self._pools.get(key)
        if pool is None:  # unregistered while observing
            return None
        broker_obs = observed.get(pool.broker) or BrokerObservation(error="broker was not observed")
        results = await asyncio.gather(*(self._scale_queue(pool, queue, broker_obs, now) for queue in queues))
        return PoolResult(
            pool=key,
            broker_error=broker_obs.error,
            queues=tuple(results),
            observed_at=now,
            poll_duration=broker_obs.duration or duration,
        )

    async def _scale_queue(
        self, pool: _Registration, queue: str, broker_obs: BrokerObservation, now: float
    ) -> QueueResult:
        missing = broker_obs.error or "queue was not observed"
        observation = group_observation(pool.groups, queue, broker_obs.queues, missing)
        state = pool.states.get(queue, QueueState())
        try:
            replicas = await self._backend.current_replicas(pool.key, queue)
        except Exception as exc:
            logger.warning("reading replicas of %s/%s queue %s failed: %s", *pool.key, queue, exc)
            return QueueResult(queue=queue, observation=observation, decision=None, state=state, scale_error=str(exc))
        if replicas is None:
            return QueueResult(queue=queue, observation=observation, decision=None, state=state)

        observation = dataclasses.replace(observation, replicas=replicas)
        plan = pool.plans[queue]
        policy = dataclasses.replace(plan.policy, drain_timeout=0.0) if plan.shadow else plan.policy
        decision, new_state = decide(observation, state, policy, now)
        pool.states[queue] = new_state
        result = QueueResult(queue=queue, observation=observation, decision=decision, state=new_state)
        todo = actions(state, new_state, decision, replicas, now, observation.workers)
        if plan.shadow:  # what it would do, not done; only an active mode's drain requests are taken back
            release = Actions(release=todo.release)
            drain_error = await send_drains(self._drains, pool, queue, release, plan.policy.drain_timeout)
            return dataclasses.replace(result, shadow=todo, drain_error=drain_error)
        drain_error = await send_drains(self._drains, pool, queue, todo, policy.drain_timeout)
        if drain_error is not None:
            result = dataclasses.replace(result, drain_error=drain_error)
        if todo.scale_to is None:
            return result
        try:
            await self._backend.scale(pool.key, queue, todo.scale_to, todo.remove_first)
        except Exception as exc:
            logger.warning("scaling %s/%s queue %s failed: %s", *pool.key, queue, exc)
            return dataclasses.replace(result, scaled_from=replicas, scale_error=str(exc) or type(exc).__name__)
        return dataclasses.replace(result, scaled_from=replicas, cancelled=todo.cancelled)


async def send_drains(
    drains: DrainSender, pool: _Registration, queue: str, todo: Actions, drain_timeout: float
) -> str | None:
    """Write the drain requests the actions hold (``engine/execute.py`` says which, and why all of them), on every
    Celery queue of the group: a draining worker takes tasks from none of them. The failure, as text, if one failed."""
    if not todo.sends_drains:
        return None
    ttl = drain_requests.ttl_for(drain_timeout)
    sent = await asyncio.gather(
        *(
            drains.send_drains(pool.broker, celery_queue, todo.drain, todo.release, ttl)
            for celery_queue in pool.groups.consumes[queue]
        ),
        return_exceptions=True,
    )
    failed = next((error for error in sent if isinstance(error, BaseException)), None)
    if failed is None:
        return None
    if not isinstance(failed, Exception):
        raise failed
    logger.warning("sending drain requests for %s/%s queue %s failed: %s", *pool.key, queue, failed)
    return str(failed) or type(failed).__name__


Reads = dict[BrokerConfig, set[str]]


def _reads(due: Sequence[tuple[_Registration, Sequence[str]]]) -> tuple[Reads, Reads, Reads]:
    """What a tick reads of each broker for the queues due: the Celery queues they poll, the apps whose beat
    forecast they read, and the Celery queues whose oldest task's age is read (the queues with a target wait)."""
    wanted: Reads = {}
    beats: Reads = {}
    aged: Reads = {}
    for pool, queues in due:
        wanted.setdefault(pool.broker, set()).update(pool.groups.to_poll(queues))
        if pool.beat_app is not None:
            beats.setdefault(pool.broker, set()).add(pool.beat_app)
        for queue in queues:
            if pool.plans[queue].policy.target_wait is not None:  # a group: the Celery queues it counts
                aged.setdefault(pool.broker, set()).update(pool.groups.counts[queue])
    return wanted, beats, aged
