"""The observer (I/O): every broker's queues in one round trip per broker per poll, brokers concurrently.

It only reads (the commands of :mod:`.replies`, plus AUTH/SELECT on connect and SENTINEL queries to sentinel
nodes); the one write to a broker, drain requests, is :class:`~.drains.DrainWriter`'s, on the same connections.
Every failure of a broker is a value: its observation carries the reason (:mod:`.failures`), and a lasting
failure is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping

from workerpool_operator import reports
from workerpool_operator.brokers import BrokerConfig, BrokerURLError
from workerpool_operator.observation import BrokerObservation, QueueObservation
from workerpool_operator.observe.connections import DEFAULT_MAX_CONNECTIONS, BrokerConnections
from workerpool_operator.observe.failures import describe_failure, scrub
from workerpool_operator.observe.replies import poll_plan, read_replies
from workerpool_operator.observe.stalls import StallMeter, wait_responsive
from workerpool_operator.observe.wakeups import WakeHandler, Wakeups

log = logging.getLogger(__name__)


class Observer:
    """Observes queues on many brokers: one connection pool per :class:`BrokerConfig`, brokers in parallel.

    ``report_ttl``: seconds a worker report stays live (compared with the broker's clock).
    ``read_oldest_age``: also read the oldest message of every list of every queue for ``oldest_age`` (costs one
    LINDEX per list and the transfer of those messages; measured in bench/bench_observe.py). Without it, only the
    queues a poll names in ``aged`` (the scaling loop's: those with a target wait) have theirs read.
    ``connections``: the brokers' connections, to share with a :class:`~.drains.DrainWriter` (default: its own).

    A broker's ``timeout`` counts only the time the event loop could have read its reply (:mod:`.stalls`): a
    stall of the operator's own loop never reads as a broker outage. :meth:`enable_wakeups` makes every
    broker tell which polled keys changed (:mod:`.wakeups`).
    """

    def __init__(
        self,
        *,
        report_ttl: float = reports.DEFAULT_TTL,
        read_oldest_age: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connections: BrokerConnections | None = None,
    ) -> None:
        self.report_ttl = report_ttl
        self.read_oldest_age = read_oldest_age
        self.connections = connections or BrokerConnections(max_connections)
        self._failing: dict[BrokerConfig, str] = {}  # the last reason, so a lasting failure is logged once
        self._problems_logged: set[str] = set()  # problems that would repeat with every poll: logged once each
        self.stalls = StallMeter()
        self.wakeups: Wakeups | None = None

    def enable_wakeups(self, handler: WakeHandler) -> Wakeups:
        """From now on, every broker polled hands the keys of its polled queues that change to ``handler``
        (a broker and the keys; :mod:`.wakeups` says how, and what it needs of the broker)."""
        self.wakeups = Wakeups(self.connections, handler)
        return self.wakeups

    async def observe(
        self,
        wanted: Mapping[BrokerConfig, Collection[str]],
        timeout: float,  # noqa: ASYNC109 (per broker)
        beats: Mapping[BrokerConfig, Collection[str]] | None = None,
        aged: Mapping[BrokerConfig, Collection[str]] | None = None,
    ) -> dict[BrokerConfig, BrokerObservation]:
        """Poll every broker in ``wanted`` for its queues, concurrently, each within ``timeout`` seconds; with
        ``beats``, also read the forecasts of those apps' beats on that broker (``QueueObservation.fires``); with
        ``aged``, the oldest message of those queues (``QueueObservation.oldest_age``)."""
        arrived = {
            config: observation async for config, observation in self.observe_as_completed(wanted, timeout, beats, aged)
        }
        return {config: arrived[config] for config in wanted}

    async def observe_as_completed(
        self,
        wanted: Mapping[BrokerConfig, Collection[str]],
        timeout: float,  # noqa: ASYNC109 (per broker)
        beats: Mapping[BrokerConfig, Collection[str]] | None = None,
        aged: Mapping[BrokerConfig, Collection[str]] | None = None,
    ) -> AsyncIterator[tuple[BrokerConfig, BrokerObservation]]:
        """Like :meth:`observe`, but yields each broker's observation as soon as it is there."""
        beats = beats or {}
        aged = aged or {}
        tasks = [
            asyncio.create_task(
                self.observe_broker(config, queues, timeout, beats.get(config, ()), aged.get(config, ())),
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
        aged: Collection[str] = (),
    ) -> tuple[BrokerConfig, BrokerObservation]:
        """One broker's poll. Never raises (except cancellation): failures are values."""
        names = tuple(dict.fromkeys(queues))
        apps = tuple(sorted(set(beat_apps)))
        oldest = tuple(sorted(set(aged))) if aged and not self.read_oldest_age else ()
        started = time.monotonic()
        self.stalls.start()
        try:
            broker = self.connections.get(config)
            plan = poll_plan(config, names, self.read_oldest_age, apps, oldest)
            redirect = self.wakeups.redirect_for(config) if self.wakeups is not None else None
            replies = await wait_responsive(broker.round_trip(plan, redirect), timeout, self.stalls)
            if broker.tracking_refused is not None and self.wakeups is not None:
                self.wakeups.refused(config, broker.tracking_refused)
                broker.tracking_refused = None
            problems: list[str] = []
            observed = read_replies(plan, replies, self.report_ttl, previous=broker.last_queues, problems=problems)
            broker.last_queues = dict(observed)  # our own copy: callers may change theirs
            self._log_problems(problems)
        except Exception as error:  # every failure of one broker becomes its observation's error
            reason = scrub(describe_failure(error, timeout), self._secrets(config))
            self._log_failure(config, reason, error)
            failed = {name: QueueObservation(queue=name, error=reason) for name in names}
            return config, BrokerObservation(queues=failed, error=reason, duration=time.monotonic() - started)
        duration = time.monotonic() - started
        self._log_success(config, len(names), duration)
        return config, BrokerObservation(queues=observed, duration=duration)

    async def forget(self, keep: Collection[BrokerConfig] = ()) -> None:
        """Close the pools of brokers not in ``keep`` (for example after a Secret changed the URL)."""
        if self.wakeups is not None:
            await self.wakeups.forget(keep)
        await self.connections.forget(keep)
        for config in [config for config in self._failing if config not in keep]:
            del self._failing[config]

    async def aclose(self) -> None:
        await self.forget()
        await self.stalls.stop()

    async def __aenter__(self) -> Observer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def max_connections(self) -> int:
        return self.connections.max_connections

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

    def _log_problems(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self._problems_logged:
                self._problems_logged.add(problem)
                log.warning("%s", problem)

    def _log_success(self, config: BrokerConfig, queues: int, duration: float) -> None:
        if self._failing.pop(config, None) is not None:
            log.info("observing %s works again", config.redacted_url)
        log.debug("observed %d queues on %s in %.1f ms", queues, config.redacted_url, duration * 1000)
