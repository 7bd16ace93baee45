"""Serving WorkerPools: each pool's plan, its problem if any, its retries, and its place in the scaling loop.

Every replica plans every pool from the watch (spec parsed, Secrets read, Deployments rendered), so a standby is
warm. The replica that may write (it holds the Lease, or runs alone) also applies the plans, keeps the pools in
the scaling loop, reports their polls and retries what failed. Losing the Lease takes every pool out of the loop.

No finalizer: a pool's Deployments carry its owner reference, so the garbage collector removes them with it,
operator running or not. (The first release's finalizer is removed from pools that still carry it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workerpool_operator.engine import ScalingPolicy
from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube.api import KubeApi, int_or_none
from workerpool_operator.kube.beats import duplicate_beats
from workerpool_operator.kube.components import BEAT
from workerpool_operator.kube.events import EventSink
from workerpool_operator.kube.plan import PlanError, PoolPlan, parse, plan, secrets_named
from workerpool_operator.kube.reconcile import ApplyError, Reconciler
from workerpool_operator.kube.reporter import StatusReporter
from workerpool_operator.kube.secrets import SecretReader
from workerpool_operator.kube.workers_watch import WorkersWatch
from workerpool_operator.scaling_loop import ScalingLoop
from workerpool_operator.scaling_types import PoolKey, PoolResult

logger = logging.getLogger(__name__)

LEGACY_FINALIZER = "workerpool.dev/finalizer"  # kopf's, from the first release's per-pool daemon
# Pools planned and applied at once from the watch. kopf hands every pool's event to a worker of its own: at
# start-up all of them at once, and with no bound every pool's dozen API calls interleaved with every other's, so
# the first pool was done about when the last was (at 10,000 pools, 40 Ready after 15 minutes on the bench). Twice
# as many as 8, with as many threads for the API calls (api.API_THREADS): each pool's calls wait on the network.
APPLIES_AT_ONCE = 16
REPORTS_BETWEEN_YIELDS = 50  # pools reported in one slice of the event loop (about 10 ms at 10,000 pools)


@dataclass
class PoolRecord:
    """One WorkerPool as this replica knows it."""

    key: PoolKey
    body: Mapping[str, Any]  # what the operator reads of the object the watch last delivered (essentials())
    plan: PoolPlan | None = None  # the last plan that could be made
    problem: cond.Problem | None = None  # why the pool is not served as its spec says
    retry_at: float | None = None  # when to plan (and apply) it again
    secrets_read_at: float = 0.0
    planned_generation: int | None = None  # the generation last planned, whether that worked or not
    beat_duplicates: tuple[str, ...] = ()  # other pools of the namespace running beat for the same app and broker
    _label: tuple[PoolPlan, str] | None = field(default=None, repr=False, compare=False)  # broker_label, per plan

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.body.get("metadata") or {}

    @property
    def uid(self) -> str | None:
        return self.meta.get("uid")

    @property
    def generation(self) -> int | None:
        return int_or_none(self.meta.get("generation"))

    @property
    def never_applied(self) -> bool:
        """Generation 1 and no ``observedGeneration``: its spec never changed and no operator wrote its status, so
        nothing was ever rendered from another spec (reconcile.py: no read before each creation, nothing to list)."""
        return self.generation == 1 and "observedGeneration" not in (self.body.get("status") or {})

    @property
    def queue_names(self) -> list[str]:
        return self.plan.queue_names if self.plan is not None else []

    @property
    def broker_label(self) -> str:
        """The broker's URL without its password (read at every poll: redacting it anew each time cost more than
        the rest of a quiet pool's report)."""
        if self.plan is None:
            return ""
        if self._label is None or self._label[0] is not self.plan:
            self._label = (self.plan, self.plan.broker.redacted_url)
        return self._label[1]

    def bounds(self, queue: str) -> tuple[int, int] | None:
        return self.plan.bounds(queue) if self.plan is not None and queue in self.plan.queues else None

    def policy(self, queue: str) -> ScalingPolicy | None:
        return self.plan.queues[queue].policy if self.plan is not None and queue in self.plan.queues else None

    @property
    def versions(self) -> Mapping[str, int]:
        return self.plan.versions if self.plan is not None else {}

    @property
    def beat_deployment(self) -> str | None:
        return self.plan.component_name(BEAT) if self.plan is not None else None

    @property
    def targets(self) -> Mapping[str, str]:
        return self.plan.targets if self.plan is not None else {}

    @property
    def shared_queues(self) -> Mapping[str, tuple[str, ...]]:
        return self.plan.shared if self.plan is not None else {}

    def shadow(self, queue: str) -> bool:
        return self.plan is not None and self.plan.shadow(queue)

    def drains(self, queue: str) -> bool:
        return self.plan is None or queue not in self.plan.queues or self.plan.queues[queue].policy.drain_timeout > 0


_KEPT_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "finalizers", "deletionTimestamp")


def essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a WorkerPool object a record keeps: the spec, the metadata the operator reads and the
    observed generation. Not managedFields, annotations or the rest of the status (the status reporter keeps
    what it needs): a real API server's object is twice the size of these (docs/benchmarks.md)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    kept: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {field: meta[field] for field in _KEPT_METADATA if field in meta},
        "spec": body.get("spec"),
    }
    if "observedGeneration" in status:
        kept["status"] = {"observedGeneration": status["observedGeneration"]}
    return kept


class PoolService:
    """Keeps every pool planned, and the served ones applied, scaled, reported and retried."""

    def __init__(
        self,
        *,
        api: KubeApi,
        loop: ScalingLoop,
        reconciler: Reconciler,
        reporter: StatusReporter,
        secrets: SecretReader,
        events: EventSink,
        may_write: Callable[[], bool],
        clock: Callable[[], float] = time.time,
        retry_delay: float = 10.0,
        watch: WorkersWatch | None = None,
    ) -> None:
        self._api, self._loop, self._reconciler = api, loop, reconciler
        self._watch = watch  # rollouts, busy pods' protection, lost workers (None: none of that)
        self._reporter, self._secrets, self._events = reporter, secrets, events
        self._may_write, self._clock, self.retry_delay = may_write, clock, retry_delay
        self.records: dict[PoolKey, PoolRecord] = {}
        self._namespaces: dict[str, set[PoolKey]] = {}  # the records' keys by namespace (check_beats: no scan of all)
        self._reports = 0  # results reported: the loop is yielded to every REPORTS_BETWEEN_YIELDS
        self._applying = asyncio.Semaphore(APPLIES_AT_ONCE)

    # --- the watch, on every replica ---------------------------------------------------------------------

    async def pool_changed(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: PoolKey = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.forget(key)
            await self.check_beats(key[0])
            return
        kept = essentials(body)
        record = self.records.get(key)
        if record is None or record.uid != meta.get("uid"):
            record = self.records[key] = PoolRecord(key, kept)
            self._namespaces.setdefault(key[0], set()).add(key)
        record.body = kept
        self._reporter.seen(key, body.get("status"))
        if LEGACY_FINALIZER in (meta.get("finalizers") or ()) and self._may_write():
            await self._drop_legacy_finalizer(record)
        if meta.get("deletionTimestamp"):
            return  # going: its Deployments go with it
        if record.planned_generation == record.generation:
            return  # nothing a plan depends on changed (a status update); Secrets are the retry loop's
        async with self._applying:  # a few pools at a time, each done before the next starts (APPLIES_AT_ONCE)
            if self.records.get(key) is not record or record.planned_generation == record.generation:
                return  # deleted, or planned by a later event, while this one waited
            await self.refresh(record, apply=True)
        await self.check_beats(key[0])

    def plan_of(self, key: PoolKey) -> PoolPlan | None:
        """The plan a served pool is scaled by (for drift repair)."""
        record = self.records.get(key)
        return record.plan if record is not None and record.problem is None else None

    def forget(self, key: PoolKey) -> None:
        """The pool is gone (the Deployments it rendered go with it, by owner reference; those it only scaled stay
        as they are)."""
        self._loop.unregister(key)
        self._reconciler.forget(key)
        if self._watch is not None:
            self._watch.forget(key)
        record = self.records.pop(key, None)
        same = self._namespaces.get(key[0], set())
        same.discard(key)
        if not same:
            self._namespaces.pop(key[0], None)
        self._reporter.forget_pool(key, record.queue_names if record else ())

    async def check_beats(self, namespace: str) -> None:
        """Flag the pools of ``namespace`` that run beat for the same app on the same broker (status, and a Warning
        Event when that starts), and clear the flag of those that no longer do."""
        keys = sorted(self._namespaces.get(namespace, ()))
        records = {key: self.records[key] for key in keys if key in self.records}
        found = duplicate_beats({key: r.plan.beat_identity if r.plan else None for key, r in records.items()})
        for key, others in found.items():
            record = records[key]
            if others == record.beat_duplicates:
                continue
            record.beat_duplicates = others
            if self._may_write():
                if others:
                    message = f"WorkerPool {', '.join(others)} also runs beat for this app on this broker"
                    await self._events(key, record.uid, "Warning", cond.REASON_DUPLICATE_BEAT, message)
                await self._reporter.write(record)

    # --- planning and applying -------------------------------------------------------------------------------

    async def refresh(self, record: PoolRecord, *, apply: bool) -> None:
        """Plan the pool again (spec and Secrets); with ``apply``, and when this replica writes, apply it too."""
        previous = record.plan
        record.planned_generation = record.generation
        try:
            pool = parse(record.body)
            secrets = await self._secrets.read(record.key[0], secrets_named(pool))
            record.plan = plan(record.body, secrets)
        except PlanError as exc:
            await self._set_problem(record, exc.problem, retry=exc.retry)
            return
        record.secrets_read_at = self._clock()
        if not self._may_write():
            return
        if apply or record.problem is not None:
            await self._apply(record)
        elif previous is not None and previous.broker != record.plan.broker:
            self._serve(record)
            message = f"the broker Secret now says {record.plan.broker.redacted_url}"
            await self._events(record.key, record.uid, "Normal", "BrokerChanged", message)

    async def _apply(self, record: PoolRecord) -> None:
        assert record.plan is not None
        fresh = record.never_applied
        try:
            removed = await self._reconciler.apply(record.plan, fresh=fresh)
        except ApplyError as exc:
            await self._set_problem(record, exc.problem, retry=True)
            return
        except Exception as exc:  # the API server's trouble, not the user's: try again soon
            logger.warning("%s/%s: applying the plan failed, retrying in %g s: %s", *record.key, self.retry_delay, exc)
            record.retry_at = self._clock() + self.retry_delay
            return
        self._reporter.forget_queues(record.key, removed)
        self._serve(record)
        record.retry_at = None
        problem, record.problem = record.problem, None
        if problem is not None:
            await self._events(
                record.key, record.uid, "Normal", "Resolved", f"{problem.reason} resolved: scaling again"
            )
        # A new pool's first status is its first poll's report, due at once (ScalingLoop.register): a write here
        # would say only "not observed yet", and, still on its way when that report came, hold the report's back
        # for a poll interval (StatusReporter.write). At 10,000 new pools: a write and its watch event less a pool.
        if not fresh or problem is not None:
            await self._reporter.write(record)

    def _serve(self, record: PoolRecord) -> None:
        """Put the pool in the scaling loop; a pool not there yet starts from the engine state in its status."""
        assert record.plan is not None
        self._reconciler.adopt(record.plan)
        queues = record.plan.queue_names
        fresh = not self._loop.states(record.key)  # (registered() would list every pool: once per pool served)
        states = self._reporter.persisted_states(record.key, queues) if fresh else None
        self._loop.register(record.key, record.plan.broker, record.plan.queues, states, record.plan.beat_app)

    async def _set_problem(self, record: PoolRecord, problem: cond.Problem, *, retry: bool) -> None:
        """Stop scaling the pool (its Deployments stay as they are) and say why, once."""
        self._loop.unregister(record.key)
        record.retry_at = self._clock() + self.retry_delay if retry else None
        if record.problem != problem:
            await self._events(record.key, record.uid, "Warning", problem.reason, problem.message)
        record.problem = problem
        await self._reporter.write(record)

    async def _drop_legacy_finalizer(self, record: PoolRecord) -> None:
        meta = record.meta
        rest = [f for f in meta.get("finalizers") or () if f != LEGACY_FINALIZER]
        try:
            await asyncio.to_thread(self._api.set_pool_finalizers, *record.key, rest, str(meta.get("resourceVersion")))
            logger.info("%s/%s: removed the finalizer %s (no longer used)", *record.key, LEGACY_FINALIZER)
        except Exception as exc:  # a newer version of the pool comes with the next event: tried again then
            logger.info("%s/%s: removing the finalizer %s failed: %s", *record.key, LEGACY_FINALIZER, exc)

    # --- leadership ------------------------------------------------------------------------------------------

    async def start_writing(self) -> None:
        """This replica may write now: scale every planned pool at once, then apply what the last writer did not
        (a spec it did not see through, or a problem to retry)."""
        pending = []
        for record in list(self.records.values()):
            observed = int_or_none((record.body.get("status") or {}).get("observedGeneration"))
            if record.plan is not None and record.problem is None and observed == record.plan.generation:
                self._serve(record)
            else:
                pending.append(record)
        for record in pending:
            if record.plan is not None and record.problem is None:
                await self._apply(record)
            else:
                record.retry_at = self._clock()  # planned again by the retry loop, now

    async def stop_writing(self) -> None:
        """This replica must not write any more: every pool leaves the scaling loop."""
        for key in self._loop.registered():
            self._loop.unregister(key)

    async def report(self, result: PoolResult) -> None:
        """The scaling loop's result handler. The loop hands it every pool's result in turn, and reporting one
        rarely waits for anything: every REPORTS_BETWEEN_YIELDS results it lets the event loop run the rest
        (watch events, the Lease), so 10,000 pools' reports are many short slices rather than one long stall."""
        self._reports += 1
        if self._reports % REPORTS_BETWEEN_YIELDS == 0:
            await asyncio.sleep(0)
        record = self.records.get(result.pool)
        if record is not None and self._may_write():
            await self._reporter.report(result, record, wait=False)
            if self._watch is not None:
                await self._watch.observe(result, record)

    # --- retries, on the replica that writes ---------------------------------------------------------------

    async def run_retries(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Plan again, every second, the pools whose problem may be fixed by now (Secrets are read, never
        watched), and the served pools whose Secrets are due for a re-read (a rotated broker URL)."""
        while not stop.is_set():
            if self._may_write():
                await self.retry_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def retry_due(self) -> None:
        now = self._clock()
        for record in list(self.records.values()):
            retry = record.retry_at is not None and record.retry_at <= now
            recheck = record.plan is not None and record.plan.uses_secrets and record.problem is None
            if not retry and not (recheck and self._secrets.due(record.secrets_read_at, now)):
                continue
            try:
                await self.refresh(record, apply=retry)
            except Exception as exc:
                logger.warning("%s/%s: retry failed: %s", *record.key, exc)
                record.retry_at = now + self.retry_delay
