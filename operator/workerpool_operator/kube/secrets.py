"""The Secrets a WorkerPool names (broker URL, CA): read by name with ``get``, never listed or watched.

Secrets are read when a pool is planned, and again every ``recheck`` seconds for the pools served, so a rotated
broker URL is picked up (and a Secret deleted since is reported) without a restart, and the operator never
holds a watch on every Secret of the cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube.api import ApiError, KubeApi
from workerpool_operator.kube.plan import PlanError, SecretData

DEFAULT_RECHECK = 300.0  # seconds between two reads of a served pool's Secrets


class SecretReader:
    def __init__(self, api: KubeApi, recheck: float = DEFAULT_RECHECK) -> None:
        self._api = api
        self.recheck = recheck

    async def read(self, namespace: str, names: Sequence[str]) -> dict[str, SecretData]:
        """Each named Secret's data (``None`` when it does not exist). A refused read is a :class:`PlanError`."""
        found: dict[str, SecretData] = {}
        for name in names:
            try:
                found[name] = await asyncio.to_thread(self._api.read_secret, namespace, name)
            except ApiError as exc:
                message = f"cannot read Secret {namespace}/{name}: {exc.message}"
                raise PlanError(cond.REASON_SECRET_NOT_FOUND, message) from None
        return found

    def due(self, read_at: float, now: float) -> bool:
        """Whether Secrets read at ``read_at`` are due for another read."""
        return now - read_at >= self.recheck
