"""The scaling loop's schedule of next polls (poll_schedule.py, pure)."""

from __future__ import annotations

from workerpool_operator.poll_schedule import PollSchedule

A = ("apps", "a")
B = ("apps", "b")


def test_due_queues_are_taken_by_pool_and_a_moved_poll_counts_only_at_its_new_time() -> None:
    schedule = PollSchedule()
    assert schedule.soonest() is None and schedule.take_due(1e9) == {}
    schedule.put(A, "q1", 10.0)
    schedule.put(A, "q2", 12.0)
    schedule.put(B, "q1", 11.0)
    assert schedule.soonest() == 10.0
    assert schedule.take_due(11.0) == {A: {"q1"}, B: {"q1"}}
    assert schedule.take_due(11.0) == {}, "taken: due again only once put again"
    schedule.put(A, "q1", 20.0)
    schedule.put(A, "q2", 5.0)  # woken: earlier than its 12.0
    assert schedule.soonest() == 5.0
    assert schedule.take_due(13.0) == {A: {"q2"}}, "not again at its old time"
    assert schedule.next_poll(A, "q1") == 20.0 and schedule.next_poll(B, "q1") == 11.0


def test_a_forgotten_queue_is_never_due_and_not_the_soonest() -> None:
    schedule = PollSchedule()
    schedule.put(A, "q1", 1.0)
    schedule.put(A, "q2", 3.0)
    schedule.forget(A, ["q1"])
    assert schedule.next_poll(A, "q1") is None
    assert schedule.soonest() == 3.0
    assert schedule.take_due(10.0) == {A: {"q2"}}
    schedule.put(A, "q1", 0.0)  # back in a later plan: due at once
    assert schedule.take_due(0.0) == {A: {"q1"}}
