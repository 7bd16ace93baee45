"""Time the event loop spent stalled, so a broker's timeout counts only the time its reply could have been read.

A poll's timeout tells a broker that does not answer. When the operator's own loop is busy instead (a start-up of
10,000 pools, a long garbage collection), the reply sits in the socket while the timer runs out; counting that time
reported a broker outage that was the operator's stall ("timed out after 2 s; replicas are held", seen on a real
API server at 10,000 pools), and froze scaling. :class:`StallMeter` wakes every ``period`` and adds up how late it
woke; :func:`wait_responsive` waits for an awaitable until it has had ``timeout`` seconds of a responsive loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class StallMeter:
    """Adds up the event loop's lateness: a heartbeat every ``period`` seconds, and how late each one came.

    ``stalled()`` is the total so far, the stall going on at that instant included (a timer callback that runs
    right after a stall sees it, even before the heartbeat has run)."""

    def __init__(self, period: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.clock = clock
        self._stalled = 0.0
        self._last: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the heartbeat on the running loop (again after :meth:`stop`; a no-op while it runs)."""
        if self._task is None or self._task.done():
            self._last = self.clock()
            self._task = asyncio.get_running_loop().create_task(self._beat(), name="event-loop stall meter")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.note(self.clock())

    def note(self, now: float) -> None:
        """A heartbeat at ``now``: what came after ``period`` was a stall."""
        if self._last is not None:
            self._stalled += max(0.0, now - self._last - self.period)
        self._last = now

    def stalled(self, now: float | None = None) -> float:
        """Seconds the loop has been stalled in all, up to ``now``."""
        now = self.clock() if now is None else now
        ongoing = max(0.0, now - self._last - self.period) if self._last is not None else 0.0
        return self._stalled + ongoing

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def wait_responsive(awaitable: Awaitable[T], timeout: float, meter: StallMeter) -> T:  # noqa: ASYNC109
    """``await awaitable``, but raise ``TimeoutError`` only once it has had ``timeout`` seconds of a responsive
    loop: the time the loop was stalled (``meter``) is not counted. Cancels the awaitable on timeout."""
    task = asyncio.ensure_future(awaitable)
    clock = meter.clock
    started = clock()
    stalled_before = meter.stalled(started)
    try:
        while True:
            now = clock()
            used = (now - started) - (meter.stalled(now) - stalled_before)
            if used >= timeout:
                raise TimeoutError
            done, _ = await asyncio.wait({task}, timeout=timeout - used)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
