"""Leader election through a ``coordination.k8s.io/v1`` Lease: of all the operator's replicas, one writes.

The loop is client-go's, on the same primitives: every ``retry_period`` a candidate reads the Lease; the holder
renews it (a patch conditional on the ``resourceVersion`` it read, so two writers can never both succeed); another
candidate takes it over once it has seen no renewal for the Lease's duration, measured on its own monotonic
clock from when it *observed* the last change (so no two machines' clocks are compared).

The holder stops writing before anyone else may start: it counts itself leader only until ``renew_deadline``
after the start of its last successful renewal, and ``renew_deadline < lease_duration``; a standby takes over no
earlier than ``lease_duration`` after that renewal. The difference (2 s by default) is the margin for the writes
already on the wire and for clocks that run at slightly different rates. On a clean shutdown the holder releases
the Lease, so a rolling update hands over within one ``retry_period``.

Why not the official client's ``kubernetes.leaderelection``: it runs in threads of its own and blocks, uses the
client's global default configuration, gives up for good after losing the Lease once, and never releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from workerpool_operator.kube import metrics
from workerpool_operator.kube.api import ApiError, KubeApi

logger = logging.getLogger(__name__)


class Alone:
    """No election (``run --standalone``): this replica always writes."""

    def holds(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 8.0  # a standby takes over after seeing no renewal for this long
    renew_deadline: float = 6.0  # the holder stops writing this long after its last successful renewal began
    retry_period: float = 2.0  # between two attempts to acquire or renew

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period:g} s, {self.renew_deadline:g} s, {self.lease_duration:g} s"
            )


def micro_time(timestamp: float) -> str:
    """A Lease time (``MicroTime``): RFC 3339 with microseconds, UTC."""
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Runs the election; ``on_started`` / ``on_stopped`` are awaited when this replica gains or loses the Lease."""

    def __init__(
        self,
        api: KubeApi,
        config: LeaseConfig,
        *,
        on_started: Callable[[], Awaitable[None]],
        on_stopped: Callable[[], Awaitable[None]],
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self.config = config
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._monotonic = monotonic
        self._wall = wall
        self._leading = False
        self._renewed_at = 0.0  # monotonic start of the last successful acquire or renew
        self._observed: tuple[Any, ...] | None = None  # the other holder's record as last seen
        self._observed_at = 0.0
        self._failure = ""  # the last failure logged, so a repeated one is logged once
        self.transitions = 0  # times this replica became leader

    def holds(self) -> bool:
        return self._leading and self._monotonic() < self._renewed_at + self.config.renew_deadline

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire and renew until ``stop`` is set; then step down and release the Lease."""
        try:
            while not stop.is_set():
                await self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.config.retry_period)
        finally:
            if self._leading:
                await self._step_down("shutting down")
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._release)

    async def step(self) -> None:
        """One attempt to acquire or renew."""
        started = self._monotonic()
        try:
            acquired = await asyncio.to_thread(self._try_acquire_or_renew)
        except Exception as exc:
            acquired = False
            self._log_failure(f"cannot read or write the Lease {self._where}: {exc}")
        if acquired:
            self._failure = ""
            self._renewed_at = started
            if not self._leading:
                self._leading = True
                self.transitions += 1
                metrics.set_leader(True)
                logger.info(
                    "became the leader (Lease %s, as %s): scaling and writing", self._where, self.config.identity
                )
                await self._on_started()
        elif self._leading and self._monotonic() >= self._renewed_at + self.config.renew_deadline:
            await self._step_down(f"could not renew the Lease for {self.config.renew_deadline:g} s")

    @property
    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"

    async def _step_down(self, why: str) -> None:
        self._leading = False  # the fence first: nothing is written from here on
        metrics.set_leader(False)
        logger.warning("no longer the leader (%s): scaling and writing stop", why)
        await self._on_stopped()

    def _log_failure(self, message: str) -> None:
        if message != self._failure:
            logger.warning("%s; retrying every %g s", message, self.config.retry_period)
            self._failure = message

    def _try_acquire_or_renew(self) -> bool:
        config, timeout = self.config, self.config.renew_deadline - self.config.retry_period
        lease = self._api.get_lease(config.namespace, config.name, timeout=timeout)
        now = micro_time(self._wall())
        if lease is None:
            spec = self._spec(acquired=now, renewed=now, transitions=0)
            return self._write(lambda: self._api.create_lease(config.namespace, config.name, spec, timeout=timeout))
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder and holder != config.identity:
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            if record != self._observed:
                if self._observed is None or self._observed[0] != holder:
                    logger.info("standby: the Lease %s is held by %s", self._where, holder)
                self._observed, self._observed_at = record, self._monotonic()
            duration = float(spec.get("leaseDurationSeconds") or config.lease_duration)
            if self._monotonic() < self._observed_at + duration:
                return False  # held, and renewed within its duration
            logger.info("the Lease %s held by %s expired: taking it over", self._where, holder)
        if holder == config.identity:
            new = self._spec(acquired=spec.get("acquireTime") or now, renewed=now, transitions=transitions)
        else:
            new = self._spec(acquired=now, renewed=now, transitions=transitions + 1)
        return self._write(lambda: self._api.update_lease(lease, new, timeout=timeout))

    def _spec(self, *, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_duration)),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }

    @staticmethod
    def _write(call: Callable[[], object]) -> bool:
        try:
            call()
        except ApiError as exc:
            if exc.status == 409:  # someone else wrote it first (created, renewed or took it over)
                return False
            raise
        return True

    def _release(self) -> None:
        """Give the Lease up (holder cleared), so a standby takes over at its next attempt."""
        config = self.config
        lease = self._api.get_lease(config.namespace, config.name, timeout=config.retry_period)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != config.identity:
            return
        spec = {
            **lease["spec"],
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "renewTime": micro_time(self._wall()),
        }
        self._write(lambda: self._api.update_lease(lease, spec, timeout=config.retry_period))
        logger.info("released the Lease %s", self._where)
