"""Celery's eventlet pool that does not start prefetched tasks once a shutdown began (see ``pools.py``).

Import only in an eventlet-patched process.
"""

from __future__ import annotations

from typing import Any

import eventlet
from celery.concurrency.eventlet import TaskPool

from workerpool_operator.worker.pools import spawn_unless_stopping


class EventletPool(TaskPool):  # type: ignore[misc]
    _quick_put: Any

    def on_start(self) -> None:
        super().on_start()
        pool = self._pool

        def wait_for_slot() -> None:  # GreenPool.spawn blocks on this semaphore; wait for it the same way
            pool.sem.acquire()
            pool.sem.release()

        self._quick_put = spawn_unless_stopping(self._quick_put, wait_for_slot, lambda: eventlet.spawn(lambda: None))
