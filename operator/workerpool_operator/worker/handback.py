"""A draining worker hands back what it prefetched: tasks it reserved from the queue but has not started go back
to the head of the queue, where another worker takes them now instead of after this worker's running tasks.

A Celery remote-control command of ours, ``workerpool_hand_back``, which the worker sends to itself (as it does
``cancel_consumer``): it runs in the consumer's own thread, the one that hands tasks to the pool, so no task can
start while it looks. For each request of the queue that is reserved and not started, it takes the task out of
the pool before any process or thread begins it, then rejects its message with ``requeue`` (kombu's Redis
transport puts it back at the head of its list) and forgets the request.

- ``threads`` (our pool, ``pools.ThreadPool``): a task not started yet is a pending future of the executor; it
  is cancelled, which succeeds only if no thread took it.
- ``prefork``: Celery writes a prefetched task into a child process's pipe as soon as the child accepted its
  previous one (its fair scheduling counts a child free once its job started), so the parent no longer holds it
  and cannot take it back without killing the child: it runs there after the running one. With the CRD's
  ``prefetchMultiplier: 1`` that is at most one task per process. Measured in tests/test_worker_drain.py.
- ``solo``, ``gevent``, ``eventlet``: these start a task as soon as the consumer hands it over; nothing waits
  in a pool to take back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import control_command, ok

log = logging.getLogger(__name__)

COMMAND = "workerpool_hand_back"


def waiting_requests(queue: str) -> list[Any]:
    """Requests of ``queue`` the worker reserved and has not started."""
    active = set(worker_state.active_requests)
    return [
        request
        for request in tuple(worker_state.reserved_requests)
        if request not in active and (request.delivery_info or {}).get("routing_key") == queue
    ]


def take_back(requests: Iterable[Any], withdraw: Callable[[str], bool]) -> int:
    """Give back every request ``withdraw`` could take out of the pool by its task id; how many."""
    count = 0
    for request in requests:
        if not withdraw(request.id):
            continue
        request.reject(requeue=True)
        worker_state.task_ready(request)
        count += 1
    return count


def _withdraw_from(pool: Any) -> Callable[[str], bool]:
    """How to take a not-started task out of this pool, by task id (never one that started)."""
    take = getattr(pool, "withdraw", None)  # only our ThreadPool can
    if callable(take):
        return take  # type: ignore[no-any-return]
    return lambda _task_id: False


@control_command(args=[("queue", str)], signature="<queue>")  # type: ignore[untyped-decorator]
def workerpool_hand_back(state: Any, queue: str, **_: Any) -> dict[str, str]:
    """Give back to ``queue`` the tasks of it this worker reserved and has not started."""
    count = take_back(waiting_requests(queue), _withdraw_from(state.consumer.pool))
    if count:
        log.info("handed %d prefetched task(s) back to %s", count, queue)
    return ok(f"handed back {count}")  # type: ignore[no-any-return]
