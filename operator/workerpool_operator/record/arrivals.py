"""When received tasks entered their queue, from the queue's length over time. Pure.

Celery's workers announce a task (``task-received``) when they take it from Redis, not when a producer pushed
it: while tasks wait in the queue, the two differ by the wait. Producers announce ``task-sent`` only with
``task_send_sent_event``, which few enable. The backlog closes the gap: every task that entered the queue since
the recording started is either still waiting or has been received, so the arrivals up to a poll at time t are
``A(t) = received(t) + backlog(t)`` (the tasks waiting at the start count as arriving then). Redis lists are first
in, first out (kombu pushes on one end and pops the other), so the k-th task received is the k-th to arrive: it
arrived when ``A`` reached k, read off the polls with linear interpolation between two polls, and never after it
was received.

Limits: the resolution is the poll interval; priorities and several queues popped in turn break first-in,
first-out order between queues (each task's time stays within the range the curve allows).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["arrival_times"]


def arrival_times(received: Sequence[float], samples: Sequence[tuple[float, int]], start: float) -> list[float]:
    """For tasks received at ``received`` (ascending), when each entered the queue, given ``samples`` of the
    queue's length ``(time, backlog)`` (ascending times, the first at or near ``start``). Each result lies
    between ``start`` and the task's own receive time."""
    if not samples:
        return [max(start, t) for t in received]
    times = [t for t, _ in samples]
    curve: list[float] = []  # A at each sample, never falling (a poll racing a receive must not undo arrivals)
    for time, backlog in samples:
        value = float(bisect.bisect_right(received, time) + backlog)
        curve.append(max(value, curve[-1]) if curve else value)
    result: list[float] = []
    index = 0
    for k, own in enumerate(received, start=1):
        while index < len(curve) and curve[index] < k:
            index += 1
        if index == 0:
            arrived = start  # waiting when the recording started (or before the first poll saw it)
        elif index == len(curve):
            arrived = own  # after the last poll: the receive time is all there is
        else:
            before, after = curve[index - 1], curve[index]
            fraction = (k - before) / (after - before)
            arrived = times[index - 1] + fraction * (times[index] - times[index - 1])
        result.append(min(max(arrived, start), own))
    return result
