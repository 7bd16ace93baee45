"""Which queue of which pool reads a broker's key (pure): what a wake-up from the broker (``observe/wakeups.py``)
wakes. A key is a Celery queue's priority list (``BrokerConfig.queue_of_key``); a queue of a plan reads the Celery
queues its worker group polls (``worker_groups.py``), so a change to one Celery queue can wake several."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.scaling_types import PoolKey

Reader = tuple[PoolKey, str]  # a pool, and the queue of its plan


class WakeIndex:
    """Broker -> Celery queue -> the (pool, queue of the plan) whose poll reads it. Adding or forgetting a pool costs
    its own queues, whatever the number of readers of each (10,000 pools with a queue ``default`` on one broker are
    10,000 readers of one key)."""

    def __init__(self) -> None:
        self._readers: dict[BrokerConfig, dict[str, dict[Reader, None]]] = {}  # readers as an ordered set

    def add(self, broker: BrokerConfig, pool: PoolKey, polled: Mapping[str, Iterable[str]]) -> None:
        """``polled``: each queue of the pool's plan -> the Celery queues its poll reads."""
        readers = self._readers.setdefault(broker, {})
        for planned, queues in polled.items():
            for queue in queues:
                readers.setdefault(queue, {})[(pool, planned)] = None

    def forget(self, broker: BrokerConfig, pool: PoolKey, polled: Mapping[str, Iterable[str]]) -> None:
        readers = self._readers.get(broker, {})
        for planned, queues in polled.items():
            for queue in queues:
                of_queue = readers.get(queue)
                if of_queue is None:
                    continue
                of_queue.pop((pool, planned), None)
                if not of_queue:
                    del readers[queue]
        if not readers:
            self._readers.pop(broker, None)

    def readers(self, broker: BrokerConfig, keys: Iterable[str]) -> Iterator[Reader]:
        """The readers of ``keys`` (keys no queue reads give none)."""
        readers = self._readers.get(broker)
        if not readers:
            return
        for key in keys:
            queue = broker.queue_of_key(key)
            if queue is not None:
                yield from readers.get(queue, ())
