"""When the operator freezes its heap (kube/heap.py): after the start-up's pools settled, and again only after
the count grew by a tenth."""

from __future__ import annotations

from workerpool_operator.kube.heap import HeapSettler


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
