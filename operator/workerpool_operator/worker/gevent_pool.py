"""Celery's gevent pool that does not start prefetched tasks once a shutdown began (see ``pools.py``).

Import only in a gevent-patched process.
"""

from __future__ import annotations

from typing import Any

import gevent
from celery.concurrency.gevent import TaskPool

from workerpool_operator.worker.pools import cancellable, spawn_unless_stopping


class GeventPool(TaskPool):  # type: ignore[misc]
    _quick_put: Any

    def on_apply(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        return super().on_apply(cancellable(target), *args, **kwargs)

    def on_start(self) -> None:
        super().on_start()
        self._quick_put = spawn_unless_stopping(
            self._quick_put, self._pool.wait_available, lambda: gevent.spawn(lambda: None)
        )
