"""Connections to brokers (I/O): one redis-py connection pool per :class:`~workerpool_operator.brokers.BrokerConfig`
(and a sentinel manager for ``sentinel://``), shared by the observer (reads) and the drain writer (its one write).

A poll is one request and all its replies on one connection. redis-py has no public bulk read, so
:func:`read_all` reads the connection's stream (``connection._reader``, redis-py's private attribute: the one
place the project reaches into redis-py; ``tests/test_observe.py`` fails if it goes) and hiredis parses every reply
in C. Our own timeout and the next poll are the retry: redis-py retries nothing here.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError

from workerpool_operator.brokers import BrokerAddress, BrokerConfig
from workerpool_operator.observation import QueueObservation
from workerpool_operator.observe.replies import PollPlan

DEFAULT_MAX_CONNECTIONS = 4
_READ_SIZE = 1 << 20
_NOT_ENOUGH_DATA = object()


class Redirect(NamedTuple):
    """Where a polling connection's tracking goes: the subscriber's client id, on the server it is connected to. A
    connection to another server (a sentinel failover moved the master) must not use it: ids are per server, and
    another server's client of that id would receive the messages."""

    client_id: int
    host: str
    port: int


def server_of(connection: AbstractConnection) -> tuple[str, int]:
    """The address a connection is connected to (a sentinel-managed one: the master it found)."""
    return str(getattr(connection, "host", "")), int(getattr(connection, "port", 0))


def tracking_command(redirect: int) -> tuple[str, ...]:
    """The command a polling connection sends once so that the keys it reads are tracked for ``redirect``."""
    return ("CLIENT", "TRACKING", "ON", "REDIRECT", str(redirect))


@dataclass
class BrokerConnection:
    """One broker's connection pool (and sentinel manager), kept for the observer's lifetime."""

    config: BrokerConfig
    address: BrokerAddress
    pool: ConnectionPool
    sentinel: Sentinel | None = None
    last_queues: dict[str, QueueObservation] = field(default_factory=dict)  # the last good poll
    # The wake-up subscriber each connection's reads are tracked for (``wakeups.py``); forgotten on a reconnect.
    tracking: weakref.WeakKeyDictionary[AbstractConnection, int] = field(default_factory=weakref.WeakKeyDictionary)
    tracking_refused: str | None = None  # the broker's answer to the last CLIENT TRACKING, when it refused it

    @classmethod
    def connect(cls, config: BrokerConfig, max_connections: int) -> BrokerConnection:
        address = config.address()
        timeout = config.socket_timeout
        no_retry = Retry(NoBackoff(), 0)  # our own timeout and the next poll are the retry
        common: dict[str, Any] = {
            "username": address.username,
            "password": address.password,
            "db": address.db,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": no_retry,
            "protocol": 2,
            "driver_info": None,  # no CLIENT SETINFO: connect with AUTH/SELECT only
            "health_check_interval": 0,
        }
        if address.sentinel:
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                [(endpoint.host, endpoint.port) for endpoint in address.endpoints],
                sentinel_kwargs={
                    "socket_timeout": timeout,
                    "socket_connect_timeout": timeout,
                    "retry": no_retry,
                    "protocol": 2,
                    "driver_info": None,
                },
                **common,
            )
            assert config.sentinel_master is not None  # checked by config.address()
            pool: ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
                config.sentinel_master, sentinel, max_connections=max_connections, **sentinel.connection_kwargs
            )
            return cls(config=config, address=address, pool=pool, sentinel=sentinel)
        endpoint = address.endpoints[0]
        if address.tls:
            common |= {
                "connection_class": SSLConnection,
                "ssl_cert_reqs": address.cert_reqs,
                "ssl_check_hostname": address.check_hostname,
                "ssl_ca_data": config.ca_pem,
            }
        pool = ConnectionPool(host=endpoint.host, port=endpoint.port, max_connections=max_connections, **common)
        return cls(config=config, address=address, pool=pool)

    async def round_trip(self, plan: PollPlan, redirect: Redirect | None = None) -> list[object]:
        """Send the plan's request on one connection and read every reply. With ``redirect`` (a wake-up
        subscriber's connection), the connection's reads are tracked for it: ``CLIENT TRACKING ON`` goes in front
        of the request when this connection, on the subscriber's server, has not sent it for that subscriber yet
        (its answer is not returned; a refusal is kept in ``tracking_refused``)."""
        if isinstance(self.pool, SentinelConnectionPool):
            # Ask the sentinels where the master is now: a changed address drops idle connections,
            # so the request below goes to the new master (one small round trip to a sentinel).
            await self.pool.get_master_address()  # type: ignore[no-untyped-call]
        connection: AbstractConnection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if redirect is None or not self._tracks_for(connection, redirect):
                await connection.send_packed_command(plan.payload, check_health=False)
                return await read_all(connection, plan.reply_count)
            tracking = hiredis.pack_command(cast(Any, tracking_command(redirect.client_id)))
            await connection.send_packed_command(tracking + plan.payload, check_health=False)
            answer, *replies = await read_all(connection, plan.reply_count + 1)
            if isinstance(answer, ResponseError):
                self.tracking_refused = str(answer)
            else:
                self.tracking_refused = None
                connection.register_connect_callback(self._untrack)  # type: ignore[no-untyped-call]  # after a reconnect, tracking is off
                self.tracking[connection] = redirect.client_id
            return replies
        except BaseException:
            await connection.disconnect(nowait=True)  # unread replies would poison the next poll
            raise
        finally:
            await self.pool.release(connection)

    def _tracks_for(self, connection: AbstractConnection, redirect: Redirect) -> bool:
        """Whether ``CLIENT TRACKING ON REDIRECT`` must go in front of this connection's request."""
        if server_of(connection) != (redirect.host, redirect.port):
            return False  # another server (a failover): that id is not our subscriber's there
        return self.tracking.get(connection) != redirect.client_id

    def _untrack(self, connection: AbstractConnection) -> None:
        """A connection (re)connected: the server knows of no tracking on it."""
        self.tracking.pop(connection, None)

    async def aclose(self) -> None:
        await self.pool.disconnect()
        if self.sentinel is not None:
            for node in self.sentinel.sentinels:
                await node.aclose()


async def read_all(connection: AbstractConnection, count: int) -> list[object]:
    # redis-py has no public bulk read: its stream is read directly, and hiredis parses all replies.
    stream: asyncio.StreamReader | None = connection._reader
    if stream is None:
        raise RedisConnectionError("the connection is closed")
    reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError, notEnoughData=_NOT_ENOUGH_DATA)
    replies: list[object] = []
    while len(replies) < count:
        chunk = await stream.read(_READ_SIZE)
        if not chunk:
            raise RedisConnectionError("connection closed by the server")
        reader.feed(chunk)
        while (reply := reader.gets()) is not _NOT_ENOUGH_DATA:
            replies.append(reply)
    return replies


class BrokerConnections:
    """The connection of every broker in use, by configuration: made on first use, closed when forgotten."""

    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self._brokers: dict[BrokerConfig, BrokerConnection] = {}

    def get(self, config: BrokerConfig) -> BrokerConnection:
        broker = self._brokers.get(config)
        if broker is None:
            broker = self._brokers[config] = BrokerConnection.connect(config, self.max_connections)
        return broker

    def __contains__(self, config: object) -> bool:
        return config in self._brokers

    async def forget(self, keep: Collection[BrokerConfig] = ()) -> None:
        """Close the pools of brokers not in ``keep`` (for example after a Secret changed the URL)."""
        for config in [config for config in self._brokers if config not in keep]:
            await self._brokers.pop(config).aclose()

    async def aclose(self) -> None:
        await self.forget()
