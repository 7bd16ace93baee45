"""What Celery has waiting and running, read from Redis in one round trip per broker; and drain requests written.

Per poll and broker, one pipelined request covers every queue asked for:

- ``TIME`` (the server's clock: report heartbeats are compared with it, not with ours),
- ``LLEN`` of every priority list of every queue (kombu's key names, see :mod:`.brokers`),
- ``HGETALL`` of every queue's worker-report hash (see :mod:`.reports`),
- for the queues a poll names in ``aged`` (the scaling loop's: those with a target wait; every queue with
  ``read_oldest_age``), after everything else, ``LINDEX key -1`` of every priority list: the oldest message
  of each list, whose ``properties.timestamp`` (set by producers, e.g. in a ``before_task_publish`` handler)
  gives the oldest waiting task's age. Celery does not stamp messages by itself, so without it the age is
  unknown (``None``; the operator then estimates it, ``engine/wait_watch.py``). It costs the transfer of one
  message per waiting list, so it is not done for every queue (bench/bench_observe.py),
- ``GET`` of the beat forecast of every app asked for (pools with ``spec.beat``, see
  :mod:`.beat_forecast`): the next fires of each periodic task become ``QueueObservation.fires`` of the
  queue it is sent to. A missing or unreadable forecast (no beat running, an older format) is no fires.

Each reply is checked: a missing key is an empty queue, a key of the wrong type is an error for that
queue, never a zero. Brokers are polled concurrently, each under its own timeout; every failure is a
value with a short reason (``refused``, ``timed out``, ``auth failed``, ``TLS verification failed``,
``no sentinel master``, ``permission denied``...) that never holds a password. The observer only
reads: the commands above, plus AUTH/SELECT on connect (and SENTINEL queries to sentinel nodes).

The package's parts: ``replies.py`` (the request and the reading of its replies: pure), ``failures.py`` (a
failure as a short reason: pure), ``connections.py`` (one connection pool per broker, the bulk read),
``observer.py`` (the :class:`Observer`, which only reads) and ``drains.py`` (the :class:`DrainWriter`, the one
write).

Why not redis-py's ``Pipeline``: it awaits and post-processes every reply one by one, several times
slower for 3,000 queues. Here the request is packed once per queue set (hiredis), the replies are
parsed in bulk by hiredis' C reader straight from the connection's stream, and read by columns
(figures in docs/benchmarks.md, from bench/bench_observe.py).
"""

from workerpool_operator.observe.connections import DEFAULT_MAX_CONNECTIONS, BrokerConnection, BrokerConnections
from workerpool_operator.observe.drains import DrainWriter
from workerpool_operator.observe.failures import describe_failure, scrub
from workerpool_operator.observe.observer import Observer
from workerpool_operator.observe.replies import (
    FIRES_AHEAD,
    ObservationError,
    PollPlan,
    message_timestamp,
    poll_plan,
    read_replies,
)

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "FIRES_AHEAD",
    "BrokerConnection",
    "BrokerConnections",
    "DrainWriter",
    "ObservationError",
    "Observer",
    "PollPlan",
    "describe_failure",
    "message_timestamp",
    "poll_plan",
    "read_replies",
    "scrub",
]
