"""When each queue of each pool is polled next (pure): the scaling loop's schedule.

One heap of next polls, soonest first, beside the current next poll of every queue. A tick takes the queues due
and the loop's wait looks at the first entry, so both cost the queues due rather than every queue of every pool
(30,000 at 10,000 pools, and with pools at different phases ticks come every few milliseconds). Moving a queue's
poll (polled, woken earlier) pushes a new entry; an entry that is no longer its queue's next poll, or whose
queue was forgotten, is dropped when it comes up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

from workerpool_operator.scaling_types import PoolKey


class PollSchedule:
    """Every (pool, queue)'s next poll, in seconds on the loop's clock."""

    def __init__(self) -> None:
        self._next: dict[tuple[PoolKey, str], float] = {}
        self._heap: list[tuple[float, int, PoolKey, str]] = []
        self._order = itertools.count()  # ties polled in the order they were set

    def put(self, pool: PoolKey, queue: str, at: float) -> None:
        """The queue's next poll is ``at``."""
        self._next[(pool, queue)] = at
        heapq.heappush(self._heap, (at, next(self._order), pool, queue))

    def next_poll(self, pool: PoolKey, queue: str) -> float | None:
        """The queue's next poll (``None``: not scheduled)."""
        return self._next.get((pool, queue))

    def forget(self, pool: PoolKey, queues: Iterable[str]) -> None:
        """The queues are not polled any more (their entries drop out as they come up)."""
        for queue in queues:
            self._next.pop((pool, queue), None)

    def take_due(self, now: float) -> dict[PoolKey, set[str]]:
        """The queues due at ``now``, by pool; they stay due until :meth:`put` moves them."""
        taken: dict[PoolKey, set[str]] = {}
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, pool, queue = heapq.heappop(heap)
            if self._next.get((pool, queue)) == at:
                taken.setdefault(pool, set()).add(queue)
        return taken

    def soonest(self) -> float | None:
        """The next poll of any queue (``None``: nothing scheduled)."""
        heap = self._heap
        while heap and self._next.get((heap[0][2], heap[0][3])) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None
