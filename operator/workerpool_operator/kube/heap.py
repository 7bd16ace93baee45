"""What survived the start-up leaves the garbage collector's walks (``gc.freeze()``), once the pools settled.

A full collection walks every object the collector tracks. At 10,000 pools the operator held 3.1 million of
them (kopf's per-object state, the records, the metrics' label sets) and each full collection stalled the event
loop for up to 8 s; the watches, the scaling loop and the Lease renewal all wait meanwhile. Nearly all of those
objects live as long as their pool. ``gc.freeze()`` moves every object alive into a permanent generation that
no collection walks: measured on the scale bench, the longest collection at 10,000 pools went from 8.3 s to
0.6 s (docs/benchmarks.md, "Operator at scale").

When: once the number of pools known has stopped changing for one check interval (the start-up's listing is
through) and has grown by a tenth since the last freeze, so a cluster that keeps adding pools freezes again now
and then, never per pool. A full collection runs first, so the garbage of the start-up (cycles the collector
had not reached yet) is reclaimed rather than frozen for good. What it costs: that one collection (the last
long one), and a frozen object that later becomes part of garbage *with a reference cycle* is never reclaimed
(objects freed by their reference count, most of a deleted pool's, are); kept small by freezing rarely.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


def collect_and_freeze() -> None:
    """Reclaim what is garbage now, then move every object still alive out of the collector's walks."""
    started = time.perf_counter()
    unreachable = gc.collect()
    gc.freeze()
    logger.info(
        "heap frozen: %d objects outside the collector's walks (%d unreachable reclaimed first, in %.2f s)",
        gc.get_freeze_count(),
        unreachable,
        time.perf_counter() - started,
    )


class HeapSettler:
    """Freezes the heap after the pool count settles; ``count()`` is how many pools this replica knows."""

    def __init__(
        self,
        count: Callable[[], int],
        *,
        growth: float = 0.1,
        freeze: Callable[[], None] = collect_and_freeze,
    ) -> None:
        self._count = count
        self._growth = growth
        self._freeze = freeze
        self._last_seen: int | None = None
        self.frozen_at = 0  # the pool count at the last freeze

    def check(self) -> bool:
        """One check: freeze now if the count is as it was at the last check and grew enough; whether it did."""
        now, before = self._count(), self._last_seen
        self._last_seen = now
        if now == 0 or now != before or now <= self.frozen_at * (1 + self._growth) - 1e-9:
            return False
        logger.info("%d pools known and settled: freezing the heap", now)
        self._freeze()
        self.frozen_at = now
        return True

    async def run(self, stop: asyncio.Event, every: float = 30.0) -> None:
        while not stop.is_set():
            self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
