"""Events about WorkerPools: logged, then posted through the API, never a failure of their own.

Every part of the operator that has something to tell a user (reconcile, drift repair, the reporter) gets an
:class:`EventSink`, so each can be tested with a plain list. The sink only posts while this replica may write
(``may_write``: it holds the Lease, or runs alone).

kopf has ``kopf.event()``, but it only works inside kopf's own per-object handler tasks (its queue is a context
variable set there); most of our Events come from the scaling loop's task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from workerpool_operator.kube.api import KubeApi, pool_reference
from workerpool_operator.scaling_types import PoolKey

logger = logging.getLogger(__name__)


class EventSink(Protocol):
    async def __call__(self, pool: PoolKey, uid: str | None, type_: str, reason: str, message: str) -> None: ...


class ApiEvents:
    """The operator's :class:`EventSink`: a log line always, an Event when this replica may write."""

    def __init__(self, api: KubeApi, may_write: Callable[[], bool]) -> None:
        self._api = api
        self._may_write = may_write

    async def __call__(self, pool: PoolKey, uid: str | None, type_: str, reason: str, message: str) -> None:
        log = logger.warning if type_ == "Warning" else logger.info
        log("%s/%s: %s: %s", *pool, reason, message)
        if not self._may_write():
            return
        try:
            await asyncio.to_thread(self._api.post_event, pool_reference(*pool, uid), type_, reason, message)
        except Exception as exc:  # an Event is worth a try, never a failure
            logger.warning("posting an Event for %s/%s failed: %s", *pool, exc)
