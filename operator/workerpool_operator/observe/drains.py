"""The operator's one write to a broker (I/O): drain requests, in ``drain_requests.py``'s format, on the connection
pool the observer reads with.

A read-only Redis user for the polls needs write access to the ``workerpool:drain:*`` keys for this
(docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from redis.asyncio import Redis

from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.drain_requests import drain_key, encode_request
from workerpool_operator.observe.connections import BrokerConnections


class DrainWriter:
    """Writes drain requests (implements ``scaling_types.DrainSender``)."""

    def __init__(self, connections: BrokerConnections) -> None:
        self._connections = connections

    async def send_drains(
        self, config: BrokerConfig, queue: str, draining: Mapping[str, float], released: Collection[str], ttl: int
    ) -> None:
        """Ask the ``draining`` workers to drain ``queue`` and take the request back from the ``released`` ones, in
        one round trip; the requests expire ``ttl`` seconds after."""
        key = drain_key(queue, config.global_keyprefix)
        client = Redis(connection_pool=self._connections.get(config).pool)
        async with client.pipeline(transaction=False) as pipe:
            if draining:
                pipe.hset(key, mapping={worker: encode_request(since) for worker, since in draining.items()})
                pipe.expire(key, ttl)
            if released:
                pipe.hdel(key, *released)
            await pipe.execute()
