"""Draining on request: the worker stops taking tasks from a queue the operator asked it to drain, and takes
them again when the request is gone. Running tasks finish; the report says ``draining`` once the consumer is
really cancelled (Celery confirmed it), so the operator never removes a worker that could still take a task.

The switch uses Celery's own remote control on this worker alone (``cancel_consumer`` / ``add_consumer`` with
``destination`` = this worker's hostname): the command runs in the consumer's own thread, as any control
command does, never from the reporting thread.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any, Protocol

log = logging.getLogger(__name__)

COMMAND = "workerpool_hand_back"  # worker/handback.py's remote-control command

CONTROL_TIMEOUT = 2.0  # seconds to wait for the consumer's confirmation


class ConsumerControl(Protocol):
    def cancel(self, queue: str) -> bool:
        """Stop consuming ``queue``; whether the worker confirmed it."""

    def add(self, queue: str) -> bool:
        """Consume ``queue`` again; whether the worker confirmed it."""


class CeleryControl:
    """:class:`ConsumerControl` through Celery's remote control, addressed to this worker only."""

    def __init__(self, app: Any, hostname: str, timeout: float = CONTROL_TIMEOUT) -> None:
        self._app = app
        self._hostname = hostname
        self._timeout = timeout

    def cancel(self, queue: str) -> bool:
        if not self._confirmed(self._app.control.cancel_consumer, queue):
            return False
        # Then what it prefetched goes back to the queue (handback.py); a failure there leaves those tasks to run.
        self._confirmed(
            lambda q, **options: self._app.control.broadcast(COMMAND, arguments={"queue": q}, **options), queue
        )
        return True

    def add(self, queue: str) -> bool:
        return self._confirmed(self._app.control.add_consumer, queue)

    def _confirmed(self, command: Any, queue: str) -> bool:
        replies = command(queue, destination=[self._hostname], reply=True, timeout=self._timeout) or []
        return any("ok" in answer for reply in replies for answer in reply.values() if isinstance(answer, dict))


class Drainer:
    """Keeps the consumed queues in line with the drain requests seen in the last report round trip."""

    def __init__(self, control: ConsumerControl) -> None:
        self._control = control
        self.draining: frozenset[str] = frozenset()

    def apply(self, requested: Collection[str]) -> bool:
        """Cancel the newly requested queues, resume the released ones; whether anything changed."""
        wanted = frozenset(requested)
        changed = False
        for queue in sorted(wanted - self.draining):
            if self._control.cancel(queue):
                log.info("draining %s on request: no new tasks from it; running ones finish", queue)
                self.draining |= {queue}
                changed = True
            else:
                log.warning("draining %s: the consumer did not confirm; trying again with the next report", queue)
        for queue in sorted(self.draining - wanted):
            if self._control.add(queue):
                log.info("no longer draining %s: taking tasks from it again", queue)
                self.draining -= {queue}
                changed = True
            else:
                log.warning("resuming %s: the consumer did not confirm; trying again with the next report", queue)
        return changed
