"""Wake-ups (I/O): the broker says when a queue the operator polled has changed, so a burst is acted on at once
instead of at the next poll.

How: Redis' client tracking, in its default mode. Per broker, one connection subscribes to
``__redis__:invalidate``; each connection the observer polls on turns tracking on once with ``CLIENT TRACKING ON
REDIRECT <that connection>`` (sent in front of a poll's request when the connection has not yet sent it, or sent
it for a subscriber that has since reconnected). From then on every key a poll reads is tracked, and the first
change to it after the read sends one invalidation message, naming the key, to the subscriber. The handler
(the scaling loop's) maps the key to its queue and polls that queue now. Polling stays what the decisions rest
on; a wake-up only brings a poll forward, so a lost message costs one poll interval of reaction, never a wrong
count.

Why this mechanism and not another:
- keyspace notifications need ``CONFIG SET notify-keyspace-events``, which managed Redis services forbid (their
  parameter groups set it), and they publish every write of every key to every subscriber;
- tracking's ``BCAST`` mode with a prefix per queue makes the broker compare every write it takes, of any key,
  with every prefix: measured on redis-server 7.0 here, ``LPUSH`` to an unrelated key fell from 324,000/s to
  30,500/s with 300 prefixes and to 540/s with 30,000, and registering 3,000 prefixes blocked the server 4.7 s;
- the default mode costs the broker one lookup in its table of tracked keys per write, and one message per
  key per poll at most: a key is forgotten once invalidated, until the next poll reads it again. At rest
  (nothing written) it costs nothing: no command, no message;
- a notification key written by the worker entrypoint or a producer hook would miss producers we do not
  control; a faster poll costs every idle queue a command per poll.

What needs: Redis 6 or later (or a service that keeps ``CLIENT TRACKING``), the ``CLIENT`` command's
``TRACKING`` and ``ID`` subcommands, and ``SUBSCRIBE`` to ``__redis__:invalidate`` for the broker's user. A broker
that refuses any of them is polled as before: the reason is logged once, and wake-ups are tried again after
``RETRY_UNAVAILABLE`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.observe.connections import BrokerConnections, Redirect, server_of
from workerpool_operator.observe.failures import describe_failure, scrub

log = logging.getLogger(__name__)

INVALIDATE_CHANNEL = "__redis__:invalidate"
KEEPALIVE = 60.0  # seconds without a message after which the subscriber PINGs (a silent network is noticed)
RETRY_BROKEN = 1.0  # first wait before connecting again after the subscriber's connection broke (doubles to 30 s)
RETRY_UNAVAILABLE = 600.0  # wait before trying again on a broker that refused wake-ups

TRACKING_REFUSED = "CLIENT TRACKING refused"  # a refusal that a new subscription does not undo: logged once

WakeHandler = Callable[[BrokerConfig, Collection[str]], None]  # a broker and the keys that changed


def invalidated_keys(message: object) -> list[str] | None:
    """The keys of an invalidation message (``["message", "__redis__:invalidate", [keys] or nil]``); ``[]`` for a
    flush (nil: every key); ``None`` for any other reply (a subscription's or a PING's confirmation)."""
    if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
        return None
    keys = message[2]
    if keys is None:
        return []
    if not isinstance(keys, list):
        return None
    return [key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key) for key in keys]


@dataclass
class _Subscriber:
    """One broker's invalidation subscriber."""

    task: asyncio.Task[None] | None = None
    redirect: Redirect | None = None  # the subscribed connection's CLIENT ID and server, while it is subscribed
    unavailable: str | None = None  # why the broker gave no wake-ups, while it gives none
    retry_at: float = 0.0
    connected: asyncio.Event = field(default_factory=asyncio.Event)


class Wakeups:
    """The invalidation subscribers of every broker in use: one connection each, made on first use.

    ``redirect_for(config)`` is what a poll needs: the subscriber's connection id once it is subscribed (the
    subscriber is started by the first call), ``None`` before, and while the broker refuses."""

    def __init__(
        self,
        connections: BrokerConnections,
        handler: WakeHandler,
        *,
        keepalive: float = KEEPALIVE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connections = connections
        self._handler = handler
        self._keepalive = keepalive
        self._clock = clock
        self._subscribers: dict[BrokerConfig, _Subscriber] = {}

    def redirect_for(self, config: BrokerConfig) -> Redirect | None:
        subscriber = self._subscribers.get(config)
        if subscriber is None:
            subscriber = self._subscribers[config] = _Subscriber()
        if subscriber.task is None or subscriber.task.done():
            if subscriber.unavailable is not None and self._clock() < subscriber.retry_at:
                return None
            subscriber.task = asyncio.get_running_loop().create_task(
                self._subscribe(config, subscriber), name=f"wake-ups {config.redacted_url}"
            )
        return subscriber.redirect

    def refused(self, config: BrokerConfig, reason: str) -> None:
        """The broker refused a polling connection's ``CLIENT TRACKING``: no wake-ups there for a while."""
        subscriber = self._subscribers.get(config)
        if subscriber is None:
            return
        self._give_up(config, subscriber, f"{TRACKING_REFUSED}: {reason}")
        if subscriber.task is not None:
            subscriber.task.cancel()

    async def subscribed(self, config: BrokerConfig, timeout: float = 5.0) -> Redirect:  # noqa: ASYNC109
        """Wait until ``config``'s subscriber is subscribed (starting it); where tracking goes."""
        self.redirect_for(config)
        subscriber = self._subscribers[config]
        async with asyncio.timeout(timeout):
            await subscriber.connected.wait()
        assert subscriber.redirect is not None
        return subscriber.redirect

    async def forget(self, keep: Collection[BrokerConfig] = ()) -> None:
        """Stop the subscribers of brokers not in ``keep``."""
        for config in [config for config in self._subscribers if config not in keep]:
            subscriber = self._subscribers.pop(config)
            if subscriber.task is not None:
                subscriber.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await subscriber.task

    async def aclose(self) -> None:
        await self.forget()

    # --- one broker's subscriber ------------------------------------------------------------------------

    async def _subscribe(self, config: BrokerConfig, subscriber: _Subscriber) -> None:
        """Subscribe, hand every invalidation to the handler, and subscribe again when the connection breaks."""
        backoff = RETRY_BROKEN
        while True:
            connection: AbstractConnection | None = None
            try:
                connection = self._connections.get(config).pool.make_connection()  # type: ignore[no-untyped-call]
                await connection.connect()
                await connection.send_command("CLIENT", "ID")
                client_id = int(await connection.read_response())
                await connection.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
                await connection.read_response()
                subscriber.redirect = Redirect(client_id, *server_of(connection))
                subscriber.connected.set()
                if subscriber.unavailable is not None and not subscriber.unavailable.startswith(TRACKING_REFUSED):
                    log.info("wake-ups on %s work again", config.redacted_url)  # (a refusal of tracking stays)
                    subscriber.unavailable = None
                backoff = RETRY_BROKEN
                await self._listen(config, subscriber, connection)
            except asyncio.CancelledError:
                raise
            except ResponseError as error:  # an old Redis, or a user without the permission: poll only
                self._give_up(config, subscriber, scrub(str(error), self._secrets(config)))
                return
            except Exception as error:
                reason = scrub(describe_failure(error, config.socket_timeout), self._secrets(config))
                if subscriber.redirect is not None:
                    log.info("wake-ups on %s interrupted (%s); polling meanwhile", config.redacted_url, reason)
                subscriber.redirect = None
                subscriber.connected.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                subscriber.redirect = None
                subscriber.connected.clear()
                if connection is not None:
                    await connection.disconnect(nowait=True)

    async def _listen(self, config: BrokerConfig, subscriber: _Subscriber, connection: AbstractConnection) -> None:
        pinged = False
        while True:
            # redis-py answers None when a read with its own timeout runs out (and keeps the connection)
            message = await connection.read_response(timeout=self._keepalive if self._keepalive else math.inf)
            if message is None:
                if pinged:
                    raise ConnectionError("no answer to a PING on the subscribed connection")
                await connection.send_command("PING")
                pinged = True
                continue
            pinged = False
            keys = invalidated_keys(message)
            if keys is None:
                continue
            try:
                self._handler(config, keys)
            except Exception:
                log.exception("handling a wake-up from %s failed", config.redacted_url)

    def _give_up(self, config: BrokerConfig, subscriber: _Subscriber, reason: str) -> None:
        if subscriber.unavailable is None:
            log.warning(
                "no wake-ups from %s (%s): its queues are polled at their interval only", config.redacted_url, reason
            )
        subscriber.unavailable = reason
        subscriber.retry_at = self._clock() + RETRY_UNAVAILABLE
        subscriber.redirect = None
        subscriber.connected.clear()

    def _secrets(self, config: BrokerConfig) -> list[str | None]:
        try:
            return [config.address().password]
        except Exception:
            return []
