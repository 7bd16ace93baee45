"""The engine's throughput policy, draining and schedules, example by example (the demand policy:
tests/test_engine.py; properties of both: tests/test_engine_properties.py)."""

from __future__ import annotations

import datetime
import json
import math

from workerpool_operator.engine import DEMAND, QueueState, ScalingPolicy, Schedule, decide
from workerpool_operator.engine.forecast import Learned, capacity, learn
from workerpool_operator.engine.schedules import Window, cron_windows, floor
from workerpool_operator.observation import QueueObservation, WorkerLoad


def obs(backlog: int, workers: tuple[WorkerLoad, ...], replicas: int | None = None) -> QueueObservation:
    in_flight = sum(w.running + w.reserved for w in workers)
    return QueueObservation("q", backlog, in_flight, workers, replicas=len(workers) if replicas is None else replicas)


def busy(name: str, running: int, done: int = 0, **fields: object) -> WorkerLoad:
    return WorkerLoad(name, running=running, done=done, concurrency=4, **fields)  # type: ignore[arg-type]


def known(
    task_seconds: float, at: float, workers: tuple[WorkerLoad, ...], outstanding: int, **fields: object
) -> QueueState:
    """A state whose estimates say ``task_seconds`` per task and no arrivals; its baseline is ``workers``."""
    running = sum(w.running for w in workers)
    done = sum(w.done for w in workers)
    learned = Learned(
        at,
        outstanding,
        running,
        workers,
        busy=task_seconds * 1e6,
        completed=1e6,
        done=done,
        **fields,  # type: ignore[arg-type]
    )
    return QueueState(learned=learned)


# --- what the engine learns ----------------------------------------------------------------------------------


def test_task_seconds_and_arrival_rate_come_from_the_reports() -> None:
    first = learn(Learned(), (busy("a", 4, done=10), busy("b", 4, done=5)), 20, 0, 100.0)
    assert first.at == 100.0 and first.task_seconds is None  # a baseline, nothing finished yet
    # 10 s later: 20 tasks finished (a: 12, b: 8), 8 slots busy throughout, 14 more tasks waiting or held
    second = learn(first, (busy("a", 4, done=22), busy("b", 4, done=13)), 34, 0, 110.0)
    assert second.task_seconds == 80 / 20  # 80 slot-seconds for 20 tasks
    arrivals_per_second = (34 - 20 + 20) / 10
    assert second.arrival_rate == (1 - math.exp(-10 / 30)) * arrivals_per_second
    assert second.recent_rate > second.arrival_rate  # the recent rate reacts faster


def test_a_worker_that_left_or_joined_does_not_count_as_work() -> None:
    first = learn(Learned(), (busy("a", 2, done=100), busy("b", 2, done=50)), 4, 0, 0.0)
    # b is gone (its 50 are not negative work), c started meanwhile and finished 3
    second = learn(first, (busy("a", 2, done=104), busy("c", 2, done=3, started=1.0)), 4, 0, 2.0)
    assert second.completed == 7


def test_the_start_up_delay_is_learned_from_scale_up_to_first_report() -> None:
    policy = ScalingPolicy(max_replicas=10, target_per_replica=4, startup_seconds=30.0)
    one = (busy("a", 4, done=100, started=1.0),)
    _, state = decide(obs(2000, one), known(0.5, 998.0, one, 2004), policy, 1000.0)
    assert state.learned.launches and state.learned.launches[0][0] == 1000.0
    joined = (busy("a", 4, done=120, started=1.0), busy("b", 0, started=1012.0))
    _, state = decide(obs(1900, joined, replicas=state.learned.launches[0][1] + 1), state, policy, 1014.0)
    assert state.learned.startup == 12.0


def test_an_idle_queue_forgets_its_arrival_rate_and_stops_changing() -> None:
    learned = Learned(at=0.0, arrival_rate=5.0, recent_rate=5.0, busy=10.0, completed=5.0)
    for step in range(1, 200):
        learned = learn(learned, (), 0, 0, step * 2.0)
    assert learned.at is None and learned.arrival_rate == 0.0
    assert learn(learned, (), 0, 0, 500.0) == learned  # nothing moves: no status write for an idle queue
    assert learned.task_seconds == 2.0  # what was learned about the tasks stays


def test_capacity_is_one_slot_per_long_task_and_a_start_up_of_work_for_short_ones() -> None:
    # 12 long tasks (10 min) waiting or running: one slot each, whatever the start-up
    assert capacity(8, 4, 0.0, 600.0, 4, 20.0) == 3.0
    # short tasks: 20/s of 0.2 s is 4 slots; 400 queued done within half a start-up (10 s) is 8 more
    assert capacity(400, 0, 20.0, 0.2, 4, 20.0) == (4 + 8) / 4


# --- the throughput policy -------------------------------------------------------------------------------------


def test_without_throughput_data_it_scales_on_demand_with_the_step_limit() -> None:
    policy = ScalingPolicy(max_replicas=100, target_per_replica=4)
    decision, _ = decide(obs(400, (busy("a", 4),)), QueueState(), policy, 0.0)
    assert decision.desired_replicas == 5  # demand asks for 101; the step limit allows 1 + 4
    assert decision.reason.startswith("scale up: backlog 400, in-flight 4, target 4 per replica")


def test_it_holds_when_the_workers_there_finish_before_a_new_one_is_ready() -> None:
    policy = ScalingPolicy(max_replicas=20, target_per_replica=4, startup_seconds=30.0)
    two = (busy("a", 4), busy("b", 4))
    decision, _ = decide(obs(400, two), known(0.5, 98.0, two, 408), policy, 100.0)
    # 2 workers x 4 slots / 0.5 s = 16 tasks/s: 408 tasks in 26 s, before a new worker (30 s) could help
    assert decision.desired_replicas == 2
    assert decision.reason == ("hold 2: backlog 400 + in-flight 8 done in 26s by 2 workers; a new worker needs 30s")


def test_it_adds_what_the_data_asks_for_at_once_without_a_step_limit() -> None:
    policy = ScalingPolicy(max_replicas=50, target_per_replica=4, startup_seconds=10.0, scale_up_pods=1)
    one = (busy("a", 4),)
    decision, _ = decide(obs(2000, one), known(0.2, 98.0, one, 2004), policy, 100.0)
    # one worker does 20 tasks/s: 1800 still wait when a new one is ready, to be done within 5 s
    assert decision.desired_replicas == 1 + 18
    assert decision.reason.startswith("scale up to 19: backlog 2000, in-flight 4")
    assert "1800 tasks still there when a new worker is ready in 10s" in decision.reason


def test_it_keeps_idle_workers_for_one_start_up_then_drains_the_idlest() -> None:
    policy = ScalingPolicy(max_replicas=20, target_per_replica=4, startup_seconds=10.0)
    four = (busy("a", 1), busy("b", 0), busy("c", 2), busy("d", 0))
    state = known(0.5, 98.0, four, 3)
    for now in range(100, 110, 2):  # a fresh window holds what runs, for one start-up (10 s)
        decision, state = decide(obs(0, four), state, policy, float(now))
        assert decision.drain == (), now
    decision, state = decide(obs(0, four), state, policy, 110.0)
    assert decision.drain == ("b", "d", "a")
    assert decision.desired_replicas == 4  # draining workers stay until they are idle
    assert decision.reason.startswith("scale down to 1:")


def test_the_demand_policy_can_be_pinned() -> None:
    policy = ScalingPolicy(max_replicas=50, target_per_replica=4, policy=DEMAND)
    one = (busy("a", 4),)
    decision, _ = decide(obs(2000, one), known(0.2, 98.0, one, 2004), policy, 100.0)
    assert decision.desired_replicas == 5  # the step limit, whatever the estimates say
    assert decision.reason.startswith("scale up: backlog 2000")


# --- draining --------------------------------------------------------------------------------------------------

DRAIN = ScalingPolicy(policy=DEMAND, target_per_replica=4, scale_down_window=0.0, idle_before_zero=1e9)


def test_a_drained_worker_is_removed_once_its_report_says_it_is_idle() -> None:
    three = (busy("a", 2), busy("b", 0), busy("c", 1))
    decision, state = decide(obs(0, three), QueueState(), DRAIN, 0.0)
    assert (decision.drain, decision.desired_replicas, decision.remove_first) == (("b", "c"), 3, ())
    assert state.draining == (("b", 0.0), ("c", 0.0))
    reports = (busy("a", 2), busy("b", 0, draining=True), busy("c", 1, draining=True))
    decision, state = decide(obs(0, reports), state, DRAIN, 2.0)
    assert (decision.desired_replicas, decision.remove_first) == (2, ("b",))  # c still runs its task
    assert state.draining == (("c", 0.0),)
    assert decision.reason.endswith("remove 1 drained worker")


def test_a_removed_worker_is_not_counted_while_its_pod_terminates() -> None:
    """Between the scale-down and its exit the removed worker still reports (draining, idle): it is neither
    counted, nor taken back, nor removed a second time; it leaves the state once its reports stop."""
    state = QueueState(draining=(("b", 0.0),))
    reports = (busy("a", 2), busy("b", 0, draining=True))
    decision, state = decide(obs(0, reports), state, DRAIN, 2.0)
    assert (decision.desired_replicas, decision.remove_first, state.leaving) == (1, ("b",), ("b",))
    for now in (4.0, 6.0):  # one replica now; b reports until its SIGTERM ends it
        decision, state = decide(obs(0, reports, replicas=1), state, DRAIN, now)
        assert (decision.desired_replicas, decision.remove_first, decision.drain, decision.undrain) == (1, (), (), ())
        assert (state.draining, state.leaving) == ((), ("b",))
    _, state = decide(obs(0, (busy("a", 2),)), state, DRAIN, 8.0)
    assert state.leaving == ()
    # The last one removed: nothing left to serve, and its request still stays until it exits.
    _, state = decide(obs(0, (), replicas=0), QueueState(leaving=("z",)), DRAIN, 9.0)
    assert state.leaving == (), "gone"
    idle_z = (busy("z", 0, draining=True),)
    _, state = decide(obs(0, idle_z, replicas=0), QueueState(leaving=("z",)), DRAIN, 9.0)
    assert state.leaving == ("z",), "still reporting: still leaving, asleep or not"
    assert QueueState.from_dict(json.loads(json.dumps(state._replace(leaving=("b",)).to_dict()))).leaving == ("b",)


def test_demand_back_takes_draining_workers_back_before_adding_pods() -> None:
    state = QueueState(draining=(("b", 0.0), ("c", 0.0)))
    reports = (busy("a", 4), busy("b", 0, draining=True), busy("c", 3, draining=True))
    decision, state = decide(obs(8, reports), state, DRAIN, 2.0)  # 15 tasks: 4 workers
    assert decision.undrain == ("c", "b")  # the busiest first
    assert decision.desired_replicas == 4  # and one new pod
    assert state.draining == ()


def test_drain_timeout_removes_a_busy_worker_anyway() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=4, scale_down_window=0.0, drain_timeout=600.0)
    state = QueueState(draining=(("b", 0.0),))
    reports = (busy("a", 1), busy("b", 2, draining=True))
    assert decide(obs(0, reports), state, policy, 599.0)[0].remove_first == ()
    decision, state = decide(obs(0, reports), state, policy, 600.0)
    assert (decision.desired_replicas, decision.remove_first, state.draining) == (1, ("b",), ())


def test_nobody_is_removed_by_name_while_pods_are_starting() -> None:
    """The ReplicaSet removes unready pods first: removing b by name now would remove a starting pod."""
    state = QueueState(draining=(("b", 0.0),))
    reports = (busy("a", 4), busy("b", 0, draining=True))
    decision, state = decide(obs(3, reports, replicas=3), state, DRAIN, 2.0)  # one pod starting, still wanted
    assert decision.remove_first == () and state.draining == (("b", 0.0),)
    decision, _ = decide(obs(0, reports, replicas=3), state, DRAIN, 4.0)  # not wanted: both go
    assert (decision.desired_replicas, decision.remove_first) == (1, ("b",))


def test_workers_gone_leave_the_drain_state_and_a_draining_report_is_adopted() -> None:
    state = QueueState(draining=(("gone", 0.0),))
    reports = (busy("a", 1), busy("b", 1, draining=True))
    _, state = decide(obs(0, reports), state, DRAIN, 5.0)
    assert state.draining == (("b", 5.0),)


def test_an_older_worker_that_never_confirms_is_removed_when_idle_after_a_while() -> None:
    state = QueueState(draining=(("b", 0.0),))
    reports = (busy("a", 1), busy("b", 0))  # idle, never says it is draining
    assert decide(obs(0, reports), state, DRAIN, 9.0)[0].remove_first == ()
    assert decide(obs(0, reports), state, DRAIN, 10.0)[0].remove_first == ("b",)


def test_without_draining_the_idlest_go_at_once_and_leftover_drains_are_taken_back() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=4, scale_down_window=0.0, drain_timeout=0.0)
    state = QueueState(draining=(("c", 0.0),))
    reports = (busy("a", 3), busy("b", 0), busy("c", 0, draining=True))
    decision, state = decide(obs(0, reports), state, policy, 1.0)
    assert (decision.desired_replicas, decision.remove_first, decision.undrain) == (1, ("b", "c"), ("c",))
    assert state.draining == () and state.leaving == (), "no drain requests to keep: nobody tracked as leaving"


def test_drains_and_estimates_survive_a_restart() -> None:
    policy = ScalingPolicy(max_replicas=20, target_per_replica=4, startup_seconds=10.0)
    busy_then_idle = [(400, 4, 0), (300, 4, 30), (100, 4, 70), (0, 1, 30), (0, 1, 3)] + [(0, 0, 1)] + [(0, 0, 0)] * 8
    loads = busy_then_idle * 3

    def replay(restart: bool) -> list[tuple[int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
        state, out, done = QueueState(), [], 0
        for step, (backlog, running, finished) in enumerate(loads):
            done += finished
            draining = {name for name, _ in state.draining}
            workers = tuple(
                busy(n, running, done=done if n == "a" else 0, started=1.0, draining=n in draining)
                for n in ("a", "b", "c")
            )
            decision, state = decide(obs(backlog, workers), state, policy, 100.0 + 5 * step)
            if restart:
                state = QueueState.from_dict(json.loads(json.dumps(state.to_dict())))
            out.append((decision.desired_replicas, decision.drain, decision.undrain, decision.remove_first))
        return out

    plain = replay(restart=False)
    assert plain == replay(restart=True)
    assert any(drained for _, drained, _, _ in plain)


# --- schedules -------------------------------------------------------------------------------------------------


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC).timestamp()


def test_a_schedule_sets_its_floor_one_start_up_ahead_of_the_window() -> None:
    hourly = Schedule("0 * * * *", duration=300.0, replicas=5)
    policy = ScalingPolicy(max_replicas=20, target_per_replica=4, startup_seconds=30.0, schedules=(hourly,))
    idle = QueueObservation("q", replicas=1, workers=(busy("a", 0),))
    for moment, wanted in [("10:58:00", 1), ("10:59:21", 5), ("11:04:59", 5), ("11:05:00", 1)]:
        decision, _ = decide(idle, QueueState(), policy, at(f"2026-03-02 {moment}"))
        assert decision.desired_replicas == wanted, moment
    decision, _ = decide(idle, QueueState(), policy, at("2026-03-02 10:59:21"))
    assert decision.reason.startswith("schedule '0 * * * *' (opens in 39s): at least 5 workers")


def test_schedules_read_their_time_zone() -> None:
    paris = Schedule("0 9 * * *", duration=600.0, replicas=3, timezone="Europe/Paris")
    (window,) = cron_windows((paris,), at("2026-07-01 07:05:00"), 0.0)  # 09:05 in Paris (UTC+2)
    assert window.start == at("2026-07-01 07:00:00")


def test_windows_from_another_source_feed_the_same_floor() -> None:
    beat = Window(1000.0, 1060.0, tasks=120, source="beat: reports.build")
    assert floor([beat], 960.0, 30.0, size=lambda tasks: math.ceil(tasks / 4)) == (0, None)
    assert floor([beat], 975.0, 30.0, size=lambda tasks: math.ceil(tasks / 4)) == (30, beat)
    assert floor([beat, Window(900.0, 2000.0, replicas=40)], 975.0, 30.0)[0] == 40


def test_a_worker_that_does_not_say_when_it_started_is_timed_at_its_first_report() -> None:
    policy = ScalingPolicy(max_replicas=10, target_per_replica=4, startup_seconds=30.0)
    one = (busy("a", 4, done=100),)
    _, state = decide(obs(2000, one), known(0.5, 998.0, one, 2004), policy, 1000.0)
    joined = (busy("a", 4, done=120), busy("b", 0))
    _, state = decide(obs(1900, joined, replicas=state.learned.launches[0][1] + 1), state, policy, 1008.0)
    assert state.learned.startup == 8.0


def test_an_idle_queue_leaves_its_persisted_state_alone() -> None:
    """No status write for an idle pool: between polls only the time of the latest recommendation moves."""
    policy = ScalingPolicy(min_replicas=1, target_per_replica=4, startup_seconds=10.0)
    state = known(0.5, 0.0, (busy("a", 0, done=7),), 0)
    written = []
    for step in range(200):
        idle = (WorkerLoad("a", done=7, heartbeat=1000.0 + 2 * step, concurrency=4, started=1.0),)
        decision, state = decide(obs(0, idle), state, policy, 1000.0 + 2 * step)
        assert decision.desired_replicas == 1
        stored = state.to_dict()
        stored["recommendations"] = [value for _, value in stored["recommendations"]]
        written.append(json.dumps(stored, sort_keys=True))
    assert len(set(written[-100:])) == 1


def test_long_tasks_busy_workers_hand_back_what_they_prefetched_until_a_slot_frees() -> None:
    """With long tasks a task prefetched by a busy worker would wait a whole task: the worker is asked to
    drain (it hands its reserved tasks back to the queue, where an idle worker takes them) and taken back
    once one of its slots is free. It is not a scale-down: it keeps counting as a serving worker."""
    policy = ScalingPolicy(max_replicas=10, target_per_replica=2)
    full = WorkerLoad("a", running=2, reserved=2, done=5, concurrency=2, started=1.0)
    idle = WorkerLoad("b", running=0, done=5, concurrency=2, started=1.0)
    state = known(600.0, 98.0, (full, idle), 4)
    decision, state = decide(obs(0, (full, idle)), state, policy, 100.0)
    assert decision.drain == ("a",) and state.handing_back == ("a",) and state.draining == ()
    assert "1 busy worker hand back what they prefetched" in decision.reason
    handed = WorkerLoad("a", running=2, done=5, concurrency=2, started=1.0, draining=True)
    took = WorkerLoad("b", running=2, done=5, concurrency=2, started=1.0)
    decision, state = decide(obs(0, (handed, took)), state, policy, 102.0)
    assert decision.drain == () and decision.undrain == () and state.handing_back == ("a",)
    assert state.draining == ()  # its draining report is not adopted as a scale-down
    freed = WorkerLoad("a", running=1, done=6, concurrency=2, started=1.0, draining=True)
    decision, state = decide(obs(0, (freed, took)), state, policy, 104.0)
    assert decision.undrain == ("a",) and state.handing_back == ()


def test_short_tasks_keep_their_prefetch() -> None:
    policy = ScalingPolicy(max_replicas=10, target_per_replica=2)
    full = WorkerLoad("a", running=2, reserved=2, done=5, concurrency=2, started=1.0)
    decision, state = decide(obs(0, (full,)), known(0.5, 98.0, (full,), 4), policy, 100.0)
    assert decision.drain == () and state.handing_back == ()
