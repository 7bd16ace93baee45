"""The drain-request format: the one place both the operator and the worker entrypoint read it from.

The operator asks a worker to drain (stop taking tasks from a queue, finish what it runs) with one field in a
Redis HASH per queue, on the broker both already share::

    <global_keyprefix>workerpool:drain:<queue>   field = <worker name>   value = unix time of the request

and takes the request back (un-drains) by deleting the field. The worker reads its own field with every report
(``reports.py``) and cancels or resumes its consumer of that queue with Celery's own ``cancel_consumer`` /
``add_consumer``; its report then says ``draining``. The key expires ``ttl_for(drain_timeout)`` after the
operator's last write, so requests an operator left behind (it was removed, the pool deleted) lapse by
themselves, and a worker whose request lapses resumes taking tasks.

Pure (no Redis calls), light: the worker image imports it.
"""

from __future__ import annotations

KEY_PREFIX = "workerpool:drain:"
TTL_MARGIN = 60.0  # seconds a request outlives the longest drain, for the operator to remove the worker


def drain_key(queue: str, global_keyprefix: str = "") -> str:
    """The Redis key of the drain requests for ``queue``."""
    return f"{global_keyprefix}{KEY_PREFIX}{queue}"


def ttl_for(drain_timeout: float) -> int:
    """The key's expiry, in whole seconds, for drains that last at most ``drain_timeout``."""
    return max(1, round(drain_timeout + TTL_MARGIN))


def encode_request(since: float) -> str:
    return f"{since:.3f}"
