"""The waits users are shown (engine/wait_watch.py, engine/waits.estimated_age): pure, poll by poll."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from workerpool_operator.engine.wait_watch import (
    ESTIMATED,
    MEASURED,
    SPACING,
    WINDOW,
    Poll,
    WaitWatch,
)
from workerpool_operator.engine.waits import estimated_age

T0 = 1_800_000_000.0


def test_the_estimate_is_the_backlog_over_the_rate_at_most_since_the_queue_was_empty() -> None:
    # a flood: 200 tasks/s, 100/s served; after 60 s, 6,000 wait, and the oldest came 30 s ago (first in, first out)
    assert estimated_age(6_000, 60.0, 200.0) == 30.0
    # a burst of 1,000 into an empty queue 30 s ago, served since: the rate it left says more, the bound is exact
    assert estimated_age(700, 30.0, 12.0) == 30.0
    assert estimated_age(5, 300.0, 0.0) == 300.0  # no rate learned (the demand policy): the bound
    assert estimated_age(5, 300.0, -0.2) == 300.0  # a rate dipping below 0 is no rate
    assert estimated_age(0, 300.0, 10.0) == 0.0
    assert estimated_age(3, -1.0, 10.0) == 0.0


def test_measured_when_the_message_says_else_estimated_and_zero_when_nothing_waits() -> None:
    watch = WaitWatch()
    waits, _ = watch.update(Poll(T0, backlog=0))
    assert (waits.oldest, waits.source, waits.p95) == (0.0, None, 0.0)
    waits, _ = watch.update(Poll(T0 + 2, backlog=40, arrival_rate=10.0))  # came after the empty poll: at most 2 s
    assert (waits.oldest, waits.source) == (2.0, ESTIMATED)
    waits, _ = watch.update(Poll(T0 + 30, backlog=40, arrival_rate=10.0))
    assert (waits.oldest, waits.source) == (4.0, ESTIMATED)  # 40 tasks at 10/s
    waits, _ = watch.update(Poll(T0 + 32, backlog=40, measured=17.5, arrival_rate=10.0))
    assert (waits.oldest, waits.source) == (17.5, MEASURED)
    waits, _ = watch.update(Poll(T0 + 34, backlog=0))
    assert (waits.oldest, waits.source) == (0.0, MEASURED)  # the kind of the last age known stays


def test_a_watch_started_during_a_backlog_counts_from_the_engines_first_poll_of_it() -> None:
    waits, _ = WaitWatch().update(Poll(T0, backlog=5, waiting_since=T0 - 45.0))
    assert waits.oldest == 45.0
    waits, _ = WaitWatch().update(Poll(T0, backlog=5))
    assert waits.oldest == 0.0


def test_the_p95_counts_the_polls_that_found_tasks_waiting_over_the_window() -> None:
    watch = WaitWatch()
    assert watch.update(Poll(T0, error="refused"))[0].p95 is None  # never observed
    for second in range(0, 100, 2):  # one task waits 100 s (ages 0..98), polled every 2 s
        watch.update(Poll(T0 + second, backlog=1, measured=float(second)))
    for second in range(100, 200, 2):  # then nothing waits for 100 s: no samples
        watch.update(Poll(T0 + second, backlog=0))
    waits, _ = watch.update(Poll(T0 + 200, backlog=0))
    assert waits.p95 == 94.0  # nearest rank of 0, 2, ..., 98: the 48th of 50
    waits, _ = watch.update(Poll(T0 + WINDOW + 50, backlog=0))  # the samples before T0 + 50 are out
    assert waits.p95 == 96.0
    waits, _ = watch.update(Poll(T0 + WINDOW + 100, backlog=0))
    assert waits.p95 == 0.0 and watch.idle  # nothing waited within the window: nothing to remember


def test_polls_closer_than_the_spacing_are_one_sample_with_their_highest_age() -> None:
    watch = WaitWatch()
    for tick in range(40):  # wake-ups: four polls a second, for 10 s
        watch.update(Poll(T0 + tick * 0.25, backlog=3, measured=tick * 0.25))
    assert watch.samples is not None and len(watch.samples) == math.ceil(10.0 / SPACING)
    assert watch.samples[-1][1] == 9.75


def test_a_target_broken_for_longer_than_a_start_up_then_kept_again() -> None:
    watch = WaitWatch()
    common = {"target": 60.0, "startup": 30.0, "replicas": 10, "ready": 10, "desired": 10, "max_replicas": 10}
    waits, change = watch.update(Poll(T0, backlog=500, measured=50.0, **common))  # type: ignore[arg-type]
    assert (waits.above_since, waits.breach, change) == (None, None, None)
    waits, change = watch.update(Poll(T0 + 20, backlog=900, measured=70.0, **common))  # type: ignore[arg-type]
    assert waits.above_since == T0 + 10  # the oldest crossed 60 s at T0 + 10
    assert (waits.breach, change) == (None, None)  # not for longer than a start-up yet
    waits, change = watch.update(Poll(T0 + 42, backlog=1200, measured=92.0, **common))  # type: ignore[arg-type]
    assert change == "broken" and waits.breach is not None
    assert waits.breach.reason == "MaxReplicasReached"
    assert waits.breach.message == (
        "the oldest task has waited 92s (measured), above the 60s target for 32s: maxReplicas (10) reached"
    )
    waits, change = watch.update(Poll(T0 + 44, backlog=1300, measured=94.0, **common))  # type: ignore[arg-type]
    assert change is None and waits.breach is not None  # announced once
    waits, change = watch.update(Poll(T0 + 46, backlog=10, measured=12.0, **common))  # type: ignore[arg-type]
    assert (waits.above_since, waits.breach, change) == (None, None, "kept")
    waits, change = watch.update(Poll(T0 + 48, backlog=0, **common))  # type: ignore[arg-type]
    assert change is None


def test_a_crossing_is_never_placed_before_a_poll_that_saw_the_wait_within_the_target() -> None:
    watch = WaitWatch()
    watch.update(Poll(T0, backlog=5, measured=10.0, target=60.0))
    waits, _ = watch.update(Poll(T0 + 2, backlog=5, measured=200.0, target=60.0))  # another producer's clock
    assert waits.above_since == T0


def test_why_a_target_is_broken_in_order() -> None:
    def breach(**changes: object) -> str:
        watch = WaitWatch()
        base = {"backlog": 50, "measured": 100.0, "target": 60.0, "startup": 30.0, "replicas": 4, "ready": 4}
        poll = Poll(T0, **{**base, "desired": 4, "max_replicas": 10, **changes})  # type: ignore[arg-type]
        watch.update(poll._replace(at=T0 - 60.0, measured=40.0, ready=poll.ready))
        waits, change = watch.update(poll)
        assert change == "broken" and waits.breach is not None
        return f"{waits.breach.reason}: {waits.breach.message.split(': ', 1)[1]}"

    assert breach() == "NotEnoughWorkers: the 4 workers the engine keeps are too few"
    assert breach(desired=10, replicas=10, ready=10) == "MaxReplicasReached: maxReplicas (10) reached"
    assert breach(desired=10, replicas=10, ready=7).startswith(
        "WorkersNotStarting: 3 of 10 workers not ready for 60s (Pending"
    )
    assert breach(paused=True, ready=1) == "ScalingPaused: scaling is paused (scaling.paused)"


def test_workers_not_ready_for_less_than_a_start_up_are_still_starting() -> None:
    watch = WaitWatch()
    common = {"backlog": 50, "target": 60.0, "startup": 30.0, "desired": 10, "max_replicas": 10}
    watch.update(Poll(T0, measured=50.0, replicas=10, ready=10, **common))  # type: ignore[arg-type]
    watch.update(Poll(T0 + 30, measured=80.0, replicas=10, ready=6, **common))  # type: ignore[arg-type]
    waits, change = watch.update(Poll(T0 + 50, measured=100.0, replicas=10, ready=6, **common))  # type: ignore[arg-type]
    assert change == "broken" and waits.breach is not None and waits.breach.reason == "MaxReplicasReached"


def test_with_the_broker_down_the_last_age_is_carried_on_and_says_so() -> None:
    watch = WaitWatch()
    watch.update(Poll(T0, backlog=30, measured=20.0, target=60.0, startup=10.0))
    waits, change = watch.update(Poll(T0 + 30, error="refused", target=60.0, startup=10.0))
    assert waits.oldest == 50.0 and change is None and waits.source == MEASURED
    waits, change = watch.update(Poll(T0 + 60, error="refused", target=60.0, startup=10.0))
    assert waits.oldest == 80.0 and change == "broken" and waits.breach is not None
    assert waits.breach.reason == "RedisUnreachable"
    assert waits.breach.message == (
        "the oldest task has waited 80s (carried on from the last poll), above the 60s target for 20s: "
        "the broker cannot be observed (refused)"
    )
    waits, _ = watch.update(Poll(T0 + 62, error="refused", target=60.0))
    assert waits.p95 == 20.0  # only what was observed is sampled
    idle = WaitWatch()
    idle.update(Poll(T0, backlog=0, target=60.0))
    waits, change = idle.update(Poll(T0 + 600, error="refused", target=60.0))
    assert (waits.oldest, waits.breach, change) == (None, None, None)  # nothing waited, as far as anyone knows


def test_a_new_leader_goes_on_from_the_status_without_a_second_warning() -> None:
    resumed = WaitWatch(above_since=T0 - 100.0)
    waits, change = resumed.update(Poll(T0, backlog=50, measured=160.0, target=60.0, startup=30.0))
    assert waits.breach is not None and change is None  # the previous leader announced it
    waits, change = resumed.update(Poll(T0 + 2, backlog=0, target=60.0, startup=30.0))
    assert change == "kept"
    early = WaitWatch(above_since=T0 - 10.0)  # resumed before the target counted as broken
    assert early.update(Poll(T0, backlog=50, measured=70.0, target=60.0, startup=30.0))[1] is None
    assert early.update(Poll(T0 + 30, backlog=50, measured=100.0, target=60.0, startup=30.0))[1] == "broken"


def test_a_target_removed_ends_the_breach() -> None:
    watch = WaitWatch()
    watch.update(Poll(T0, backlog=50, measured=5.0, target=10.0, startup=5.0))
    assert watch.update(Poll(T0 + 10, backlog=50, measured=30.0, target=10.0, startup=5.0))[1] == "broken"
    waits, change = watch.update(Poll(T0 + 12, backlog=50, measured=32.0))
    assert (waits.target, waits.above_since, waits.breach, change) == (None, None, None, "kept")


@settings(max_examples=80, deadline=None)
@given(
    polls=st.lists(
        st.tuples(st.floats(0.1, 30.0), st.integers(0, 50), st.one_of(st.none(), st.floats(0.0, 600.0))),
        min_size=1,
        max_size=120,
    )
)
def test_the_p95_is_the_nearest_rank_of_the_windows_merged_samples(
    polls: list[tuple[float, int, float | None]],
) -> None:
    watch = WaitWatch()
    now = T0
    reference: list[tuple[float, float]] = []  # the same merging, written plainly
    for gap, backlog, measured in polls:
        now += gap
        waits, _ = watch.update(Poll(now, backlog=backlog, measured=measured, arrival_rate=1.0))
        if backlog:
            assert waits.oldest is not None
            if reference and now - reference[-1][0] < SPACING:
                reference[-1] = (reference[-1][0], max(reference[-1][1], waits.oldest))
            else:
                reference.append((now, waits.oldest))
        kept = sorted(age for at, age in reference if at >= now - WINDOW)
        expected = kept[math.ceil(0.95 * len(kept)) - 1] if kept else 0.0
        assert waits.p95 == expected
        assert waits.oldest is not None and waits.oldest >= 0.0
