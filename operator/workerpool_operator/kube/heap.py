"""What survived the start-up leaves the garbage collector's walks (``gc.freeze()``), once the pools settled.

A full collection walks every object the collector tracks. At 10,000 pools the operator held 3.1 million of
them (kopf's per-object state, the records, the metrics' label sets) and each full collection stalled the event
loop for up to 8 s; the watches, the scaling loop and the Lease renewal all wait meanwhile. Nearly all of those
objects live as long as their pool. ``gc.freeze()`` moves every object alive into a permanent generation that
no collection walks: measured on the scale bench, the longest collection at 10,000 pools went from 8.3 s to
0.6 s (docs/benchmarks.md, "Operator at scale").

The count: pools known plus pools served (planned, applied and in the scaling loop). At 10,000 pools every pool
is known within a minute and served over the next ten: a count of known pools alone settled early, spent its
freezes, and left the million objects of the pools served later to every full collection (30 a minute at
steady state, 26 s of the 60, the longest 1 s).

When: once the count has stopped changing for one check interval (the start-up's listing is through) and has
grown by a tenth since the last freeze, so a cluster that keeps adding pools freezes again now and then, never
per pool; while it still changes, whenever it has grown by ``SURGE`` (a quarter, and ``SURGE_MIN`` at least)
since the last freeze, so a long start-up never lets more than about a fifth of its objects pile up for each
full collection to walk; and, the count settled, again after a full collection that took longer than
``SLOW_COLLECTION``: what a pool brings keeps arriving after the pool itself (its Deployments, their status
writes, its metrics, kopf's state for each), and at 10,000 pools a freeze at the pool count alone left 1.8 of
2.5 million objects to walk (full collections of up to 2 s). After a freeze full collections walk only what came
since; at most ``SLOW_FREEZES`` such freezes per pool count (later slow collections walk short-lived objects,
which no freeze helps). A full collection runs first, so the garbage of
the start-up (cycles the collector had not reached yet) is reclaimed rather than frozen for good. What it costs:
one full collection per freeze, and a frozen object that later becomes part of garbage *with a
reference cycle* is never reclaimed (objects freed by their reference count, most of a deleted pool's, are);
kept small by freezing rarely.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

SLOW_COLLECTION = 0.1  # seconds: a full collection this long says much that lives is still walked
# Freezes for slow collections per pool count: what a pool brings arrives within a few; after that, slow
# collections walk short-lived objects (a poll's observations and decisions at 10,000 pools), which a freeze
# cannot help, and each freeze would keep for good the cycles alive at that instant that die later.
SLOW_FREEZES = 3
# Young (generation 1) collections between two full ones, where Python's default is 10. A full collection also
# waits until the objects promoted to the old generation since the last one reach a quarter of those it kept. Once
# the heap is frozen, those it kept are few (200,000 of 2 million objects at 10,000 pools), and each poll's state,
# which lives a poll interval and is freed by its reference count but counted when promoted, reached that quarter
# every 0.6 s: 100 full collections a minute, 15 s of CPU (docs/benchmarks.md, "Operator at scale"). Ten times
# rarer; a reference cycle that dies waits up to ten times longer to be reclaimed.
FULL_COLLECTION_EVERY = 100
SURGE = 0.25  # growth since the last freeze that freezes before the count settles
SURGE_MIN = 1000  # and at least this much (pools known plus served): a small cluster waits until it settles


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, where the C library is glibc (None elsewhere: musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Give the pages the C allocator holds free back to the system (glibc's ``malloc_trim(0)``); whether it could.

    Python frees its small objects to its own arenas, and gives an arena back once it is empty; everything bigger
    (a watch event's JSON text, a response, a decoded string) comes from the C allocator, which keeps what was freed
    for reuse, in the heap of each thread that allocated it (``asyncio.to_thread``'s workers have their own). After
    the start-up, which decodes every object of the cluster several times, that is hundreds of MiB no one uses
    (docs/benchmarks.md, "Operator at scale")."""
    if MALLOC_TRIM is None:
        return False
    MALLOC_TRIM(0)
    return True


def collect_and_freeze() -> None:
    """Reclaim what is garbage now, then move every object still alive out of the collector's walks, and give the
    memory freed back to the system."""
    started = time.perf_counter()
    unreachable = gc.collect()
    gc.freeze()
    trimmed = release_free_memory()
    logger.debug(
        "heap frozen: %d objects outside the collector's walks (%d unreachable reclaimed first, in %.2f s)%s",
        gc.get_freeze_count(),
        unreachable,
        time.perf_counter() - started,
        "; free memory given back" if trimmed else "",
    )


class HeapSettler:
    """Freezes the heap after the pool count settles; ``count()`` is how many pools this replica knows plus how
    many it serves."""

    def __init__(
        self,
        count: Callable[[], int],
        *,
        growth: float = 0.1,
        freeze: Callable[[], None] = collect_and_freeze,
        slow: float = SLOW_COLLECTION,
        surge: float = SURGE,
        surge_min: int = SURGE_MIN,
    ) -> None:
        self._count = count
        self._growth = growth
        self._surge, self._surge_min = surge, surge_min
        self._freeze = freeze
        self._slow = slow
        self._last_seen: int | None = None
        self._collection_started = 0.0
        self.slow_collection = 0.0  # the longest full collection since the last freeze, if slow
        self.frozen_at = 0  # the pool count at the last freeze
        self.slow_freezes = 0  # freezes for slow collections since the pool count last grew

    def check(self) -> bool:
        """One check: freeze now if the count is as it was at the last check, and it grew enough or a full
        collection was slow, or, settled or not, if it surged; whether it did."""
        now, before = self._count(), self._last_seen
        self._last_seen = now
        if now == 0:
            return False
        if now != before:
            surged = now >= self.frozen_at * (1 + self._surge) and now - self.frozen_at >= self._surge_min
            grew = slow = False
        else:
            surged = False
            grew = now >= self.frozen_at * (1 + self._growth) - 1e-9
            slow = bool(self.slow_collection) and self.slow_freezes < SLOW_FREEZES
        if not surged and not grew and not slow:
            return False
        if surged or grew:
            logger.info("%d pools known and served, %s: freezing the heap", now, "more coming" if surged else "settled")
            self.slow_freezes = 0
        else:
            logger.debug("a full collection took %.2f s: freezing the heap again", self.slow_collection)
            self.slow_freezes += 1
        self._freeze()
        self.frozen_at = now
        self.slow_collection = 0.0  # after the freeze: its own collection is not news
        return True

    def collection_took(self, seconds: float) -> None:
        """A full collection took ``seconds``."""
        if seconds >= self._slow:
            self.slow_collection = max(self.slow_collection, seconds)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._collection_started = time.perf_counter()
        else:
            self.collection_took(time.perf_counter() - self._collection_started)

    async def run(self, stop: asyncio.Event, every: float = 30.0) -> None:
        """Check every ``every`` seconds until ``stop``; meanwhile full collections come every
        ``FULL_COLLECTION_EVERY`` young ones at most."""
        young, middle, full = gc.get_threshold()
        gc.set_threshold(young, middle, max(full, FULL_COLLECTION_EVERY))
        gc.callbacks.append(self._on_collection)
        try:
            while not stop.is_set():
                self.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=every)
        finally:
            gc.callbacks.remove(self._on_collection)
            gc.set_threshold(young, middle, full)
