"""Execution pools that give prefetched tasks back on a warm shutdown instead of running them.

Celery's ``threads`` pool hands every prefetched task to a ``ThreadPoolExecutor`` at once, and its
warm shutdown waits for the executor's whole queue: a pod told to stop would first run everything
it had prefetched. :class:`ThreadPool` cancels the tasks that have not started yet when it stops.
The gevent and eventlet pools (``gevent_pool.py``, ``eventlet_pool.py``) have the same problem in a
smaller form: the consumer blocks in the pool's ``spawn`` until a slot frees, then starts the task
even though a shutdown began meanwhile; theirs skip it.

A skipped task was never accepted, so never acknowledged (with early or late acks alike), and kombu
puts its message back in the queue when the worker's connection closes. The green pools also keep
an ``acks_late`` task cancelled by the soft-shutdown timeout unacknowledged (:func:`cancellable`).
The entrypoint selects these classes through Celery's ``--pool custom`` and ``CELERY_CUSTOM_WORKER_POOL``.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from celery.concurrency.thread import TaskPool
from celery.exceptions import Terminated
from celery.worker import state as worker_state


def shutting_down() -> bool:
    """Whether a warm or cold shutdown was requested (Celery sets these flags in its signal handlers)."""
    flags = (worker_state.should_stop, worker_state.should_terminate)
    return any(flag is not None and flag is not False for flag in flags)


class ThreadPool(TaskPool):  # type: ignore[misc]
    """Celery's threads pool, minus running prefetched tasks during a warm shutdown, and able to give a task
    that no thread has started back (``withdraw``: a draining worker hands back what it prefetched)."""

    def on_start(self) -> None:
        super().on_start()
        self._pending: dict[str, Future[Any]] = {}

    def on_apply(self, *args: Any, **kwargs: Any) -> Any:
        if shutting_down():
            return None  # not accepted, not acknowledged: the message goes back to the queue
        result = super().on_apply(*args, **kwargs)
        task_args = kwargs.get("args") if "args" in kwargs else (args[1] if len(args) > 1 else None)
        future = getattr(result, "f", None)
        if isinstance(future, Future) and isinstance(task_args, list | tuple) and len(task_args) > 1:
            task_id = str(task_args[1])  # celery's trace_task_ret(type, task_id, request, body, ...)
            self._pending[task_id] = future
            future.add_done_callback(lambda _: self._pending.pop(task_id, None))
        return result

    def withdraw(self, task_id: str) -> bool:
        """Take a task back from the executor if no thread has started it; whether it was."""
        future = self._pending.get(task_id)
        return future is not None and future.cancel()

    def on_stop(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        super().on_stop()


def spawn_unless_stopping(spawn: Any, wait_for_slot: Any, skipped: Any) -> Any:
    """Wrap a green pool's blocking ``spawn``: wait for a free slot first, then start only if not stopping."""

    def guarded_spawn(*args: Any, **kwargs: Any) -> Any:
        wait_for_slot()
        if shutting_down():
            return skipped()  # a finished no-op green thread, so Celery's bookkeeping stays happy
        return spawn(*args, **kwargs)

    return guarded_spawn


def cancellable(target: Any) -> Any:
    """Wrap a task for a green pool so that killing its greenlet reads as "terminated", not "succeeded".

    Celery's green pools turn the ``GreenletExit`` of a cancelled task into a plain success, which
    acknowledges an ``acks_late`` message: cancelled by a soft-shutdown timeout, it would be lost.
    As ``Terminated`` (what a killed prefork child gives), the cancelled request is not acknowledged
    and its message goes back to the queue when the connection closes.
    """

    from billiard.einfo import ExceptionInfo  # type: ignore[import-untyped]
    from greenlet import GreenletExit  # type: ignore[import-untyped,import-not-found,unused-ignore]

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return target(*args, **kwargs)
        except GreenletExit:
            try:
                raise Terminated("cancelled during the worker's shutdown") from None
            except Terminated:
                return (1, ExceptionInfo(), 0.0)  # (failed, exception info, runtime), as the tracer returns

    return run
