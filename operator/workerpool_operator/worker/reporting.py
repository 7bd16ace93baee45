"""Worker reports: this worker's load, written to Redis in the format of :mod:`workerpool_operator.reports`.

One HSET per consumed queue, the key's EXPIRE refreshed and the others' stale fields pruned, all in
one pipelined round trip (plus an HDEL round trip only when something is stale). Counting is pure
(:func:`count_requests`); :class:`LoadReporter` does the Redis I/O and knows nothing about Celery.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from workerpool_operator.drain_requests import drain_key
from workerpool_operator.observation import WorkerLoad
from workerpool_operator.reports import decode_report, encode_report, format_to_write, report_key

log = logging.getLogger(__name__)


class _Request(Protocol):
    @property
    def delivery_info(self) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class Counts:
    """What the worker holds for one queue."""

    running: int = 0
    reserved: int = 0


def queue_of(request: _Request, queues: Sequence[str]) -> str:
    """The consumed queue a request came from (its routing key when that names one, else the first queue)."""
    info = request.delivery_info or {}
    routing_key = info.get("routing_key")
    return routing_key if isinstance(routing_key, str) and routing_key in queues else queues[0]


def count_requests(
    active: Iterable[_Request], reserved: Iterable[_Request], queues: Sequence[str]
) -> dict[str, Counts]:
    """Running and reserved-but-not-started requests per queue.

    ``reserved`` is Celery's ``reserved_requests`` (every request the worker holds, started or not);
    ``active`` its ``active_requests`` (started): reserved-only is the difference.
    """
    active_set = set(active)
    running = dict.fromkeys(queues, 0)
    waiting = dict.fromkeys(queues, 0)
    for request in active_set:
        running[queue_of(request, queues)] += 1
    for request in reserved:
        if request not in active_set:
            waiting[queue_of(request, queues)] += 1
    return {q: Counts(running=running[q], reserved=waiting[q]) for q in queues}


def stale_fields(fields: Mapping[bytes | str, bytes | str], now: float, ttl: float, own: str) -> list[str]:
    """Fields of a report hash that are no longer live reports (old heartbeat, or not a report at all)."""
    stale = []
    for name, raw in fields.items():
        worker = name.decode() if isinstance(name, bytes) else name
        if worker == own:
            continue
        load = decode_report(worker, raw)
        if load is None or now - load.heartbeat > ttl:
            stale.append(worker)
    return stale


class LoadReporter:
    """Publishes one worker's load for each queue it consumes."""

    def __init__(
        self,
        client: redis.Redis,
        worker: str,
        queues: Sequence[str],
        counts: Callable[[], Mapping[str, Counts]],
        done: Callable[[], int],
        concurrency: int,
        ttl: float,
        global_keyprefix: str = "",
        draining: Callable[[], Collection[str]] = frozenset,
        started: float = 0.0,
        stopping: Callable[[], bool] = bool,
        version: int = 0,
    ) -> None:
        self.client = client
        self.worker = worker
        self.queues = tuple(queues)
        self.counts = counts
        self.done = done
        self.concurrency = concurrency
        self.ttl = ttl
        self.keys = {q: report_key(q, global_keyprefix) for q in self.queues}
        self.drain_keys = {q: drain_key(q, global_keyprefix) for q in self.queues}
        self.draining = draining  # the queues this worker drains now (their consumer is cancelled)
        self.started = started  # when the worker became ready
        self.stopping = stopping  # whether the worker got SIGTERM and finishes what it runs
        self.version = version  # the pod template's version (reports.version_number)
        self.requested: frozenset[str] = frozenset()  # queues the operator asked this worker to drain
        self._seen: dict[str, Mapping[bytes | str, bytes | str]] = {}  # each hash as last read
        self._failing = False

    def loads(self, now: float) -> dict[str, WorkerLoad]:
        counts = self.counts()
        done = self.done()
        draining = self.draining()
        stopping = self.stopping()
        return {
            q: WorkerLoad(
                worker=self.worker,
                running=counts.get(q, Counts()).running,
                reserved=counts.get(q, Counts()).reserved,
                done=done,
                heartbeat=now,
                concurrency=self.concurrency,
                draining=q in draining,
                started=self.started,
                stopping=stopping,
                version=self.version,
            )
            for q in self.queues
        }

    def publish(self, now: float | None = None) -> None:
        """Write this worker's reports; Redis errors are logged once per outage, never raised."""
        now = time.time() if now is None else now
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue, load in self.loads(now).items():
                key = self.keys[queue]
                written = format_to_write(self._seen.get(queue), self.worker, now, self.ttl)
                pipe.hset(key, self.worker, encode_report(load, written))
                pipe.expire(key, math.ceil(self.ttl))
                pipe.hgetall(key)
                pipe.hexists(self.drain_keys[queue], self.worker)
            replies = pipe.execute()
            self._seen = dict(zip(self.queues, replies[2::4], strict=True))
            stale = {
                key: fields
                for key, all_fields in zip(self.keys.values(), replies[2::4], strict=True)
                if (fields := stale_fields(all_fields, now, self.ttl, self.worker))
            }
            self.requested = frozenset(q for q, asked in zip(self.queues, replies[3::4], strict=True) if asked)
            if stale:
                pipe = self.client.pipeline(transaction=False)
                for key, fields in stale.items():
                    pipe.hdel(key, *fields)
                pipe.execute()
        except redis.RedisError as error:
            if not self._failing:
                log.warning("cannot write worker reports (will retry): %s", error)
            self._failing = True
            return
        if self._failing:
            log.info("worker reports are written again")
        self._failing = False

    def remove(self) -> None:
        """Delete this worker's fields (clean shutdown)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in self.keys.values():
                pipe.hdel(key, self.worker)
            pipe.execute()
        except redis.RedisError as error:
            log.warning("cannot remove worker reports (they expire by themselves): %s", error)
