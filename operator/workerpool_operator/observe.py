"""The observer: what Celery has waiting and running, read from Redis in one round trip per broker.

Per poll and broker, one pipelined request covers every queue asked for:

- ``TIME`` (the server's clock: report heartbeats are compared with it, not with ours),
- ``LLEN`` of every priority list of every queue (kombu's key names, see :mod:`.brokers`),
- ``HGETALL`` of every queue's worker-report hash (see :mod:`.reports`),
- with ``read_oldest_age``, ``LINDEX key -1`` of every priority list: the oldest message of each list,
  whose ``properties.timestamp`` (set by producers, e.g. in a ``before_task_publish`` handler) gives
  the oldest waiting task's age. Celery does not stamp messages by itself, so without it the age is
  unknown (``None``),
- ``GET`` of the beat forecast of every app asked for (pools with ``spec.beat``, see
  :mod:`.beat_forecast`): the next fires of each periodic task become ``QueueObservation.fires`` of the
  queue it is sent to. A missing or unreadable forecast (no beat running, an older format) is no fires.

Each reply is checked: a missing key is an empty queue, a key of the wrong type is an error for that
queue, never a zero. Brokers are polled concurrently, each under its own timeout; every failure is a
value with a short reason (``refused``, ``timed out``, ``auth failed``, ``TLS verification failed``,
``no sentinel master``, ``permission denied``...) that never holds a password. The observer only
reads: the commands above, plus AUTH/SELECT on connect (and SENTINEL queries to sentinel nodes).

Why not redis-py's ``Pipeline``: it awaits and post-processes every reply one by one, several times
slower for 3,000 queues. Here the request is packed once per queue set (hiredis), the replies are
parsed in bulk by hiredis' C reader straight from the connection's stream, and read by columns
(figures in docs/benchmarks.md, from bench/bench_observe.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    InvalidResponse,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workerpool_operator import beat_forecast, reports
from workerpool_operator.brokers import BrokerAddress, BrokerConfig, BrokerURLError
from workerpool_operator.drain_requests import drain_key, encode_request
from workerpool_operator.failures import causes, certificate_refusal, first_line
from workerpool_operator.observation import BrokerObservation, QueueObservation

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 4
FIRES_AHEAD = 3600.0  # seconds of a beat forecast handed to the engine
_READ_SIZE = 1 << 20
_NOT_ENOUGH_DATA = object()


class ObservationError(Exception):
    """A broker-wide failure found in the replies (for example a missing ACL permission)."""


# --- the request and its replies (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PollPlan:
    """One poll's request for one broker, and where each queue's replies sit in the answer."""

    queues: tuple[str, ...]
    list_keys: tuple[tuple[str, ...], ...]  # per queue: every priority list
    report_keys: tuple[str, ...]  # per queue
    read_oldest_age: bool
    beat_apps: tuple[str, ...]  # apps whose beat forecast is read, after every queue's replies
    commands: tuple[tuple[str, ...], ...] = field(repr=False)
    payload: bytes = field(repr=False)  # the packed commands, sent as they are

    @property
    def reply_count(self) -> int:
        return len(self.commands)


@functools.lru_cache(maxsize=512)
def poll_plan(
    config: BrokerConfig, queues: tuple[str, ...], read_oldest_age: bool = False, beat_apps: tuple[str, ...] = ()
) -> PollPlan:
    """The request for ``queues`` on ``config``'s broker: ``TIME``, then per queue its LLENs, its HGETALL
    and (optionally) its LINDEX -1s, then a GET per beat app. Cached: the same queue set is packed once."""
    commands: list[tuple[str, ...]] = [("TIME",)]
    list_keys = tuple(tuple(config.priority_keys(queue)) for queue in queues)
    report_keys = tuple(reports.report_key(queue, config.global_keyprefix) for queue in queues)
    for keys, report in zip(list_keys, report_keys, strict=True):
        commands += [("LLEN", key) for key in keys]
        commands.append(("HGETALL", report))
        if read_oldest_age:
            commands += [("LINDEX", key, "-1") for key in keys]
    commands += [("GET", beat_forecast.forecast_key(app, config.global_keyprefix)) for app in beat_apps]
    return PollPlan(
        queues=queues,
        list_keys=list_keys,
        report_keys=report_keys,
        read_oldest_age=read_oldest_age,
        beat_apps=beat_apps,
        commands=tuple(commands),
        payload=b"".join(hiredis.pack_command(cast(Any, command)) for command in commands),
    )


def read_replies(
    plan: PollPlan,
    replies: Sequence[object],
    report_ttl: float = reports.DEFAULT_TTL,
    previous: Mapping[str, QueueObservation] | None = None,
) -> dict[str, QueueObservation]:
    """Turn the replies to ``plan`` (in order; errors as ``ResponseError`` values) into observations.

    ``previous`` (the last poll's result) lets a queue without reports whose backlog did not change keep
    its previous, equal, observation instead of a new one. Raises :class:`ObservationError` for failures
    of the whole broker (no clock, missing permission)."""
    if len(replies) != plan.reply_count:
        raise ObservationError(f"expected {plan.reply_count} replies, got {len(replies)}")
    if isinstance(replies[0], ResponseError):
        _raise_for_broker_wide(replies[0])
    now = _server_time(replies[0])
    previous = previous or {}
    # The hot loop of a poll (3,000 queues in a few ms): the replies are cut into columns at C speed,
    # one row per queue; the details are worked out only for what is not plain.
    width = len(plan.list_keys[0]) if plan.queues else 0
    stride = width * 2 + 1 if plan.read_oldest_age else width + 1
    body = replies[1 : len(replies) - len(plan.beat_apps)]
    lengths_rows = zip(*(body[column::stride] for column in range(width)), strict=True)
    report_column = body[width::stride]
    oldest_rows: Iterable[Sequence[object]] = (
        zip(*(body[width + 1 + column :: stride] for column in range(width)), strict=True)
        if plan.read_oldest_age
        else itertools.repeat(())
    )
    observed: dict[str, QueueObservation] = {}
    live = reports.live_reports_of_reply
    for queue, keys, report_key, lengths, report, oldest in zip(
        plan.queues, plan.list_keys, plan.report_keys, lengths_rows, report_column, oldest_rows, strict=False
    ):  # not strict: oldest_rows may repeat forever; the lengths were checked above
        try:
            backlog = sum(lengths)
        except TypeError:  # a reply is an error, not a number
            observed[queue] = QueueObservation(queue=queue, error=_lengths_error(keys, lengths))
            continue
        if not isinstance(report, list):
            observed[queue] = QueueObservation(queue=queue, error=_report_error(report_key, report))
            continue
        if not report and not oldest:
            before = previous.get(queue)
            if (
                before is not None
                and before.backlog == backlog
                and not before.workers
                and not before.fires
                and before.ok
            ):
                observed[queue] = before  # frozen and equal: building a new one is most of the cost
                continue
            observed[queue] = QueueObservation(queue=queue, backlog=backlog)
            continue
        workers = live(report, now, report_ttl) if report else ()
        in_flight = 0
        for load in workers:
            in_flight += load.running + load.reserved
        observed[queue] = QueueObservation(
            queue, backlog, in_flight, workers, _oldest_age(oldest, now) if oldest else None
        )
    if plan.beat_apps:
        _add_fires(observed, replies[len(replies) - len(plan.beat_apps) :], now)
    return observed


_FORECAST_ERRORS_LOGGED: set[str] = set()


def _add_fires(observed: dict[str, QueueObservation], forecasts: Sequence[object], now: float) -> None:
    """Each queue's announced fires within :data:`FIRES_AHEAD`, from the beat forecasts' replies (source: the
    periodic task's name in ``beat_schedule``). A reply that is not a readable forecast adds nothing."""
    fires: dict[str, list[tuple[float, str]]] = {}  # two apps may send to one queue
    for reply in forecasts:
        if isinstance(reply, ResponseError) and str(reply) not in _FORECAST_ERRORS_LOGGED:
            _FORECAST_ERRORS_LOGGED.add(str(reply))  # once per message: it would repeat with every poll
            log.warning("reading a beat forecast failed (no pre-warming for beat's fires): %s", reply)
        forecast = beat_forecast.decode_forecast(reply) if isinstance(reply, bytes | str) else None
        if forecast is None:
            continue
        for queue, found in forecast.fires_by_queue(now, FIRES_AHEAD).items():
            if queue in observed:
                fires.setdefault(queue, []).extend(found)
    for queue, announced in fires.items():
        if observed[queue].ok:
            observed[queue] = dataclasses.replace(observed[queue], fires=tuple(sorted(announced)))


def _lengths_error(keys: Sequence[str], lengths: Sequence[object]) -> str:
    for key, length in zip(keys, lengths, strict=True):
        if isinstance(length, ResponseError):
            _raise_for_broker_wide(length)
            return _reply_reason(length, key, "list")
        if not isinstance(length, int):
            return f"unexpected reply to LLEN {key!r}: {type(length).__name__}"
    raise AssertionError("called only when a length is not a number")  # pragma: no cover


def _report_error(report_key: str, report: object) -> str:
    if isinstance(report, ResponseError):
        _raise_for_broker_wide(report)
        return _reply_reason(report, report_key, "hash")
    return f"unexpected reply to HGETALL {report_key!r}: {type(report).__name__}"


def _server_time(reply: object) -> float:
    if isinstance(reply, list) and len(reply) == 2:
        try:
            return int(reply[0]) + int(reply[1]) / 1_000_000
        except (TypeError, ValueError):
            pass
    raise ObservationError(f"unexpected reply to TIME: {reply!r}")


def message_timestamp(raw: bytes | str) -> float | None:
    """The ``timestamp`` property of one kombu message (JSON as stored by the Redis transport), if any."""
    try:
        message = json.loads(raw)
        stamp = message["properties"]["timestamp"]
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        return None
    return float(stamp)


def _oldest_age(messages: Iterable[object], now: float) -> float | None:
    stamps = [message_timestamp(raw) for raw in messages if isinstance(raw, bytes | str)]
    known = [stamp for stamp in stamps if stamp is not None]
    return max(0.0, now - min(known)) if known else None


def _reply_reason(error: ResponseError, key: str, kind: str) -> str:
    message = str(error)
    if message.startswith("WRONGTYPE"):
        return f"wrong type: {key!r} is not a {kind}"
    return f"error reading {key!r}: {message}"


def _raise_for_broker_wide(error: ResponseError) -> None:
    message = str(error)
    if message.startswith("NOPERM"):
        raise ObservationError(f"permission denied: {message.removeprefix('NOPERM ')}")
    if message.startswith(("NOAUTH", "WRONGPASS")):
        raise ObservationError(f"auth failed: {message}")


# --- failures as values (pure) ---------------------------------------------------------------------------


def describe_failure(error: BaseException, timeout: float) -> str:
    """A short reason a user can act on, for a failed poll of one broker."""
    chain = list(causes(error))
    text = " ".join(str(e) for e in chain)
    if isinstance(error, BrokerURLError):
        return f"bad broker URL: {error}"
    if isinstance(error, ObservationError):
        return str(error)
    if isinstance(error, asyncio.TimeoutError | TimeoutError) and not isinstance(error, RedisError):
        return f"timed out after {timeout:g} s"
    if isinstance(error, MasterNotFoundError):
        return f"no sentinel master: {error}"
    if any(isinstance(e, AuthenticationError | AuthenticationWrongNumberOfArgsError) for e in chain) or any(
        marker in text for marker in ("WRONGPASS", "NOAUTH", "invalid password", "invalid username-password")
    ):
        return f"auth failed: {first_line(error)}"
    if isinstance(error, NoPermissionError):
        return f"permission denied: {first_line(error)}"
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or "CERTIFICATE_VERIFY_FAILED" in text:
        refused = certificate_refusal(error) or "the server's certificate was not accepted"
        return f"TLS verification failed: {refused} (is the CA right?)"
    if any(isinstance(e, ssl.SSLError) for e in chain) or "SSL" in text:
        return f"TLS error: {first_line(error)}"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text or "Error 111" in text:
        return f"refused: {first_line(error)}"
    if any(isinstance(e, socket.gaierror) for e in chain) or "Name or service not known" in text:
        return f"unknown host: {first_line(error)}"
    if isinstance(error, RedisTimeoutError):
        return f"timed out: {first_line(error)}"
    if isinstance(error, RedisConnectionError):
        return f"connection failed: {first_line(error)}"
    if isinstance(error, RedisError):
        return f"error: {first_line(error)}"
    return f"unexpected error: {type(error).__name__}: {first_line(error)}"


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and its URL-quoted form) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


# --- connections (I/O) -----------------------------------------------------------------------------------


@dataclass
class _Broker:
    """One broker's connection pool (and sentinel manager), kept for the observer's lifetime."""

    config: BrokerConfig
    address: BrokerAddress
    pool: ConnectionPool
    sentinel: Sentinel | None = None
    last_queues: dict[str, QueueObservation] = field(default_factory=dict)  # the last good poll

    @classmethod
    def connect(cls, config: BrokerConfig, max_connections: int) -> _Broker:
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

    async def round_trip(self, plan: PollPlan) -> list[object]:
        """Send the plan's request on one connection and read every reply."""
        if isinstance(self.pool, SentinelConnectionPool):
            # Ask the sentinels where the master is now: a changed address drops idle connections,
            # so the request below goes to the new master (one small round trip to a sentinel).
            await self.pool.get_master_address()  # type: ignore[no-untyped-call]
        connection: AbstractConnection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(plan.payload, check_health=False)
            return await _read_all(connection, plan.reply_count)
        except BaseException:
            await connection.disconnect(nowait=True)  # unread replies would poison the next poll
            raise
        finally:
            await self.pool.release(connection)

    async def aclose(self) -> None:
        await self.pool.disconnect()
        if self.sentinel is not None:
            for node in self.sentinel.sentinels:
                await node.aclose()


async def _read_all(connection: AbstractConnection, count: int) -> list[object]:
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


# --- the observer ----------------------------------------------------------------------------------------


class Observer:
    """Observes queues on many brokers: one connection pool per :class:`BrokerConfig`, brokers in parallel.

    ``report_ttl``: seconds a worker report stays live (compared with the broker's clock).
    ``read_oldest_age``: also read the oldest message of every list for ``oldest_age`` (costs one
    LINDEX per list and the transfer of those messages; measured in bench/bench_observe.py).
    """

    def __init__(
        self,
        *,
        report_ttl: float = reports.DEFAULT_TTL,
        read_oldest_age: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.report_ttl = report_ttl
        self.read_oldest_age = read_oldest_age
        self.max_connections = max_connections
        self._brokers: dict[BrokerConfig, _Broker] = {}
        self._failing: dict[BrokerConfig, str] = {}  # the last reason, so a lasting failure is logged once

    async def observe(
        self,
        wanted: Mapping[BrokerConfig, Collection[str]],
        timeout: float,  # noqa: ASYNC109 (per broker)
        beats: Mapping[BrokerConfig, Collection[str]] | None = None,
    ) -> dict[BrokerConfig, BrokerObservation]:
        """Poll every broker in ``wanted`` for its queues, concurrently, each within ``timeout`` seconds; with
        ``beats``, also read the forecasts of those apps' beats on that broker (``QueueObservation.fires``)."""
        arrived = {
            config: observation async for config, observation in self.observe_as_completed(wanted, timeout, beats)
        }
        return {config: arrived[config] for config in wanted}

    async def observe_as_completed(
        self,
        wanted: Mapping[BrokerConfig, Collection[str]],
        timeout: float,  # noqa: ASYNC109 (per broker)
        beats: Mapping[BrokerConfig, Collection[str]] | None = None,
    ) -> AsyncIterator[tuple[BrokerConfig, BrokerObservation]]:
        """Like :meth:`observe`, but yields each broker's observation as soon as it is there."""
        beats = beats or {}
        tasks = [
            asyncio.create_task(
                self.observe_broker(config, queues, timeout, beats.get(config, ())),
                name=f"observe {config.redacted_url}",
            )
            for config, queues in wanted.items()
        ]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def observe_broker(
        self,
        config: BrokerConfig,
        queues: Collection[str],
        timeout: float,  # noqa: ASYNC109
        beat_apps: Collection[str] = (),
    ) -> tuple[BrokerConfig, BrokerObservation]:
        """One broker's poll. Never raises (except cancellation): failures are values."""
        names = tuple(dict.fromkeys(queues))
        apps = tuple(sorted(set(beat_apps)))
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                broker = self._broker(config)
                plan = poll_plan(config, names, self.read_oldest_age, apps)
                replies = await broker.round_trip(plan)
            observed = read_replies(plan, replies, self.report_ttl, previous=broker.last_queues)
            broker.last_queues = dict(observed)  # our own copy: callers may change theirs
        except Exception as error:  # every failure of one broker becomes its observation's error
            reason = scrub(describe_failure(error, timeout), self._secrets(config))
            self._log_failure(config, reason, error)
            failed = {name: QueueObservation(queue=name, error=reason) for name in names}
            return config, BrokerObservation(queues=failed, error=reason, duration=time.monotonic() - started)
        duration = time.monotonic() - started
        self._log_success(config, len(names), duration)
        return config, BrokerObservation(queues=observed, duration=duration)

    async def send_drains(
        self, config: BrokerConfig, queue: str, draining: Mapping[str, float], released: Collection[str], ttl: int
    ) -> None:
        """The operator's one write to a broker: drain requests for ``queue`` (in ``drain_requests.py``'s format),
        on the broker's own connection pool, in one round trip. A read-only user for the polls needs write access
        to the ``workerpool:drain:*`` keys for this (docs/operations.md)."""
        key = drain_key(queue, config.global_keyprefix)
        client = Redis(connection_pool=self._broker(config).pool)
        async with client.pipeline(transaction=False) as pipe:
            if draining:
                pipe.hset(key, mapping={worker: encode_request(since) for worker, since in draining.items()})
                pipe.expire(key, ttl)
            if released:
                pipe.hdel(key, *released)
            await pipe.execute()

    async def forget(self, keep: Collection[BrokerConfig] = ()) -> None:
        """Close the pools of brokers not in ``keep`` (for example after a Secret changed the URL)."""
        for config in [config for config in self._brokers if config not in keep]:
            await self._brokers.pop(config).aclose()
        for config in [config for config in self._failing if config not in keep]:
            del self._failing[config]

    async def aclose(self) -> None:
        await self.forget()

    async def __aenter__(self) -> Observer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _broker(self, config: BrokerConfig) -> _Broker:
        broker = self._brokers.get(config)
        if broker is None:
            broker = self._brokers[config] = _Broker.connect(config, self.max_connections)
        return broker

    def _secrets(self, config: BrokerConfig) -> list[str | None]:
        try:
            return [config.address().password]
        except BrokerURLError:
            return []

    def _log_failure(self, config: BrokerConfig, reason: str, error: Exception) -> None:
        unexpected = reason.startswith("unexpected error")
        if self._failing.get(config) != reason or unexpected:
            log.warning("observing %s failed: %s", config.redacted_url, reason, exc_info=error if unexpected else None)
        self._failing[config] = reason

    def _log_success(self, config: BrokerConfig, queues: int, duration: float) -> None:
        if self._failing.pop(config, None) is not None:
            log.info("observing %s works again", config.redacted_url)
        log.debug("observed %d queues on %s in %.1f ms", queues, config.redacted_url, duration * 1000)
