"""The scaling loop on a real Redis with the real Observer and engine; the backend is the seam under test,
so a recording backend stands in for Deployments or processes (both real backends have their own tests)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

import pytest

from tests.conftest import RedisServer
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.engine import QueueState, ScalingPolicy
from workerpool_operator.observe import DrainWriter, Observer
from workerpool_operator.scaling_loop import ScalingLoop, brokers_to_forget
from workerpool_operator.scaling_types import PoolKey, PoolResult, QueuePlan


class RecordingBackend:
    def __init__(self, replicas: dict[tuple[PoolKey, str], int | None]) -> None:
        self.replicas = dict(replicas)
        self.calls: list[tuple[PoolKey, str, int, tuple[str, ...]]] = []
        self.fail = False

    async def current_replicas(self, pool: PoolKey, queue: str) -> int | None:
        return self.replicas.get((pool, queue))

    async def scale(self, pool: PoolKey, queue: str, replicas: int, remove_first: Sequence[str]) -> None:
        self.calls.append((pool, queue, replicas, tuple(remove_first)))
        if self.fail:
            raise RuntimeError("api down")
        self.replicas[(pool, queue)] = replicas


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


POLICY = ScalingPolicy(min_replicas=0, max_replicas=10, target_per_replica=5, scale_down_window=30.0)
A: PoolKey = ("apps", "a")
B: PoolKey = ("apps", "b")


@pytest.fixture
async def observer():
    obs = Observer()
    yield obs
    await obs.aclose()


def make_loop(backend: RecordingBackend, observer: Observer, clock: Clock, reports: list[PoolResult]) -> ScalingLoop:
    async def report(result: PoolResult) -> None:
        reports.append(result)

    return ScalingLoop(backend, report, observer, DrainWriter(observer.connections), clock=clock)


async def test_scales_up_on_backlog_and_only_when_the_count_changes(redis_server: RedisServer, observer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    redis_server.client().lpush("emails", *[f"m{i}" for i in range(23)])
    backend = RecordingBackend({(A, "emails"): 1, (A, "reports"): 0})
    reports: list[PoolResult] = []
    clock = Clock()
    loop = make_loop(backend, observer, clock, reports)
    loop.register(A, broker, {"emails": QueuePlan(POLICY, 2.0), "reports": QueuePlan(POLICY, 2.0)})

    await loop.run_once()
    assert backend.calls == [(A, "emails", 5, ())]  # ceil(23 / 5); the empty queue at 0 stays
    result = reports[-1]
    emails = {q.queue: q for q in result.queues}["emails"]
    assert emails.observation.backlog == 23 and emails.scaled_from == 1

    await loop.run_once()  # not due yet: nothing observed, nothing reported
    assert len(reports) == 1
    clock.now += 2.0
    await loop.run_once()
    assert len(backend.calls) == 1, "no call when the desired count equals the current one"


async def test_one_round_trip_per_broker_for_every_pool_on_it(redis_server: RedisServer, observer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    backend = RecordingBackend({(A, "q1"): 0, (B, "q2"): 0})
    reports: list[PoolResult] = []
    clock = Clock()
    loop = make_loop(backend, observer, clock, reports)
    loop.register(A, broker, {"q1": QueuePlan(POLICY, 1.0)})
    loop.register(B, broker, {"q2": QueuePlan(POLICY, 1.0)})
    before = redis_server.client().info("stats")["total_commands_processed"]
    await loop.run_once()
    after = redis_server.client().info("stats")["total_commands_processed"]
    assert {r.pool for r in reports} == {A, B}
    # One pipeline for both pools: LLEN x4 priority lists + HGETALL per queue + TIME, plus the INFO call itself.
    assert after - before <= 2 * (4 + 1) + 1 + 1 + 1


async def test_the_oldest_tasks_age_is_read_for_the_queues_with_a_target_wait(
    redis_server: RedisServer, observer
) -> None:
    broker = BrokerConfig(url=redis_server.url)
    stamped = f'{{"properties": {{"timestamp": {time.time() - 90}}}}}'  # sent 90 s ago (the broker's clock)
    redis_server.client().lpush("emails", stamped)
    redis_server.client().lpush("reports", stamped)
    backend = RecordingBackend({(A, "emails"): 1, (A, "reports"): 1})
    reports: list[PoolResult] = []
    loop = make_loop(backend, observer, Clock(), reports)
    targeted = dataclasses.replace(POLICY, target_wait=60.0)
    loop.register(A, broker, {"emails": QueuePlan(targeted, 1.0), "reports": QueuePlan(POLICY, 1.0)})
    before = redis_server.client().info("commandstats").get("cmdstat_lindex", {}).get("calls", 0)
    await loop.run_once()
    after = redis_server.client().info("commandstats")["cmdstat_lindex"]["calls"]
    assert after - before == 4, "one LINDEX per priority list of the one queue with a target"
    seen = {q.queue: q.observation for q in reports[-1].queues}
    assert seen["emails"].oldest_age is not None and 89 < seen["emails"].oldest_age < 120
    assert seen["reports"].oldest_age is None and seen["reports"].backlog == 1


async def test_broker_down_never_scales_down_and_state_survives_updates(redis_server: RedisServer, observer) -> None:
    broker = BrokerConfig(url=redis_server.url, socket_timeout=0.5)
    backend = RecordingBackend({(A, "emails"): 4})
    reports: list[PoolResult] = []
    clock = Clock()
    loop = make_loop(backend, observer, clock, reports)
    loop.register(A, broker, {"emails": QueuePlan(POLICY, 1.0)})
    redis_server.stop()
    for _ in range(5):
        await loop.run_once()
        clock.now += 100.0
    assert backend.calls == [], "a failed observation must never lower replicas"
    assert all(r.broker_error for r in reports)
    failures = loop.states(A)["emails"]
    assert failures != QueueState()

    loop.register(A, broker, {"emails": QueuePlan(POLICY, 1.0), "new": QueuePlan(POLICY, 1.0)})
    assert loop.states(A)["emails"] == failures, "re-registering keeps the engine state of queues that stay"


async def test_missing_workload_is_reported_not_scaled_and_scale_errors_are_values(
    redis_server: RedisServer, observer
) -> None:
    broker = BrokerConfig(url=redis_server.url)
    redis_server.client().lpush("q", *range(50))
    backend = RecordingBackend({(A, "q"): None})
    reports: list[PoolResult] = []
    clock = Clock()
    loop = make_loop(backend, observer, clock, reports)
    loop.register(A, broker, {"q": QueuePlan(POLICY, 1.0)})
    await loop.run_once()
    assert backend.calls == [] and reports[-1].queues[0].decision is None

    backend.replicas[(A, "q")] = 1
    backend.fail = True
    clock.now += 1.0
    await loop.run_once()
    assert reports[-1].queues[0].scale_error == "api down"


async def test_run_stops_promptly_and_survives_a_failing_reporter(redis_server: RedisServer, observer) -> None:
    broker = BrokerConfig(url=redis_server.url)
    backend = RecordingBackend({(A, "q"): 0})
    seen: list[PoolResult] = []
    third = asyncio.Event()

    async def bad_reporter(result: PoolResult) -> None:
        seen.append(result)
        if len(seen) >= 3:
            third.set()
        raise ValueError("boom")

    loop = ScalingLoop(backend, bad_reporter, observer, DrainWriter(observer.connections), tick=0.05)
    loop.register(A, broker, {"q": QueuePlan(POLICY, 0.05)})
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.wait_for(third.wait(), 5.0)
    stop.set()
    await asyncio.wait_for(task, 2.0)


def test_brokers_to_forget_are_those_polled_before_and_used_by_no_pool() -> None:
    a, b, c = (BrokerConfig(url=f"redis://127.0.0.1:{port}/0") for port in (7001, 7002, 7003))
    assert brokers_to_forget({a, b}, {b, c}) == {a}
    assert brokers_to_forget({a, b}, {a, b}) == frozenset()
    assert brokers_to_forget({a}, set()) == {a}


async def test_a_pool_with_beat_starts_a_worker_before_an_announced_fire(redis_server: RedisServer, observer) -> None:
    """Nothing waits, nothing runs, the pool is at zero: beat's forecast says a periodic task goes to `reports`
    in 5 s. The pool that runs that beat gets a worker now (one start-up ahead); a pool without beat reads no
    forecast."""
    from workerpool_operator import beat_forecast as bf

    client = redis_server.client()
    now = float(client.time()[0])
    entry = bf.ForecastEntry("nightly", "t.nightly", "reports", (now + 5.0,), now + 3600)
    client.set(bf.forecast_key("proj"), bf.encode_forecast(bf.BeatForecast("beat-0", now, 3600, (entry,))))
    broker = BrokerConfig(url=redis_server.url)
    backend = RecordingBackend({(A, "reports"): 0, (B, "reports"): 0})
    reports: list[PoolResult] = []
    clock = Clock()
    clock.now = now
    loop = make_loop(backend, observer, clock, reports)
    loop.register(B, broker, {"reports": QueuePlan(POLICY, 2.0)})
    await loop.run_once()
    assert backend.calls == [], "a pool without beat reads no forecast"

    loop.unregister(B)
    loop.register(A, broker, {"reports": QueuePlan(POLICY, 2.0)}, beat_app="proj")
    await loop.run_once()
    assert backend.calls == [(A, "reports", 1, ())]
    (queue,) = next(r for r in reports if r.pool == A).queues
    assert queue.observation.fires == ((now + 5.0, "nightly"),)
    assert queue.decision is not None and "beat: nightly" in queue.decision.reason


async def test_a_removed_worker_keeps_its_drain_request_until_it_stops_reporting(
    redis_server: RedisServer, observer
) -> None:
    """Released at the scale-down, the request would let the removed worker take tasks again until its SIGTERM
    (seconds on a real cluster), and be killed with them at the end of the grace period."""
    from workerpool_operator import drain_requests
    from workerpool_operator.engine import DEMAND
    from workerpool_operator.observation import WorkerLoad
    from workerpool_operator.reports import encode_report, report_key

    client = redis_server.client()
    policy = ScalingPolicy(policy=DEMAND, max_replicas=10, target_per_replica=2, scale_down_window=0.0)
    backend = RecordingBackend({(A, "work"): 2})
    clock = Clock()
    loop = make_loop(backend, observer, clock, [])
    loop.register(A, BrokerConfig(url=redis_server.url), {"work": QueuePlan(policy, 1.0)})

    async def tick(**loads: WorkerLoad) -> set[str]:
        now = float(client.time()[0])
        client.delete(report_key("work"))
        for name, load in loads.items():
            client.hset(report_key("work"), name, encode_report(dataclasses.replace(load, worker=name, heartbeat=now)))
        clock.now += 1.0
        await loop.run_once()
        return {str(field) for field in client.hkeys(drain_requests.drain_key("work"))}

    busy = WorkerLoad("a", running=2, concurrency=2)
    assert await tick(a=busy, b=WorkerLoad("b", concurrency=2)) == {"b"}, "the idlest asked to drain"
    drained = WorkerLoad("b", concurrency=2, draining=True)
    assert await tick(a=busy, b=drained) == {"b"}
    assert backend.calls[-1] == (A, "work", 1, ("b",)), "removed once idle"
    assert await tick(a=busy, b=drained) == {"b"}, "its pod terminates: the request stays"
    assert backend.calls[-1] == (A, "work", 1, ("b",)) and len(backend.calls) == 1, "not counted, not removed again"
    assert await tick(a=busy) == set(), "gone: released"


async def test_a_group_on_two_queues_scales_on_either_and_drains_on_both(redis_server: RedisServer, observer) -> None:
    """A worker group consuming `normal` and `low`: a backlog on either scales it, its workers count once, and a
    worker it drains is asked to drain on both queues (it must take tasks from neither)."""
    from workerpool_operator import drain_requests
    from workerpool_operator.engine import DEMAND
    from workerpool_operator.observation import WorkerLoad
    from workerpool_operator.reports import encode_report, report_key

    client = redis_server.client()
    policy = ScalingPolicy(policy=DEMAND, max_replicas=10, target_per_replica=2, scale_down_window=0.0)
    backend = RecordingBackend({(A, "spare"): 0})
    clock = Clock()
    reports: list[PoolResult] = []
    loop = make_loop(backend, observer, clock, reports)
    plans = {"spare": QueuePlan(policy, 1.0, celery_queues=("normal", "low"))}
    loop.register(A, BrokerConfig(url=redis_server.url), plans)

    client.lpush("low", *range(3))
    await loop.run_once()
    assert backend.calls == [(A, "spare", 2, ())], "ceil(3 / 2): the backlog of low"
    client.delete("low")
    client.lpush("normal", *range(7))
    clock.now += 1.0
    await loop.run_once()
    assert backend.calls[-1] == (A, "spare", 4, ()), "ceil(7 / 2): the backlog of normal"
    (group,) = reports[-1].queues
    assert group.observation.backlogs == (("normal", 7, True), ("low", 0, True))

    client.delete("normal")
    now = float(client.time()[0])
    for queue, running in (("normal", 1), ("low", 1)):  # one busy worker, running a task of each queue
        client.hset(report_key(queue), "busy", encode_report(WorkerLoad("busy", running=running, heartbeat=now)))
        for idle in ("idle-1", "idle-2", "idle-3"):
            client.hset(report_key(queue), idle, encode_report(WorkerLoad(idle, heartbeat=now)))
    clock.now += 1.0
    await loop.run_once()
    (group,) = reports[-1].queues
    assert group.observation.in_flight == 2 and len(group.observation.workers) == 4, "each worker once"
    asked = {q: {str(f) for f in client.hkeys(drain_requests.drain_key(q))} for q in ("normal", "low")}
    assert asked == {"normal": {"idle-1", "idle-2", "idle-3"}, "low": {"idle-1", "idle-2", "idle-3"}}


async def test_a_shadow_queue_decides_and_reports_but_writes_nothing(redis_server: RedisServer, observer) -> None:
    """In Shadow the result carries what would be done; no scale call, no drain request. Registered again as
    active (the spec switched), the next poll scales; switched back, the drain requests active mode sent are
    taken back."""
    from workerpool_operator import drain_requests
    from workerpool_operator.engine import DEMAND
    from workerpool_operator.observation import WorkerLoad
    from workerpool_operator.reports import encode_report, report_key

    client = redis_server.client()
    policy = ScalingPolicy(policy=DEMAND, max_replicas=10, target_per_replica=5, scale_down_window=0.0)
    broker = BrokerConfig(url=redis_server.url)
    backend = RecordingBackend({(A, "q"): 1})
    clock = Clock()
    reports: list[PoolResult] = []
    loop = make_loop(backend, observer, clock, reports)
    loop.register(A, broker, {"q": QueuePlan(policy, 1.0, shadow=True)})
    client.lpush("q", *range(23))
    for _ in range(2):
        await loop.run_once()
        clock.now += 1.0
    assert backend.calls == [], "a shadow queue is never scaled"
    (queue,) = reports[-1].queues
    assert queue.shadow is not None and queue.shadow.scale_to == 5 and queue.scaled_from is None
    assert queue.decision is not None and queue.decision.desired_replicas == 5

    loop.register(A, broker, {"q": QueuePlan(policy, 1.0)})  # switched to Active
    await loop.run_once()
    assert backend.calls == [(A, "q", 5, ())]
    assert reports[-1].queues[0].shadow is None

    client.delete("q")  # demand falls: active mode drains the idlest workers
    now = float(client.time()[0])
    for name in ("w1", "w2", "w3", "w4", "w5"):
        client.hset(report_key("q"), name, encode_report(WorkerLoad(name, heartbeat=now, concurrency=5)))
    policy_floor = dataclasses.replace(policy, min_replicas=1)
    loop.register(A, broker, {"q": QueuePlan(policy_floor, 1.0)})
    clock.now += 1.0
    await loop.run_once()
    assert len(client.hkeys(drain_requests.drain_key("q"))) == 4
    loop.register(A, broker, {"q": QueuePlan(policy_floor, 1.0, shadow=True)})  # and back to Shadow
    clock.now += 1.0
    await loop.run_once()
    assert client.hkeys(drain_requests.drain_key("q")) == [], "Shadow takes back what Active asked"
    assert backend.calls == [(A, "q", 5, ())]
    (queue,) = reports[-1].queues
    assert queue.shadow is not None and queue.shadow.scale_to == 1 and queue.shadow.remove_first


async def test_each_queue_is_polled_at_its_own_due_once_whatever_moved_it(redis_server: RedisServer, observer) -> None:
    """The loop keeps every queue's next poll in one schedule, soonest first, and drops entries that no longer
    hold: a queue woken early is not polled again at its old time, a queue that left its pool's plan or a pool
    unregistered is not polled, a queue new to a plan is polled at once, and the wait until the next tick is the
    soonest due that still holds."""
    broker = BrokerConfig(url=redis_server.url)
    backend = RecordingBackend({(A, "q1"): 0, (A, "q2"): 0, (A, "q3"): 0, (B, "q4"): 0})
    reports: list[PoolResult] = []
    clock = Clock()
    loop = make_loop(backend, observer, clock, reports)

    def polled() -> list[tuple[PoolKey, str]]:
        taken = [(r.pool, q.queue) for r in reports for q in r.queues]
        reports.clear()
        return taken

    loop.register(A, broker, {"q1": QueuePlan(POLICY, 2.0), "q2": QueuePlan(POLICY, 4.0)})
    loop.register(B, broker, {"q4": QueuePlan(POLICY, 2.0)})
    await loop.run_once()
    assert polled() == [(A, "q1"), (A, "q2"), (B, "q4")]
    assert loop._seconds_to_next_due() == pytest.approx(2.0)

    clock.now += 1.0
    loop.wake(broker, ["q1"])  # q1 due now, instead of in 1 s
    await loop.run_once()
    assert polled() == [(A, "q1")]
    clock.now += 1.0  # q1's old due: not polled again (its next is 1 s away); B's q4 is due
    await loop.run_once()
    assert polled() == [(B, "q4")]
    assert loop._seconds_to_next_due() == pytest.approx(1.0)

    loop.register(A, broker, {"q1": QueuePlan(POLICY, 2.0), "q3": QueuePlan(POLICY, 2.0)})  # q2 gone, q3 new
    loop.unregister(B)
    assert loop._seconds_to_next_due() == 0.0, "a queue new to the plan is due at once"
    await loop.run_once()
    assert polled() == [(A, "q3")]
    clock.now += 10.0  # every due passed: q2 and B's q4 are not polled any more
    await loop.run_once()
    assert polled() == [(A, "q1"), (A, "q3")]
    loop.make_all_due()
    await loop.run_once()
    assert polled() == [(A, "q1"), (A, "q3")]


async def test_a_broker_no_pool_uses_any_more_is_let_go_at_the_next_tick(redis_server: RedisServer, observer) -> None:
    """A pool whose Secret now names another broker (another database here), or that is gone: the connections to
    the broker it used are closed at the next tick once no other pool uses it, and kept while one does."""
    first, second = BrokerConfig(url=redis_server.url), BrokerConfig(url=redis_server.url.rsplit("/", 1)[0] + "/5")
    backend = RecordingBackend({(A, "q"): 0, (B, "q"): 0})
    clock = Clock()
    loop = make_loop(backend, observer, clock, [])
    loop.register(A, first, {"q": QueuePlan(POLICY, 1.0)})
    loop.register(B, first, {"q": QueuePlan(POLICY, 1.0)})
    await loop.run_once()
    assert first in observer.connections

    loop.register(A, second, {"q": QueuePlan(POLICY, 1.0)})  # A's Secret changed; B still uses the first
    clock.now += 1.0
    await loop.run_once()
    assert first in observer.connections and second in observer.connections
    loop.unregister(B)
    clock.now += 1.0
    await loop.run_once()
    assert first not in observer.connections, "no pool uses it any more"
    assert second in observer.connections
    loop.unregister(A)
    await loop.run_once()
    assert second not in observer.connections
