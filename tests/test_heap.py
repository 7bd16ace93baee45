"""When the operator freezes its heap (kube/heap.py): after the start-up's pools settled, and again only after
the count grew by a tenth."""

from __future__ import annotations

import gc
import weakref

from workerpool_operator.kube.heap import HeapSettler, collect_and_freeze


def test_the_heap_is_frozen_once_the_pool_count_settles_and_again_only_after_it_grew() -> None:
    pools = [0]
    freezes: list[int] = []
    settler = HeapSettler(lambda: pools[0], freeze=lambda: freezes.append(pools[0]))

    assert not settler.check(), "no pool yet"
    for count in (300, 700, 1000):  # the start-up's listing arrives
        pools[0] = count
        assert not settler.check(), "still changing"
    assert settler.check() and freezes == [1000], "unchanged for one interval: frozen"
    assert not settler.check(), "nothing new"

    pools[0] = 1050  # a few pools more: not worth a freeze
    assert not settler.check() and not settler.check()
    pools[0] = 1100
    assert not settler.check(), "changed since the last check"
    assert settler.check() and freezes == [1000, 1100], "a tenth more, settled: frozen again"

    pools[0] = 900  # pools deleted: nothing to freeze
    assert not settler.check() and not settler.check()


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
