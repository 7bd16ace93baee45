"""Waits and their target (issue 22): the wait model (engine/waits.py) example by example, the throughput
policy's use of it through ``decide``, and ``simulate`` runs that hold a target wait at less cost."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from workerpool_operator.engine import QueueState, ScalingPolicy, decide
from workerpool_operator.engine.forecast import Learned
from workerpool_operator.engine.waits import (
    duty_share,
    flow_rate,
    for_target,
    lag_seconds,
    starting_in,
    starting_work,
    surge_arrivals,
    tail_wait,
)
from workerpool_operator.observation import QueueObservation, WorkerLoad
from workerpool_operator.sim.simulate import QueueSetup, simulate
from workerpool_operator.sim.trace import draw_tasks, read_trace

TRACES = Path(__file__).resolve().parent.parent / "examples" / "traces"

# --- the model ---------------------------------------------------------------------------------------------


def test_a_surge_is_expected_to_last_as_long_as_it_has_and_at_least_half_the_span() -> None:
    # 200/s against a usual 2/s, over the next 10 s
    assert surge_arrivals(2.0, 200.0, 2.0, 10.0) == 200 * 5 + 2 * 5  # 2 s old: half the span at 200/s
    assert surge_arrivals(2.0, 200.0, 8.0, 10.0) == 200 * 8 + 2 * 2
    assert surge_arrivals(2.0, 200.0, 60.0, 10.0) == 200 * 10
    assert surge_arrivals(5.0, 3.0, 60.0, 10.0) == 50.0  # no surge: the usual rate
    # sized for from a start-up on: the usual rate, rising to the recent one as the surge outlasts a start-up
    assert flow_rate(2.0, 200.0, 5.0, 10.0) == 101.0
    assert flow_rate(2.0, 200.0, 30.0, 10.0) == 200.0


def test_pods_starting_serve_from_their_ready_time() -> None:
    # 3 pods launched 4 s ago and 2 just now, start-up 10 s, 5 tasks/s each: before a pod started now is
    # ready, the first three serve 4 s and the others not at all
    launches = ((96.0, 3), (100.0, 2))
    assert starting_work(launches, 5, 100.0, 10.0, 5.0) == 3 * 4 * 5
    assert starting_in(launches, 5, 100.0, 10.0) == (3 * 6 + 2 * 10) / 5
    assert starting_work((), 2, 100.0, 10.0, 5.0) == 2 * 5 * 5  # unknown launches (a restart): half a start-up


def test_the_newest_task_waits_for_what_is_ahead_of_it() -> None:
    assert tail_wait(100, 10.0, 50.0, 20.0) == 10.0  # done by the workers there before others are ready
    assert tail_wait(400, 10.0, 50.0, 20.0) == 20.0 + 200 / 50
    assert tail_wait(5, 0.0, 5.0, 10.0) == 11.0
    assert tail_wait(5, 0.0, 0.0, 10.0) == math.inf
    assert tail_wait(0, 0.0, 0.0, 10.0) == 0.0


def test_a_target_asks_for_the_fewest_workers_that_start_every_task_within_it() -> None:
    # 900 waiting, 1 worker of 20 tasks/s, start-up 10 s, no arrivals: within 60 s that worker alone takes 45 s
    alone = for_target(900, 0, 0, 0.0, 20.0, 1, 0, 0.0, 10.0, 60.0, 0.0)
    assert alone.keep == 900 / (20 * 60) and alone.up == 900 / (20 * 60) and alone.reachable
    # within 20 s: 400 done by it, 500 more in the 10 s after new pods are ready: 2.5 workers more
    rushed = for_target(900, 0, 0, 0.0, 20.0, 1, 0, 0.0, 10.0, 20.0, 0.0)
    assert rushed.up == pytest.approx(1 + (900 / 20 - 20) / 10)
    # within 8 s nothing started now helps the newest task
    assert not for_target(900, 0, 0, 0.0, 20.0, 1, 0, 0.0, 10.0, 8.0, 0.0).reachable
    # a backlog whose tasks all came as long ago as the oldest (30 s): kept workers work it off in the 30 s left
    old = for_target(900, 0, 0, 0.0, 20.0, 1, 0, 0.0, 10.0, 60.0, 30.0)
    assert old.keep == pytest.approx(900 / (20 * 30))


def test_under_a_target_a_backlog_may_lag_a_flow_by_a_few_start_ups_of_it() -> None:
    # 40 tasks/s on workers of 4 tasks/s: the flow alone needs 10. Within 58 s, start-up 10 s: the backlog may
    # lag the arrivals by 20 s of them (two start-ups; a quarter of the 48 s left after one is less)
    assert lag_seconds(58.0, 10.0) == 20.0
    assert lag_seconds(298.0, 10.0) == 72.0  # a longer target: a quarter of what is left after a start-up
    assert lag_seconds(30.0, 10.0) == 10.0  # never more than half of it
    # 700 waiting, room for 100 more: 100 / (4 x 20) = 1.25 workers fewer than the flow's 10
    near = for_target(700, 0, 0, 40.0, 4.0, 10, 0, 0.0, 10.0, 58.0, 0.0)
    assert near.keep == pytest.approx(10 - 100 / (4 * 20))
    # the smaller the backlog, the fewer; at the lag, as many as the flow needs
    assert for_target(100, 0, 0, 40.0, 4.0, 10, 0, 0.0, 10.0, 58.0, 0.0).keep == pytest.approx(10 - 700 / 80)
    assert for_target(800, 0, 0, 40.0, 4.0, 10, 0, 0.0, 10.0, 58.0, 0.0).keep == pytest.approx(10.0)
    # past it, enough to get through it within the 38 s its tasks have left once its newest is 20 s old (once
    # the arrivals stop it may be), not within the 58 s of a newest task that has just come
    assert for_target(2000, 0, 0, 40.0, 4.0, 10, 0, 0.0, 10.0, 58.0, 0.0).keep == pytest.approx(2000 / (4 * 38))
    # no flow: nothing lags it, and the backlog keeps its own age
    assert for_target(700, 0, 0, 0.0, 4.0, 10, 0, 0.0, 10.0, 58.0, 0.0).keep == pytest.approx(700 / (4 * 58))


def test_one_worker_for_a_light_flow_is_needed_only_part_of_the_time_under_a_target() -> None:
    # 1 task/s on a worker that does 4/s, start-up 10 s, tasks may gather for 46 s
    assert duty_share(1.0, 4.0, 10.0, 46.0) == pytest.approx(0.25 + 0.75 * 10 / 56)
    assert duty_share(4.0, 4.0, 10.0, 46.0) == 1.0  # the flow needs it all along
    assert duty_share(1.0, 4.0, 10.0, 0.0) == 1.0  # no time to gather


# --- through decide ----------------------------------------------------------------------------------------

NOW = 10_000.0


def worker(name: str, running: int, done: int, at: float, started: float = 1_000.0) -> WorkerLoad:
    return WorkerLoad(name, running=running, done=done, heartbeat=at, concurrency=4, started=started)


def known(
    task_seconds: float,
    workers: tuple[WorkerLoad, ...],
    outstanding: int,
    rate: float = 0.0,
    recent: float | None = None,
    **fields: object,
) -> QueueState:
    """A state whose estimates say ``task_seconds`` per task and ``rate`` arrivals/s, last polled 2 s ago."""
    learned = Learned(
        NOW - 2.0,
        outstanding,
        sum(w.running for w in workers),
        workers,
        arrival_rate=rate,
        recent_rate=rate if recent is None else recent,
        busy=task_seconds * 1e6,
        completed=1e6,
        startup=10.0,
        done=sum(w.done for w in workers),
    )
    return QueueState(learned=learned, **fields)  # type: ignore[arg-type]


def observe(backlog: int, workers: tuple[WorkerLoad, ...], replicas: int | None = None) -> QueueObservation:
    in_flight = sum(w.running + w.reserved for w in workers)
    return QueueObservation("q", backlog, in_flight, workers, replicas=len(workers) if replicas is None else replicas)


def test_no_pod_is_added_that_would_be_ready_only_after_the_work() -> None:
    """A spike of 200 tasks/s has just stopped: its 900 tasks are done by the 20 workers there within 5 s; a
    pod started now (10 s) would find nothing to do, whatever the smoothed recent rate still says."""
    before = tuple(worker(f"w{i:02}", 4, 100, NOW - 2.5) for i in range(20))
    after = tuple(worker(f"w{i:02}", 4, 104, NOW - 0.5) for i in range(20))
    state = known(0.2, before, 80 + 900, rate=30.0, recent=150.0, backlog=900, surging_since=NOW - 6.0)
    decision, _ = decide(observe(900, after), state, ScalingPolicy(max_replicas=100, target_per_replica=4), NOW)
    assert decision.desired_replicas == 20
    assert decision.reason.startswith("hold 20") or decision.reason.startswith("steady")


def test_a_young_surge_is_sized_by_what_it_has_brought_not_by_a_whole_start_up_of_it() -> None:
    policy = ScalingPolicy(max_replicas=100, target_per_replica=4)
    before = (worker("a", 0, 100, NOW - 2.5),)
    now = (worker("a", 4, 100, NOW - 0.5),)
    # 2 s into a spike of 200/s: 400 waiting. Sized as 200/s for 5 s (half a start-up), not 10 s
    state = known(0.2, before, 0, rate=10.0, recent=190.0, surging_since=NOW)
    decision, _ = decide(observe(396, now), state, policy, NOW)
    assert 5 <= decision.desired_replicas <= 20, decision.reason
    assert decision.direction == "up"


def test_an_idle_worker_goes_at_once_when_tasks_come_further_apart_than_a_start_up() -> None:
    policy = ScalingPolicy(max_replicas=10, target_per_replica=4, idle_before_zero=120.0)
    idle = (worker("a", 0, 7, NOW - 1.0),)
    trickle = known(8.0, idle, 0, rate=1 / 60)  # a task a minute, start-up 10 s
    decision, _ = decide(observe(0, idle), trickle, policy, NOW)
    assert decision.drain == ("a",)  # it drains, and goes at the next poll (its report then says it is idle)
    assert decision.reason.startswith("scale to zero: no backlog and nothing in flight for 0s")
    assert "a new worker in 10s costs less than an idle one" in decision.reason
    busy = known(0.5, idle, 0, rate=2.0)  # 2 tasks/s: the next one comes long before a new worker would
    decision, state = decide(observe(0, idle), busy, policy, NOW)
    assert decision.desired_replicas == 1 and not decision.drain
    decision, _ = decide(observe(0, idle), state, policy, NOW + 10.0)  # idle for one start-up: then it goes
    assert decision.drain == ("a",) and decision.reason.startswith("scale to zero")


def test_a_target_lets_a_backlog_wait_when_the_workers_there_start_it_in_time() -> None:
    workers = tuple(worker(f"w{i}", 4, 100, NOW - 0.5) for i in range(3))
    state = known(0.2, workers, 912, rate=0.0, backlog=900)
    wide = ScalingPolicy(max_replicas=50, target_per_replica=4, target_wait=60.0)
    decision, _ = decide(observe(900, workers), state, wide, NOW)
    # 3 workers do 60 tasks/s: the newest of 900 starts in 15 s
    assert decision.desired_replicas == 3
    assert decision.reason == "hold 3: backlog 900, predicted wait 15s <= 60s with 3 workers"
    assert decision.predicted_wait == pytest.approx(15.0) and decision.target_wait == 60.0
    without, _ = decide(observe(900, workers), state, dataclasses.replace(wide, target_wait=None), NOW)
    assert without.desired_replicas > 3  # as fast as workers can be had: more pods
    assert without.target_wait is None


def test_a_target_lets_the_workers_fall_short_of_a_flow_while_the_backlog_stays_young() -> None:
    """40 tasks/s of 1 s on workers of 4 slots: the flow needs 10 workers, and 10 are busy. Under 60 s one may go:
    the 700 waiting (17.5 s of arrivals) may grow to 20 s of them before a worker must come back, and the newest
    of them still starts in 20 s."""
    busy = tuple(worker(f"w{i}", 4, 100, NOW - 0.5) for i in range(10))
    state = known(1.0, busy, 740, rate=40.0, backlog=700, recommendations=((NOW - 20.0, 10),))
    policy = ScalingPolicy(max_replicas=50, target_per_replica=4, target_wait=60.0)
    decision, _ = decide(observe(700, busy), state, policy, NOW)
    assert decision.desired_replicas == 10 and decision.drain == ("w0",), decision.reason
    assert decision.reason.startswith("scale down to 9:")
    assert decision.predicted_wait is not None and decision.predicted_wait <= 60.0
    assert decision.predicted_wait == pytest.approx(700 / (9 * 4))
    without, _ = decide(observe(700, busy), state, dataclasses.replace(policy, target_wait=None), NOW)
    assert without.desired_replicas > 10  # without a target: the backlog done within half a start-up


def test_a_target_no_longer_than_what_the_defaults_give_changes_nothing() -> None:
    workers = tuple(worker(f"w{i}", 4, 100, NOW - 0.5) for i in range(3))
    state = known(0.2, workers, 912, rate=40.0, backlog=900)
    base = ScalingPolicy(max_replicas=50, target_per_replica=4)
    tight = dataclasses.replace(base, target_wait=10.0)  # below a start-up and half: the defaults already
    held, _ = decide(observe(900, workers), state, tight, NOW)
    free, _ = decide(observe(900, workers), state, base, NOW)
    assert (held.desired_replicas, held.drain, held.predicted_wait) == (
        free.desired_replicas,
        free.drain,
        free.predicted_wait,
    )
    assert held.reason == free.reason + "; predicted wait 12s > 10s"  # it says so, though


def test_a_target_gathers_tasks_at_zero_until_a_worker_must_start() -> None:
    policy = ScalingPolicy(max_replicas=10, target_per_replica=4, target_wait=60.0)
    state = known(8.0, (), 0, rate=1 / 60)
    decision, state = decide(observe(1, (), replicas=0), state, policy, NOW)
    assert decision.desired_replicas == 0 and decision.reason.startswith("gather: backlog 1")
    for step in range(1, 30):
        decision, state = decide(observe(2, (), replicas=0), state, policy, NOW + 2 * step)
        if decision.desired_replicas:
            break
    # the oldest task may have come 2 s before the first poll that saw it: it starts within 60 s
    started = NOW + 2 * step
    assert started - (NOW - 2.0) + 10.0 <= 60.0
    assert started - (NOW - 2.0) + 10.0 >= 50.0  # and not much earlier than it must
    assert decision.desired_replicas == 1


def test_a_target_lets_the_last_worker_go_while_tasks_flow_when_they_can_gather() -> None:
    one = (worker("a", 1, 500, NOW - 0.5),)
    state = known(1.0, one, 1, rate=1.0)  # 1 task/s of 1 s on a worker of 4 slots: busy a quarter of the time
    decision, _ = decide(observe(0, one), state, ScalingPolicy(max_replicas=10, target_per_replica=4), NOW)
    assert decision.desired_replicas == 1  # without a target it stays
    relaxed = ScalingPolicy(max_replicas=10, target_per_replica=4, target_wait=120.0)
    decision, _ = decide(observe(0, one), state, relaxed, NOW)
    assert decision.desired_replicas == 1 and decision.drain == ("a",)  # drains, and goes once idle
    assert decision.reason.startswith("scale to zero:") and "tasks may gather for" in decision.reason


# --- simulated ---------------------------------------------------------------------------------------------


def test_simulated_spikes_keep_within_a_target_at_less_cost_than_without() -> None:
    trace = read_trace(str(TRACES / "spikes.csv"))
    tasks = draw_tasks(trace, "exp:1", 1)
    queue = QueueSetup("q", ScalingPolicy(max_replicas=20, target_per_replica=4), 4, 2.0)
    runs = {
        target: simulate(
            tasks,
            dataclasses.replace(queue, policy=dataclasses.replace(queue.policy, target_wait=target)),
            startup_delay=10.0,
            trace_end=trace.end,
            acks_late=True,
        )
        for target in (None, 60.0, 300.0)
    }
    for target in (60.0, 300.0):
        assert runs[target].wait_percentile(95) <= target
        assert runs[target].finished == len(tasks) and runs[target].killed == 0
    assert runs[300.0].replica_seconds < runs[60.0].replica_seconds < 0.6 * runs[None].replica_seconds
