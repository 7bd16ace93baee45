"""One executor for a decision: ``engine/execute.actions`` on its own, and the scaling loop and the simulator
carrying out the same decisions the same way.

The second part replays every poll the simulator made on a trace (what it saw, and what it did) through the
real :class:`ScalingLoop`: the loop's writes (drain requests, replica counts, the workers removed first) must be
the simulator's, poll for poll. The loop's seams stand in for Redis and the workload: the observer hands it the
simulator's observations, the backend and the drain sender record what the loop asks of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.engine import Decision, QueueState, ScalingPolicy
from workerpool_operator.engine.execute import NOTHING, Actions, actions
from workerpool_operator.observation import BrokerObservation, WorkerLoad
from workerpool_operator.scaling_loop import ScalingLoop
from workerpool_operator.scaling_types import PoolKey, PoolResult, QueuePlan
from workerpool_operator.sim.simulate import Executed, QueueSetup, simulate

NOW = 1_000.0


def load(name: str, running: int = 0, reserved: int = 0) -> WorkerLoad:
    return WorkerLoad(name, running=running, reserved=reserved, concurrency=2)


def test_nothing_to_do_when_the_count_holds_and_no_worker_drains() -> None:
    state = QueueState()
    assert actions(state, state, Decision(3, "hold", current_replicas=3), 3, NOW) is NOTHING


def test_draining_workers_are_asked_again_every_poll_and_released_when_taken_back() -> None:
    before = QueueState(draining=(("w1", 10.0), ("w2", 20.0)))
    after = QueueState(draining=(("w1", 10.0),))
    done = actions(before, after, Decision(3, "hold", current_replicas=3), 3, NOW)
    assert done == Actions(drain={"w1": 10.0}, release=("w2",))
    assert done.sends_drains and done.scale_to is None


def test_a_removed_worker_keeps_its_request_until_it_stops_reporting() -> None:
    before = QueueState(draining=(("w1", 10.0),))
    removed = QueueState(leaving=("w1",))
    decision = Decision(1, "down", remove_first=("w1",), current_replicas=2)
    done = actions(before, removed, decision, 2, NOW, [load("w1"), load("w2", running=1)])
    assert done.release == () and done.scale_to == 1 and done.remove_first == ("w1",) and done.cancelled == 0
    gone = actions(removed, QueueState(), Decision(1, "hold", current_replicas=1), 1, NOW)
    assert gone.release == ("w1",)


def test_busy_workers_handing_back_their_prefetched_tasks_hold_a_request_too() -> None:
    after = QueueState(handing_back=("w3",))
    done = actions(QueueState(), after, Decision(2, "hold", current_replicas=2), 2, NOW)
    assert done.drain == {"w3": NOW}
    taken_back = actions(after, QueueState(), Decision(2, "hold", current_replicas=2), 2, NOW)
    assert taken_back.release == ("w3",)


def test_a_scale_down_names_exactly_the_workers_it_removes_and_counts_their_running_tasks() -> None:
    decision = Decision(1, "down", remove_first=("w1", "w2", "w3"), current_replicas=3)
    workers = [load("w1", running=2), load("w2", running=1), load("w3", running=5)]
    done = actions(QueueState(), QueueState(), decision, 3, NOW, workers)
    assert done.scale_to == 1 and done.remove_first == ("w1", "w2") and done.cancelled == 3


# --- the loop and the simulator, on the same decisions -------------------------------------------------------

POOL: PoolKey = ("sim", "pool")
BROKER = BrokerConfig(url="redis://replay:6379/0")


class ReplayedObserver:
    """Hands the loop the observation the simulator made at the loop's clock."""

    def __init__(self, polls: Sequence[Executed], clock: list[float]) -> None:
        self._by_time = {poll.at: poll.observation for poll in polls}
        self._clock = clock

    async def observe(
        self,
        wanted: Mapping[BrokerConfig, Collection[str]],
        timeout: float,  # noqa: ASYNC109 (the protocol's)
        beats: Any = None,
        aged: Any = None,
    ) -> dict[BrokerConfig, BrokerObservation]:
        seen = dataclasses.replace(self._by_time[self._clock[0]], replicas=0)  # the loop reads replicas itself
        return {BROKER: BrokerObservation(queues={seen.queue: seen})}

    async def forget(self, keep: Collection[BrokerConfig] = ()) -> None:
        return None


class RecordingWorkload:
    """The replica count the simulator had at each poll; every scale and drain request the loop makes."""

    def __init__(self, polls: Sequence[Executed], clock: list[float]) -> None:
        self._replicas = {poll.at: poll.observation.replicas for poll in polls}
        self._clock = clock
        self.scales: dict[float, tuple[int, tuple[str, ...]]] = {}
        self.drains: dict[float, tuple[dict[str, float], tuple[str, ...]]] = {}

    async def current_replicas(self, pool: PoolKey, queue: str) -> int | None:
        return self._replicas[self._clock[0]]

    async def scale(self, pool: PoolKey, queue: str, replicas: int, remove_first: Sequence[str]) -> None:
        self.scales[self._clock[0]] = (replicas, tuple(remove_first))

    async def send_drains(
        self, config: BrokerConfig, queue: str, draining: Mapping[str, float], released: Collection[str], ttl: int
    ) -> None:
        self.drains[self._clock[0]] = (dict(draining), tuple(released))


def _long_tasks_with_prefetch() -> list[tuple[float, float]]:
    """Bursts of 2-minute tasks: busy workers hand back what they prefetched, and drain when demand falls."""
    tasks = []
    for burst in range(4):
        start = burst * 900.0
        tasks += [(start + i * 0.5, 120.0 + (i % 7) * 10.0) for i in range(24)]
    return tasks


async def test_the_loop_carries_out_the_simulators_decisions_write_for_write() -> None:
    policy = ScalingPolicy(max_replicas=8, target_per_replica=2, startup_seconds=10.0)
    setup = QueueSetup(name="q", policy=policy, concurrency=2, poll_interval=2.0, prefetch_multiplier=2)
    result = simulate(_long_tasks_with_prefetch(), setup, startup_delay=10.0, record_polls=True)
    polls = result.polls
    assert result.finished == result.tasks and polls
    # The trace exercises every kind of action, so the comparison below compares something.
    assert any(p.actions.scale_to is not None and p.actions.remove_first for p in polls), "no scale-down naming pods"
    assert any(p.actions.release for p in polls), "no request released"
    handing = [p for p in polls if set(p.actions.drain) - {w.worker for w in p.observation.workers if w.draining}]
    assert handing, "no worker asked to drain"

    clock = [polls[0].at]
    workload = RecordingWorkload(polls, clock)

    async def ignore(result: PoolResult) -> None:
        return None

    loop = ScalingLoop(workload, ignore, ReplayedObserver(polls, clock), workload, clock=lambda: clock[0])
    loop.register(POOL, BROKER, {"q": QueuePlan(policy, interval=0.0)})
    for poll in polls:
        clock[0] = poll.at
        await loop.run_once()

    expected_scales = {
        p.at: (p.actions.scale_to, p.actions.remove_first) for p in polls if p.actions.scale_to is not None
    }
    expected_drains = {p.at: (dict(p.actions.drain), p.actions.release) for p in polls if p.actions.sends_drains}
    assert workload.scales == expected_scales
    assert workload.drains == expected_drains
