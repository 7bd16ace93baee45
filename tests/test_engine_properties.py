"""Properties of the scaling engine, checked with hypothesis over random policies, states and observations."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from workerpool_operator.engine import DEMAND, POLICIES, Decision, QueueState, ScalingPolicy, decide
from workerpool_operator.engine.forecast import Learned
from workerpool_operator.observation import QueueObservation, WorkerLoad

settings.register_profile("engine", max_examples=200, deadline=None)
settings.load_profile("engine")

NOW = 10_000.0


@st.composite
def policies(draw: st.DrawFn, paused: bool = False) -> ScalingPolicy:
    low = draw(st.integers(0, 5))
    return ScalingPolicy(
        min_replicas=low,
        max_replicas=draw(st.integers(max(low, 1), 60)),
        target_per_replica=draw(st.integers(1, 20)),
        scale_up_pods=draw(st.integers(1, 10)),
        scale_up_percent=draw(st.integers(0, 300)),
        scale_up_period=draw(st.sampled_from([0.0, 10.0, 15.0, 60.0])),
        scale_down_window=draw(st.sampled_from([0.0, 15.0, 60.0, 300.0])),
        idle_before_zero=draw(st.sampled_from([0.0, 30.0, 120.0, 600.0])),
        activation_backlog=draw(st.integers(0, 20)),
        fallback_failure_threshold=draw(st.integers(1, 5)),
        fallback_replicas=draw(st.none() | st.integers(0, 60)),
        paused=paused,
        drain_timeout=draw(st.sampled_from([0.0, 60.0, 3600.0])),
        policy=draw(st.sampled_from(POLICIES)),
        startup_seconds=draw(st.sampled_from([5.0, 30.0])),
        target_wait=draw(st.sampled_from([None, 10.0, 60.0, 300.0])),
    )


@st.composite
def learned(draw: st.DrawFn) -> Learned:
    """Estimates as some earlier polls left them (or none yet)."""
    if draw(st.booleans()):
        return Learned()
    return Learned(
        at=draw(st.none() | st.floats(NOW - 30.0, NOW - 1.0)),
        outstanding=draw(st.integers(0, 500)),
        running=draw(st.integers(0, 100)),
        arrival_rate=draw(st.floats(-5.0, 300.0)),  # a smoothed rate may dip below zero for a poll
        recent_rate=draw(st.floats(-5.0, 300.0)),
        busy=draw(st.floats(0.0, 5000.0)),
        completed=draw(st.floats(0.0, 5000.0)),
        startup=draw(st.none() | st.floats(1.0, 120.0)),
    )


@st.composite
def states(draw: st.DrawFn) -> QueueState:
    """Any state ``decide`` could have left: recommendations with times rising and values falling."""
    ages = sorted(draw(st.lists(st.floats(0.0, 400.0), max_size=6, unique=True)), reverse=True)
    values = sorted(draw(st.lists(st.integers(0, 60), min_size=len(ages), max_size=len(ages), unique=True)))[::-1]
    ups = sorted(draw(st.lists(st.floats(0.0, 59.0), max_size=3)), reverse=True)
    return QueueState(
        failures=draw(st.integers(0, 6)),
        idle_since=draw(st.none() | st.floats(NOW - 1000.0, NOW)),
        recommendations=tuple((NOW - age, value) for age, value in zip(ages, values, strict=True)),
        scale_ups=tuple((NOW - age, draw(st.integers(0, 60))) for age in ups),
        learned=draw(learned()),
        waiting_since=draw(st.none() | st.floats(NOW - 600.0, NOW)),
        surging_since=draw(st.none() | st.floats(NOW - 60.0, NOW)),
        backlog=draw(st.integers(0, 5000)),
    )


workers = st.lists(
    st.builds(WorkerLoad, worker=st.text("abcdef", min_size=1, max_size=4), running=st.integers(0, 8)),
    max_size=5,
    unique_by=lambda w: w.worker,
).map(tuple)


ANY_REPLICAS = st.integers(0, 70)


@st.composite
def observations(draw: st.DrawFn, replicas: st.SearchStrategy[int] = ANY_REPLICAS) -> QueueObservation:
    return QueueObservation(
        "q",
        backlog=draw(st.integers(0, 5000)),
        in_flight=draw(st.integers(0, 500)),
        workers=draw(workers),
        error=draw(st.none() | st.just("timeout")),
        replicas=draw(replicas),
    )


@given(observations(), states(), policies())
def test_bounds_always_hold(observation: QueueObservation, state: QueueState, policy: ScalingPolicy) -> None:
    """Within [min, max]; above max only while workers drain (they are removed once idle, never killed)."""
    decision, new_state = decide(observation, state, policy, NOW)
    assert policy.min_replicas <= decision.desired_replicas
    serving = decision.desired_replicas - len(new_state.draining)
    assert serving <= max(policy.max_replicas, observation.replicas - len(observation.workers))
    assert decision.desired_replicas <= max(policy.max_replicas, observation.replicas)


@given(st.data(), states(), policies())
def test_a_failed_observation_never_lowers_replicas(
    data: st.DataObject, state: QueueState, policy: ScalingPolicy
) -> None:
    observation = data.draw(observations(replicas=st.integers(0, policy.max_replicas)))
    failed = QueueObservation("q", 0, 0, observation.workers, error="connection refused", replicas=observation.replicas)
    decision, new_state = decide(failed, state, policy, NOW)
    assert decision.desired_replicas >= failed.replicas
    assert decision.remove_first == ()
    assert new_state.failures == state.failures + 1


@given(
    policies(),
    st.integers(0, 2000),
    st.integers(0, 300),
    st.integers(0, 70),
    st.sampled_from([1.0, 5.0, 15.0]),
)
def test_constant_demand_does_not_flap(
    policy: ScalingPolicy, backlog: int, in_flight: int, replicas: int, interval: float
) -> None:
    """The replicas follow every decision; the demand stays the same: the replicas only ever move one way."""
    state = QueueState()
    history = [replicas]
    for step in range(int(3 * max(policy.scale_down_window, policy.idle_before_zero, 60.0) / interval) + 3):
        observation = QueueObservation("q", backlog, in_flight, replicas=history[-1])
        decision, state = decide(observation, state, policy, step * interval)
        history.append(decision.desired_replicas)
    moves = [b - a for a, b in itertools.pairwise(history) if b != a]
    turns = sum(1 for a, b in itertools.pairwise(moves) if (a > 0) != (b > 0))
    assert turns == 0, history  # stronger than "at most one change of direction per window": none at all


@given(st.data(), states(), policies(), st.integers(0, 70))
def test_desired_replicas_are_monotone_in_demand(
    data: st.DataObject, state: QueueState, policy: ScalingPolicy, replicas: int
) -> None:
    backlog = data.draw(st.integers(0, 3000))
    in_flight = data.draw(st.integers(0, 300))
    more_backlog = backlog + data.draw(st.integers(0, 3000))
    more_in_flight = in_flight + data.draw(st.integers(0, 300))
    less, _ = decide(QueueObservation("q", backlog, in_flight, replicas=replicas), state, policy, NOW)
    more, _ = decide(QueueObservation("q", more_backlog, more_in_flight, replicas=replicas), state, policy, NOW)
    assert less.desired_replicas <= more.desired_replicas


@given(st.data(), policies())
def test_a_demand_jump_is_answered_in_one_decision_up_to_the_step_limit(
    data: st.DataObject, policy: ScalingPolicy
) -> None:
    policy = dataclasses.replace(policy, policy=DEMAND)
    current = data.draw(st.integers(1, policy.max_replicas))
    wanted = data.draw(st.integers(current + 1, 200))
    demand = data.draw(st.integers((wanted - 1) * policy.target_per_replica + 1, wanted * policy.target_per_replica))
    backlog = data.draw(st.integers(0, demand))
    decision, _ = decide(QueueObservation("q", backlog, demand - backlog, replicas=current), QueueState(), policy, NOW)
    step_limit = max(current + policy.scale_up_pods, math.ceil(current * (100 + policy.scale_up_percent) / 100))
    assert decision.desired_replicas == max(policy.min_replicas, min(wanted, step_limit, policy.max_replicas))
    assert decision.desired_replicas > current or current == policy.max_replicas


@given(st.data(), states(), policies())
def test_backlog_at_the_activation_threshold_wakes_a_queue_from_zero(
    data: st.DataObject, state: QueueState, policy: ScalingPolicy
) -> None:
    backlog = data.draw(st.integers(max(policy.activation_backlog, 1), 5000))
    in_flight = data.draw(st.integers(0, 50))
    decision, _ = decide(QueueObservation("q", backlog, in_flight, replicas=0), state, policy, NOW)
    if policy.target_wait is not None and decision.desired_replicas == 0:
        # a target lets a backlog gather, but only while a worker started now keeps the wait within it
        assert decision.predicted_wait is not None and decision.predicted_wait <= policy.target_wait, decision
        return
    assert decision.desired_replicas >= 1
    assert decision.direction == "up"


@given(observations(), states(), policies(), st.booleans())
def test_identical_inputs_give_identical_outputs(
    observation: QueueObservation, state: QueueState, policy: ScalingPolicy, paused: bool
) -> None:
    if paused:
        policy = ScalingPolicy(
            **{**{f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}, "paused": True}
        )
    # (field by field, not by __slots__: the compiled engine's classes have none)
    twin_observation = QueueObservation(
        **{f.name: getattr(observation, f.name) for f in dataclasses.fields(observation)}
    )
    twin_state = QueueState.from_dict(json.loads(json.dumps(state.to_dict())))
    first = decide(observation, state, policy, NOW)
    second = decide(twin_observation, twin_state, policy, NOW)
    assert first == second


@given(
    policies(),
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 60), st.booleans(), st.floats(0.5, 40.0)), max_size=40),
)
def test_a_restart_between_decisions_changes_no_decision(
    policy: ScalingPolicy, steps: list[tuple[int, int, bool, float]]
) -> None:
    def replay(restart: bool) -> list[Decision]:
        state, replicas, now, out = QueueState(), 0, 0.0, []
        for backlog, in_flight, failed, gap in steps:
            now += gap
            observation = QueueObservation("q", backlog, in_flight, error="down" if failed else None, replicas=replicas)
            decision, state = decide(observation, state, policy, now)
            if restart:
                state = QueueState.from_dict(json.loads(json.dumps(state.to_dict())))
            out.append(decision)
            replicas = decision.desired_replicas
        return out

    assert replay(restart=False) == replay(restart=True)


@given(policies(), st.lists(st.tuples(st.integers(0, 500), st.integers(0, 60), st.floats(0.5, 20.0)), max_size=60))
def test_the_state_stays_small(policy: ScalingPolicy, steps: list[tuple[int, int, float]]) -> None:
    """Whatever happens, the state keeps only what its windows need (it is written to the status)."""
    state, replicas, now = QueueState(), 0, 0.0
    for backlog, in_flight, gap in steps:
        now += gap
        workers = tuple(WorkerLoad(f"w{i}", running=1, done=int(now), started=1.0) for i in range(min(replicas, 8)))
        observation = QueueObservation("q", backlog, in_flight, workers, replicas=replicas)
        decision, state = decide(observation, state, policy, now)
        replicas = decision.desired_replicas
        assert all(t >= now - policy.scale_up_period for t, _ in state.scale_ups)
        assert len(state.scale_ups) <= len(steps) and len(state.learned.launches) <= policy.max_replicas + 1
        assert len(state.recommendations) <= max(policy.scale_down_window, 1.0) / 0.5 + 2


def test_a_busy_time_too_small_to_divide_by_is_no_task_time() -> None:
    """Found by the property above: 5e-324 s of busy time over 2 tasks underflows to 0 s a task."""
    learned = Learned(busy=5e-324, completed=2.0)
    state = QueueState(learned=learned)
    policy = ScalingPolicy(max_replicas=1, target_per_replica=1, startup_seconds=5.0)
    decision, _ = decide(QueueObservation("q", 3, 0, replicas=0), state, policy, NOW)
    assert decision.desired_replicas == 1
    assert learned.task_seconds is None
