"""The scaling engine's demand policy, example by example: each rule, the reasons, and the state's persistence.

The throughput policy, draining and schedules: tests/test_engine_time.py."""

from __future__ import annotations

import json

import pytest

from workerpool_operator.engine import DEMAND, Decision, QueueState, ScalingPolicy, decide, idlest_first
from workerpool_operator.engine.forecast import Learned
from workerpool_operator.observation import QueueObservation, WorkerLoad


def obs(backlog: int = 0, in_flight: int = 0, replicas: int = 0, **kwargs: object) -> QueueObservation:
    return QueueObservation("q", backlog=backlog, in_flight=in_flight, replicas=replicas, **kwargs)  # type: ignore[arg-type]


def run(
    policy: ScalingPolicy, steps: list[tuple[float, QueueObservation]], state: QueueState | None = None
) -> list[Decision]:
    state = state or QueueState()
    decisions = []
    for now, observation in steps:
        decision, state = decide(observation, state, policy, now)
        decisions.append(decision)
    return decisions


def test_scale_up_reason_names_the_figures_and_the_step_limit() -> None:
    policy = ScalingPolicy(policy=DEMAND, max_replicas=200, target_per_replica=4)
    decision, _ = decide(obs(480, 12, replicas=3), QueueState(), policy, 0.0)
    # ceil(492 / 4) = 123 wanted; the step limit allows max(3 + 4, 3 * 200%) = 7
    assert decision.desired_replicas == 7
    assert decision.recommendation == 123
    assert decision.reason.startswith("scale up: backlog 480, in-flight 12, target 4 per replica")
    assert "7 of 123 now" in decision.reason
    assert (decision.direction, decision.changed, decision.demand) == ("up", True, 492)


def test_step_limit_counts_from_the_replicas_at_the_start_of_the_period() -> None:
    policy = ScalingPolicy(policy=DEMAND, max_replicas=200, target_per_replica=1, scale_up_pods=4, scale_up_percent=100)
    decisions = run(policy, [(0.0, obs(500, replicas=3)), (5.0, obs(500, replicas=7)), (10.0, obs(500, replicas=7))])
    # 3 -> 7 at t=0; at t=5 the period (started with 3) is used up; at t=10 a new period starts from 7
    assert [d.desired_replicas for d in decisions] == [7, 7, 14]
    assert "step limit reached" in decisions[1].reason


def test_percent_step_wins_over_pods_when_larger() -> None:
    policy = ScalingPolicy(policy=DEMAND, max_replicas=500, target_per_replica=1, scale_up_pods=4, scale_up_percent=100)
    decision, _ = decide(obs(1000, replicas=20), QueueState(), policy, 0.0)
    assert decision.desired_replicas == 40


def test_scale_down_waits_for_the_highest_recommendation_in_the_window() -> None:
    policy = ScalingPolicy(
        policy=DEMAND, max_replicas=50, target_per_replica=1, scale_down_window=60.0, idle_before_zero=1e9
    )
    steps = [(0.0, obs(10, replicas=10)), (30.0, obs(6, replicas=10)), (40.0, obs(2, replicas=10))]
    steps += [(61.0, obs(2, replicas=10)), (71.0, obs(2, replicas=6)), (101.0, obs(2, replicas=6))]
    decisions = run(policy, steps)
    assert [d.desired_replicas for d in decisions] == [10, 10, 10, 6, 6, 2]
    assert decisions[1].reason.startswith("hold 10: backlog 6, in-flight 0, target 1 per replica asks for 6")
    assert decisions[3].reason.endswith("highest recommendation in the last 60s: 6")
    assert decisions[3].direction == "down"


def test_a_fresh_state_never_scales_down_at_once() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=1, scale_down_window=60.0)
    decisions = run(policy, [(0.0, obs(1, replicas=8)), (59.0, obs(1, replicas=8)), (61.0, obs(1, replicas=8))])
    assert [d.desired_replicas for d in decisions] == [8, 8, 1]


def test_zero_window_scales_down_at_once() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=1, scale_down_window=0.0)
    decision, _ = decide(obs(2, replicas=8), QueueState(), policy, 0.0)
    assert decision.desired_replicas == 2


def test_goes_to_zero_only_after_the_idle_period_with_nothing_in_flight() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=1, scale_down_window=10.0, idle_before_zero=120.0)
    steps = [(0.0, obs(0, 1, replicas=1)), (10.0, obs(0, 0, replicas=1)), (100.0, obs(0, 0, replicas=1))]
    steps += [(125.0, obs(0, 1, replicas=1)), (130.0, obs(0, 0, replicas=1)), (250.0, obs(0, 0, replicas=1))]
    decisions = run(policy, steps)
    # in flight at 125 restarts the idle clock: zero only at 250 (idle since 130)
    assert [d.desired_replicas for d in decisions] == [1, 1, 1, 1, 1, 0]
    assert decisions[5].reason == "scale to zero: no backlog and nothing in flight for 120s"
    assert "idle 90s of 120s before zero" in decisions[2].reason


def test_min_replicas_keeps_an_idle_queue_awake() -> None:
    policy = ScalingPolicy(
        policy=DEMAND, min_replicas=2, target_per_replica=1, idle_before_zero=0.0, scale_down_window=0.0
    )
    decisions = run(policy, [(0.0, obs(0, replicas=5)), (1000.0, obs(0, replicas=2)), (2000.0, obs(0, replicas=0))])
    assert [d.desired_replicas for d in decisions] == [2, 2, 2]
    assert decisions[2].reason.startswith("scale up to min replicas 2")


def test_activation_backlog_wakes_a_sleeping_queue() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=2, activation_backlog=5)
    asleep, state = decide(obs(4, replicas=0), QueueState(), policy, 0.0)
    assert asleep.desired_replicas == 0
    assert asleep.reason == "asleep: backlog 4 below activation 5"
    awake, _ = decide(obs(5, replicas=0), state, policy, 5.0)
    assert awake.desired_replicas == 3
    assert awake.reason.startswith("wake from zero: backlog 5 >= activation 5")


def test_wake_ignores_recommendations_from_before_the_queue_slept() -> None:
    policy = ScalingPolicy(
        policy=DEMAND, max_replicas=20, target_per_replica=1, scale_down_window=300.0, idle_before_zero=30.0
    )
    state = QueueState(recommendations=((0.0, 9),))
    decision, _ = decide(obs(1, replicas=0), state, policy, 100.0)
    assert decision.desired_replicas == 1


def test_failed_observations_hold_then_fall_back_to_the_floor() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=1, fallback_failure_threshold=3, fallback_replicas=4)
    decisions = run(policy, [(float(t), obs(replicas=2, error="timeout after 2s")) for t in range(3)])
    assert [d.desired_replicas for d in decisions] == [2, 2, 4]
    assert [d.fallback_active for d in decisions] == [False, False, True]
    assert decisions[0].reason == "observation failed (1 in a row): holding 2 replicas; timeout after 2s"
    assert decisions[2].reason.startswith("fallback after 3 failed observations: at least 4 replicas, now 4")
    assert decisions[0].demand is None


def test_fallback_never_lowers_replicas_and_recovery_resets_the_count() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=1, fallback_failure_threshold=1, fallback_replicas=2)
    down, state = decide(obs(replicas=6, error="refused"), QueueState(), policy, 0.0)
    assert down.desired_replicas == 6
    assert state.failures == 1
    _, state = decide(obs(3, replicas=6), state, policy, 5.0)
    assert state.failures == 0


def test_an_outage_restarts_the_idle_clock() -> None:
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=1, idle_before_zero=60.0, scale_down_window=0.0)
    steps = [(0.0, obs(replicas=1)), (30.0, obs(replicas=1, error="timeout")), (61.0, obs(replicas=1))]
    steps += [(122.0, obs(replicas=1))]
    decisions = run(policy, steps)
    assert [d.desired_replicas for d in decisions] == [1, 1, 1, 0]


def test_paused_holds_whatever_runs() -> None:
    policy = ScalingPolicy(policy=DEMAND, max_replicas=3, target_per_replica=1, paused=True)
    state = QueueState(failures=2)
    decision, new_state = decide(obs(1000, replicas=7), state, policy, 0.0)
    assert (decision.desired_replicas, decision.paused, decision.reason) == (7, True, "paused: holding 7 replicas")
    assert new_state == state


def test_max_replicas_is_a_hard_cap() -> None:
    policy = ScalingPolicy(policy=DEMAND, max_replicas=5, target_per_replica=1)
    decision, _ = decide(obs(100, replicas=9), QueueState(), policy, 0.0)
    assert decision.desired_replicas == 5
    assert decision.reason.startswith("scale down to max replicas 5")


def test_scale_down_removes_the_idlest_workers_first() -> None:
    workers = (
        WorkerLoad("w-busy", running=4, reserved=4),
        WorkerLoad("w-b", running=1, reserved=0),
        WorkerLoad("w-reserved", running=0, reserved=1),
        WorkerLoad("w-a", running=1, reserved=0),
        WorkerLoad("w-idle", running=0, reserved=0),
    )
    policy = ScalingPolicy(policy=DEMAND, target_per_replica=8, scale_down_window=0.0, drain_timeout=0.0)
    decision, _ = decide(obs(0, 8, replicas=5, workers=workers), QueueState(), policy, 0.0)
    assert decision.desired_replicas == 1
    assert decision.remove_first == ("w-idle", "w-reserved", "w-a", "w-b")
    assert decision.drain == ()
    up, _ = decide(obs(100, 8, replicas=1, workers=workers), QueueState(), policy, 0.0)
    assert up.remove_first == ()


def test_idlest_first_orders_by_load_then_running_then_name() -> None:
    workers = (WorkerLoad("c", running=1), WorkerLoad("b", reserved=1), WorkerLoad("a", running=1))
    assert idlest_first(workers, 3) == ("b", "a", "c")
    assert idlest_first(workers, 0) == ()


def test_state_round_trips_through_json() -> None:
    learned = Learned(
        at=10.0, outstanding=7, running=3, workers=(WorkerLoad("w-1", done=12),), arrival_rate=1.5,
        recent_rate=2.5, busy=40.0, completed=20.0, startup=14.0, newest_start=9.0, launches=((8.0, 2),), done=12,
    )  # fmt: skip
    state = QueueState(
        failures=2, idle_since=12.5, recommendations=((1.0, 5), (3.5, 2)), scale_ups=((3.0, 1),),
        draining=(("w-2", 4.0),), learned=learned,
    )  # fmt: skip
    assert QueueState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert QueueState.from_dict(None) == QueueState()
    assert QueueState.from_dict({}) == QueueState()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"failures": -1}, "failures must be a non-negative integer"),
        ({"idleSince": "yesterday"}, "idleSince must be a number"),
        ({"recommendations": [[1.0]]}, "recommendations must be a list of [time, replicas]"),
        ({"scaleUps": [[1.0, -2]]}, "scaleUps replicas must be a non-negative integer"),
        ({"recommendations": "3"}, "recommendations must be a list"),
        ({"draining": [["w", "soon"]]}, "draining must be a number"),
        ({"learned": {"counters": [["w", -1]]}}, "learned.counters must be a list of [worker, done]"),
        ({"learned": {"busy": -4}}, "learned figures must be non-negative numbers"),
        ({"learned": {"startup": "slow"}}, "learned.startup must be a non-negative number"),
        ({"learned": [1]}, "learned must be an object"),
    ],
)
def test_state_from_bad_data_says_what_is_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="scaling state: " + message.replace("[", r"\[").replace("]", r"\]")):
        QueueState.from_dict(data)


def test_a_restart_between_every_decision_changes_nothing() -> None:
    policy = ScalingPolicy(
        policy=DEMAND, max_replicas=30, target_per_replica=3, fallback_replicas=2, scale_down_window=30.0
    )
    loads = [(0, 0), (40, 2), (90, 12), (90, 30), (3, 40), (0, 12), (0, 0), (0, 0), (7, 0), (0, 0)] * 8
    steps = []
    for i, (backlog, in_flight) in enumerate(loads):
        error = "timeout" if i % 13 in (5, 6, 7) else None
        steps.append((i * 7.0, backlog, in_flight, error))

    def replay(restart: bool) -> list[Decision]:
        state, replicas, decisions = QueueState(), 0, []
        for now, backlog, in_flight, error in steps:
            observation = obs(backlog, in_flight, replicas=replicas, error=error)
            decision, state = decide(observation, state, policy, now)
            if restart:
                state = QueueState.from_dict(json.loads(json.dumps(state.to_dict())))
            decisions.append(decision)
            replicas = decision.desired_replicas
        return decisions

    plain = replay(restart=False)
    assert plain == replay(restart=True)
    assert len({d.desired_replicas for d in plain}) > 3  # the sequence really scales both ways


def test_a_used_up_step_limit_holds_and_never_scales_down() -> None:
    """Found by hypothesis: replicas added outside the engine's count (0 -> 2 recorded as 0 -> ?) left the
    limit below the current replicas, and a scale-up became a scale-down."""
    policy = ScalingPolicy(policy=DEMAND, max_replicas=3, target_per_replica=1, scale_up_pods=1, scale_up_percent=0)
    state = QueueState(scale_ups=((10_000.0, 0),))
    decision, _ = decide(obs(0, 3, replicas=2), state, policy, 10_000.0)
    assert decision.desired_replicas == 2
    assert decision.reason.startswith("hold 2:") and "step limit reached" in decision.reason
