"""When the operator freezes its heap (kube/heap.py): after the start-up's pools settled, and again only after
the count grew by a tenth."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref

import pytest

from workerpool_operator.kube import heap
from workerpool_operator.kube.heap import (
    FULL_COLLECTION_EVERY,
    SLOW_FREEZES,
    SURGE,
    SURGE_MIN,
    HeapSettler,
    collect_and_freeze,
)


def test_the_heap_is_frozen_once_the_pool_count_settles_and_again_only_after_it_grew() -> None:
    pools = [0]
    freezes: list[int] = []
    settler = HeapSettler(lambda: pools[0], freeze=lambda: freezes.append(pools[0]))

    assert not settler.check(), "no pool yet"
    for count in (300, 700, 900):  # the start-up's listing arrives (fewer than SURGE_MIN: no freeze before it settles)
        pools[0] = count
        assert not settler.check(), "still changing"
    assert settler.check() and freezes == [900], "unchanged for one interval: frozen"
    assert not settler.check(), "nothing new"

    pools[0] = 950  # a few pools more: not worth a freeze
    assert not settler.check() and not settler.check()
    pools[0] = 990
    assert not settler.check(), "changed since the last check"
    assert settler.check() and freezes == [900, 990], "a tenth more, settled: frozen again"

    pools[0] = 800  # pools deleted: nothing to freeze
    assert not settler.check() and not settler.check()


def test_a_long_start_up_freezes_at_each_surge_before_it_settles() -> None:
    """10,000 pools known in a minute and served over ten: the count (known plus served) keeps moving for ten
    minutes. Each quarter more (and SURGE_MIN at least) is frozen while it moves, so no more than about a fifth of
    the objects is left to each full collection; then the settled count is frozen as before."""
    pools = [0]
    freezes: list[int] = []
    settler = HeapSettler(lambda: pools[0], freeze=lambda: freezes.append(pools[0]))
    for count in range(400, 20_001, 400):  # every check sees more
        pools[0] = count
        settler.check()
    assert SURGE_MIN <= freezes[0] < SURGE_MIN + 400 and freezes[-1] < 20_000
    for before, after in itertools.pairwise(freezes):
        assert after >= before * (1 + SURGE) and after < before * (1 + SURGE) + 400 + SURGE_MIN, (before, after)
    assert len(freezes) <= 14
    assert freezes[-1] > 20_000 / 1.1
    assert not settler.check(), "settled within a tenth of the last freeze: not worth one more"
    settler.collection_took(0.5)
    assert settler.check() and freezes[-1] == 20_000, "settled, and a full collection was slow: frozen"


def test_a_slow_full_collection_freezes_again_once_the_pool_count_holds() -> None:
    """What a pool brings arrives after it (its Deployments, their status, metrics): at 10,000 pools a freeze at
    the pool count alone left most objects to walk."""
    pools = [900]
    freezes: list[int] = []
    settler = HeapSettler(lambda: pools[0], freeze=lambda: freezes.append(pools[0]), slow=0.1)
    settler.check()
    assert settler.check() and freezes == [900]
    settler.collection_took(0.05)
    assert not settler.check(), "a quick collection: nothing to do"
    settler.collection_took(0.8)
    pools[0] = 901
    assert not settler.check(), "slow, but the count moved: wait until it holds"
    assert settler.check() and freezes == [900, 901], "slow and settled: frozen again"
    assert not settler.check() and settler.slow_collection == 0.0
    for _ in range(5):  # slow collections go on (short-lived objects): a few more freezes, then no more
        settler.collection_took(0.8)
        settler.check()
    assert len(freezes) == 2 + SLOW_FREEZES - 1
    pools[0] = 1000
    settler.check()
    assert settler.check() and freezes[-1] == 1000, "grown by a tenth: frozen, and slow freezes allowed again"
    settler.collection_took(0.8)
    assert settler.check()


async def test_full_collections_are_rarer_while_the_settler_runs() -> None:
    """Python's full collection every 10 young ones (once enough was promoted) ran 100 times a minute at 10,000
    pools; while the settler runs, every FULL_COLLECTION_EVERY at most; the threshold is put back after."""

    def full_collections_while_keeping(count: int) -> int:
        before = gc.get_stats()[2]["collections"]
        # objects that live on: they fill the young generations and move up
        kept: list[list[object]] = [[] for _ in range(count)]
        del kept
        return int(gc.get_stats()[2]["collections"] - before)

    young, middle, full = gc.get_threshold()
    allocations = young * middle * 50  # 5 full collections' worth at the default 10
    gc.collect()
    assert full_collections_while_keeping(allocations) >= 2, "the control: Python's default collects in full"
    stop = asyncio.Event()
    task = asyncio.create_task(HeapSettler(lambda: 0).run(stop, every=0.01))
    await asyncio.sleep(0.05)
    assert gc.get_threshold() == (young, middle, FULL_COLLECTION_EVERY)
    gc.collect()
    assert full_collections_while_keeping(allocations) == 0
    stop.set()
    await task
    assert gc.get_threshold() == (young, middle, full)


def test_the_settler_hears_of_real_full_collections() -> None:
    settler = HeapSettler(lambda: 1, slow=0.0)
    gc.callbacks.append(settler._on_collection)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(settler._on_collection)
    assert settler.slow_collection > 0.0


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_garbage_waiting_for_the_collector_is_reclaimed_not_frozen_for_good() -> None:
    """A reference cycle dropped just before the freeze (the start-up leaves many) would stay in memory for the
    process's life if it were frozen with the live objects."""
    kept, dropped = _Node(), _Node()
    dropped.other = _Node()
    dropped.other.other = dropped  # a cycle: only the collector frees it
    alive, garbage = weakref.ref(kept), weakref.ref(dropped)
    gc.disable()  # no automatic collection between here and the freeze
    try:
        del dropped
        assert garbage() is not None, "the cycle waits for the collector"
        collect_and_freeze()
        assert gc.get_freeze_count() > 0
        assert garbage() is None, "reclaimed before the freeze"
        assert alive() is kept
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_freeze_gives_the_memory_freed_back_to_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the start-up the C allocator holds, free, what the start-up decoded: the freeze trims it (glibc's
    ``malloc_trim``, found on this machine's C library; elsewhere, nothing is called)."""
    assert heap.MALLOC_TRIM is not None, "glibc here: malloc_trim is found"
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    monkeypatch.setattr(heap, "MALLOC_TRIM", trim)
    try:
        collect_and_freeze()
    finally:
        gc.unfreeze()
    assert calls == [0]
    monkeypatch.setattr(heap, "MALLOC_TRIM", None)
    assert heap.release_free_memory() is False


def test_trimming_really_returns_freed_memory() -> None:
    """What ``malloc_trim`` is for, on the real allocator: big strings allocated and freed in another thread (as
    ``asyncio.to_thread``'s workers decode the API's answers) leave the process' RSS high until the trim."""
    import threading

    def rss_kib() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    survivors: list[bytearray] = []

    def churn() -> None:
        kept = [bytearray(4000) for _ in range(50_000)]  # 200 MB in chunks C malloc serves (not Python's arenas)
        survivors.append(kept[-1])  # the heap's top stays in use, so free() alone cannot shrink the heap

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    before = rss_kib()
    assert heap.release_free_memory()
    assert rss_kib() < before - 50_000, "more than 50 MB given back"
