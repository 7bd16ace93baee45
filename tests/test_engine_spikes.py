"""Beat-aware capacity in the engine: announced fires pre-warm their queue, sized by what each source brought."""

from __future__ import annotations

from workerpool_operator.engine import QueueState, ScalingPolicy, decide
from workerpool_operator.engine.spikes import LEARN_SPAN, Spike, learn, windows
from workerpool_operator.observation import QueueObservation

HOUR = 3600.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR  # a top of the hour


def test_a_source_is_sized_by_the_demand_after_its_fire() -> None:
    fires = ((T0, "reports.build_all"),)
    spikes = learn((), fires, demand=0, now=T0 - 600)
    assert spikes == (Spike("reports.build_all", T0),)
    assert windows(spikes, fires)[0].replicas == 1, "never measured: one worker ready when it fires"
    for at, demand in ((T0 + 1, 400), (T0 + 30, 900), (T0 + 90, 300)):
        spikes = learn(spikes, (), demand, at)
    assert spikes[0].peak == 900 and spikes[0].size == 0, "still watching the fire"
    spikes = learn(spikes, ((T0 + HOUR, "reports.build_all"),), demand=0, now=T0 + LEARN_SPAN + 1)
    assert spikes == (Spike("reports.build_all", T0 + HOUR, 0, 900),)
    (window,) = windows(spikes, ((T0 + HOUR, "reports.build_all"),))
    assert (window.start, window.tasks, window.replicas, window.source) == (
        T0 + HOUR,
        900,
        0,
        "beat: reports.build_all",
    )


def test_the_next_fire_is_pre_warmed_one_start_up_early_and_sized() -> None:
    policy = ScalingPolicy(max_replicas=20, target_per_replica=50, startup_seconds=30)
    state = QueueState(spikes=(Spike("nightly", T0 + HOUR, 0, 600),))
    fire = ((T0 + HOUR, "nightly"),)
    early = QueueObservation("q", fires=fire, replicas=0)
    decision, state = decide(early, state, policy, now=T0 + HOUR - 300)
    assert decision.desired_replicas == 0, "not yet: the window opens one start-up delay ahead"
    decision, state = decide(early, state, policy, now=T0 + HOUR - 35)
    assert decision.desired_replicas == 12, decision.reason  # 600 tasks / 50 per replica
    assert "beat: nightly" in decision.reason


def test_queues_without_fires_keep_the_cheap_path() -> None:
    decision, state = decide(QueueObservation("q"), QueueState(), ScalingPolicy(), now=T0)
    assert decision.desired_replicas == 0 and state.spikes == ()


def test_spikes_survive_a_restart() -> None:
    state = QueueState(spikes=(Spike("a", T0, 3, 40), Spike("b", T0 + 60)))
    assert QueueState.from_dict(state.to_dict()) == state
