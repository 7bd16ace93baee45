"""Celery's eventlet pool that does not start prefetched tasks once a shutdown began (see ``pools.py``).

Import only in an eventlet-patched process.
"""

from __future__ import annotations

from typing import Any

import eventlet
from celery.concurrency.eventlet import TaskPool

from workerpool_operator.worker.pools import cancellable, spawn_unless_stopping


class EventletPool(TaskPool):  # type: ignore[misc]
    _quick_put: Any

    def on_apply(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        return super().on_apply(cancellable(target), *args, **kwargs)

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        # Eventlet kills at once, before Celery marks the request cancelled: the kill would read as a revoke,
        # which acknowledges. Killing on the next switch, as gevent does, keeps the cancel a cancel.
        eventlet.spawn_n(super().terminate_job, pid, signal)

    def on_start(self) -> None:
        super().on_start()
        pool = self._pool

        def wait_for_slot() -> None:  # GreenPool.spawn blocks on this semaphore; wait for it the same way
            pool.sem.acquire()
            pool.sem.release()

        self._quick_put = spawn_unless_stopping(self._quick_put, wait_for_slot, lambda: eventlet.spawn(lambda: None))
