"""What the operator does, apart from kopf: reconcile a WorkerPool, report each poll, repair drift.

The kopf handlers (``handlers.py``) stay thin and call :class:`PoolOperator`. State kept here, per pool:
the Deployments last rendered (to spot drift), the last status written (to write only changes), and
the problem that stops the pool from being served, if any. A pool is scaled only while it is *served*:
while its kopf daemon runs (:meth:`PoolOperator.serve` / :meth:`PoolOperator.unserve`), which kopf stops
when a peer with a higher priority pauses this operator, when the pool is deleted, and on exit. Nothing
here blocks the event loop: API calls go through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workerpool_operator import API_GROUP, API_VERSION, PLURAL
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.engine import QueueState
from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube import metrics
from workerpool_operator.kube.backend import ApiError, KubeApi, KubeBackend, pool_reference
from workerpool_operator.kube.render import (
    POOL_LABEL,
    QUEUE_ANNOTATION,
    deployment_name,
    last_applied,
    overlay,
    removals,
    render_deployments,
)
from workerpool_operator.kube.status import QueueFigures, build_status, merge_patch, write_needed
from workerpool_operator.scaling_loop import PoolKey, PoolResult, QueuePlan, ScalingLoop
from workerpool_operator.spec import SpecError, WorkerPool

logger = logging.getLogger(__name__)

STATUS_REFRESH_ENV = "WORKERPOOL_OPERATOR_STATUS_REFRESH"
RETRY_ENV = "WORKERPOOL_OPERATOR_RETRY_DELAY"
SECRET_RECHECK_ENV = "WORKERPOOL_OPERATOR_SECRET_RECHECK"


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, not {value}")
    return value


class PoolNotServed(Exception):
    """The pool cannot be served now for a reason the user can fix (a Secret, the URL): retry later."""

    def __init__(self, problem: cond.Problem, retry: bool = True) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.retry = retry


@dataclass
class PoolRecord:
    key: PoolKey
    uid: str | None = None
    generation: int | None = None
    queue_names: list[str] = field(default_factory=list)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # queue -> Deployment rendered
    min_replicas: dict[str, int] = field(default_factory=dict)
    problem: cond.Problem | None = None
    broker_error: str | None = None
    observed: bool = False
    written: dict[str, Any] | None = None  # the status as last written (or read)
    written_at: float = 0.0
    body: Mapping[str, Any] | None = None  # the object as last reconciled, to retry with
    retry_at: float | None = None  # when to try again a pool that could not be served
    broker_label: str = ""
    broker: BrokerConfig | None = None
    plans: dict[str, QueuePlan] = field(default_factory=dict)
    uses_secrets: bool = False
    checked_at: float = 0.0  # when its Secrets were last read
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PoolOperator:
    """Reconciles pools, reports polls, repairs drift. One per running operator."""

    def __init__(self, api: KubeApi, *, clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.backend = KubeBackend(api)
        self.loop: ScalingLoop | None = None  # set by the wiring once the loop exists
        self.records: dict[PoolKey, PoolRecord] = {}
        self._clock = clock
        self.status_refresh = _env_seconds(STATUS_REFRESH_ENV, 30.0)
        self.retry_delay = _env_seconds(RETRY_ENV, 10.0)
        self.secret_recheck = _env_seconds(SECRET_RECHECK_ENV, 300.0)
        self._last_poll: dict[str, float] = {}
        self.served: set[PoolKey] = set()  # pools whose kopf daemon runs: this operator acts on them now

    def record(self, key: PoolKey) -> PoolRecord:
        found = self.records.get(key)
        if found is None:
            found = self.records[key] = PoolRecord(key)
        return found

    # --- reconcile -----------------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        """Bring the pool's Deployments, scaling registration and status in line with its spec.

        Raises :class:`PoolNotServed` when the user must fix something (status and Event are set first).
        """
        meta = body.get("metadata") or {}
        key: PoolKey = (str(meta.get("namespace")), str(meta.get("name")))
        record = self.record(key)
        record.body = body
        record.retry_at = None
        record.uid = meta.get("uid")
        record.generation = meta.get("generation")
        if record.written is None:
            record.written = dict(body.get("status") or {}) or None
            record.written_at = self._clock()
        try:
            pool = WorkerPool.from_object(body)
        except SpecError as exc:
            await self._not_served(record, cond.Problem(cond.REASON_INVALID_SPEC, str(exc)), [])
            raise PoolNotServed(cond.Problem(cond.REASON_INVALID_SPEC, str(exc)), retry=False) from None
        queue_names = [q.name for q in pool.spec.queues]
        try:
            broker = await self._resolve_broker(key[0], pool)
        except PoolNotServed as exc:
            await self._not_served(record, exc.problem, queue_names)
            record.retry_at = self._clock() + self.retry_delay
            raise
        record.broker_label = broker.redacted_url
        record.broker = broker
        record.uses_secrets = pool.spec.broker.url_from is not None or pool.spec.broker.ca_from is not None
        record.checked_at = self._clock()

        # Deployments: one per queue; the replica count stays the scaler's (brought inside new bounds only).
        policies = {name: pool.spec.policy_for(name) for name in queue_names}
        manifests = render_deployments(pool, uid=str(record.uid))
        names = {queue: manifest["metadata"]["name"] for queue, manifest in manifests.items()}
        removed = set(record.manifests) - set(queue_names)
        record.manifests = manifests
        record.queue_names = queue_names
        record.min_replicas = {name: policy.min_replicas for name, policy in policies.items()}
        self.backend.set_names(key, names)
        for queue, manifest in manifests.items():
            try:
                await self._apply(key, queue, manifest, policies[queue].min_replicas, policies[queue].max_replicas)
            except ApiError as exc:
                if exc.status not in (400, 403, 422):
                    raise  # the API server's trouble, not the user's: kopf retries
                message = f"queue {queue}: the API server refused its Deployment: {exc.message}"
                problem = cond.Problem(cond.REASON_APPLY_FAILED, message)
                await self._not_served(record, problem, queue_names)
                record.retry_at = self._clock() + self.retry_delay
                raise PoolNotServed(problem) from None
        await self._delete_removed(key, set(names.values()))
        for queue in removed:
            metrics.forget_queue(key[0], key[1], queue)

        record.plans = {name: QueuePlan(policies[name], pool.spec.poll_interval_for(name)) for name in queue_names}
        if key in self.served:
            self._register(record)
        was_problem = record.problem
        record.problem = None
        if was_problem is not None:
            await self._event(record, "Normal", "Resolved", f"{was_problem.reason} resolved: scaling again")
        await self.write_status(record)

    def _register(self, record: PoolRecord) -> None:
        """Put the pool in the scaling loop; a pool not there yet starts from its persisted scaling state."""
        if self.loop is None or record.broker is None:
            return
        states = None if record.key in self.loop.registered() else self._persisted_states(record)
        self.loop.register(record.key, record.broker, record.plans, states)

    def serve(self, key: PoolKey, status: Mapping[str, Any]) -> None:
        """This operator serves the pool from now on (its kopf daemon started). ``status`` is the pool's
        status as kopf last saw it: when the pool was not in the scaling loop (start-up, or the end of a
        pause during which another operator may have scaled it), scaling resumes from its ``scalerState``."""
        self.served.add(key)
        logger.info("%s/%s: served by this operator", *key)
        record = self.records.get(key)
        if record is None or record.problem is not None or not record.plans:
            return  # not reconciled yet (reconcile registers it) or not servable (retried, now served)
        if self.loop is not None and key not in self.loop.registered() and status:
            record.written = dict(status)
        self._register(record)

    def unserve(self, key: PoolKey) -> None:
        """This operator no longer serves the pool (paused by a peer, pool deleted, or exiting): stop
        scaling it and writing about it. Its scaling state is in its status already."""
        self.served.discard(key)
        if self.loop is not None:
            self.loop.unregister(key)
        logger.info("%s/%s: no longer served by this operator", *key)

    async def retry_due(self) -> None:
        """Reconcile again every served pool whose problem may have been fixed meanwhile (a Secret created
        or completed: Secrets are only read, never watched)."""
        now = self._clock()
        for record in list(self.records.values()):
            if record.retry_at is None or record.retry_at > now or record.body is None:
                continue
            if record.key not in self.served:
                continue  # paused by a peer: retried once served again
            try:
                await self.reconcile(record.body)
            except PoolNotServed:
                pass  # status and Event say why; retried again later
            except Exception as exc:
                logger.warning("%s/%s: retry failed: %s", *record.key, exc)
                record.retry_at = now + self.retry_delay

    async def recheck_secrets(self) -> None:
        """Read again, now and then, the Secrets of the pools being served: a rotated broker URL is picked up
        (and a Secret deleted since is reported) without a restart. Secrets are read by name, never watched."""
        now = self._clock()
        for record in list(self.records.values()):
            if record.problem is not None or not record.uses_secrets or record.body is None:
                continue
            if record.key not in self.served:
                continue
            if now - record.checked_at < self.secret_recheck:
                continue
            record.checked_at = now
            try:
                broker = await self._resolve_broker(record.key[0], WorkerPool.from_object(record.body))
            except PoolNotServed as exc:
                await self._not_served(record, exc.problem, record.queue_names)
                record.retry_at = now + self.retry_delay
                continue
            except Exception as exc:
                logger.warning("%s/%s: re-reading the broker Secret failed: %s", *record.key, exc)
                continue
            if broker != record.broker and self.loop is not None and record.key in self.loop.registered():
                record.broker, record.broker_label = broker, broker.redacted_url
                self.loop.register(record.key, broker, record.plans)
                await self._event(
                    record, "Normal", "BrokerChanged", f"the broker Secret now says {broker.redacted_url}"
                )

    async def run_retries(self, stop: asyncio.Event, every: float = 1.0) -> None:
        while not stop.is_set():
            await self.retry_due()
            await self.recheck_secrets()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    def _persisted_states(self, record: PoolRecord) -> dict[str, QueueState]:
        saved = (record.written or {}).get("scalerState") or {}
        states: dict[str, QueueState] = {}
        for queue, data in saved.items():
            if queue not in record.queue_names:
                continue
            try:
                states[queue] = QueueState.from_dict(data)
            except ValueError as exc:  # someone edited status by hand: start fresh, conservatively
                logger.warning("%s/%s: ignoring the saved scaling state of %s: %s", *record.key, queue, exc)
        return states

    async def _resolve_broker(self, namespace: str, pool: WorkerPool) -> BrokerConfig:
        broker = pool.spec.broker
        url = broker.url
        if broker.url_from is not None:
            url = await self._secret_value(namespace, broker.url_from.name, broker.url_from.key)
        ca_pem = None
        if broker.ca_from is not None:
            ca_pem = await self._secret_value(namespace, broker.ca_from.name, broker.ca_from.key)
        if not url:
            raise PoolNotServed(cond.Problem(cond.REASON_INVALID_BROKER_URL, "the broker URL is empty"))
        try:
            return broker.to_config(url, ca_pem)
        except (SpecError, ValueError) as exc:
            raise PoolNotServed(cond.Problem(cond.REASON_INVALID_BROKER_URL, f"invalid broker URL: {exc}")) from None

    async def _secret_value(self, namespace: str, name: str, key: str) -> str:
        try:
            data = await asyncio.to_thread(self.api.read_secret, namespace, name)
        except ApiError as exc:
            raise PoolNotServed(
                cond.Problem(cond.REASON_SECRET_NOT_FOUND, f"cannot read Secret {namespace}/{name}: {exc.message}")
            ) from None
        if data is None:
            raise PoolNotServed(cond.Problem(cond.REASON_SECRET_NOT_FOUND, f"Secret {namespace}/{name} not found"))
        if key not in data:
            raise PoolNotServed(
                cond.Problem(cond.REASON_SECRET_KEY_NOT_FOUND, f"Secret {namespace}/{name} has no key {key!r}")
            )
        try:
            return data[key].decode().strip()
        except UnicodeDecodeError:
            raise PoolNotServed(
                cond.Problem(cond.REASON_INVALID_BROKER_URL, f"Secret {namespace}/{name} key {key!r} is not text")
            ) from None

    async def _not_served(self, record: PoolRecord, problem: cond.Problem, queue_names: list[str]) -> None:
        """Stop scaling the pool (its Deployments stay as they are), say why, once."""
        if self.loop is not None:
            self.loop.unregister(record.key)
        if queue_names:
            record.queue_names = queue_names
        if record.problem != problem:
            await self._event(record, "Warning", problem.reason, problem.message)
        record.problem = problem
        await self.write_status(record)

    async def _apply(self, key: PoolKey, queue: str, manifest: dict[str, Any], low: int, high: int) -> None:
        """Create or update one Deployment: the manifest, minus what the last one had and this one dropped,
        with the replica count left to the scaler (set only on creation or to fit new bounds)."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        live = await asyncio.to_thread(self.api.get_deployment, namespace, name)
        body: dict[str, Any] = manifest
        current: int | None = None
        if live is not None:
            self.backend.observe_deployment(live)
            current = int((live.get("spec") or {}).get("replicas", 1))
            previous = last_applied(live)
            if previous is not None:
                body = overlay(manifest, removals(previous, manifest))
        wanted = low if current is None else min(max(current, low), high)
        if wanted != current:
            body = overlay(body, {"spec": {"replicas": wanted}})
        applied = await asyncio.to_thread(self.api.apply_deployment, body)
        self.backend.observe_deployment(applied)

    async def _delete_removed(self, key: PoolKey, keep: set[str]) -> None:
        owned = await asyncio.to_thread(self.api.list_deployments, key[0], f"{POOL_LABEL}={key[1]}")
        for deployment in owned:
            meta = deployment.get("metadata") or {}
            if (meta.get("labels") or {}).get(POOL_LABEL) != key[1] or meta.get("name") in keep:
                continue
            await asyncio.to_thread(self.api.delete_deployment, key[0], str(meta.get("name")))
            self.backend.observe_deployment(deployment, deleted=True)
            queue = (meta.get("annotations") or {}).get(QUEUE_ANNOTATION, meta.get("name"))
            await self._event(self.record(key), "Normal", "QueueRemoved", f"queue {queue}: Deployment deleted")

    def forget(self, key: PoolKey) -> None:
        """The pool is gone (its Deployments go with it, by owner reference)."""
        if self.loop is not None:
            self.loop.unregister(key)
        self.served.discard(key)
        record = self.records.pop(key, None)
        self.backend.forget(key)
        metrics.forget_pool(key[0], key[1], record.queue_names if record else ())

    # --- drift ---------------------------------------------------------------------------------------

    async def deployment_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """A Deployment with our pool label changed or vanished: keep the cache, put back what we own."""
        meta = obj.get("metadata") or {}
        deleted = event_type == "DELETED"
        before = self.backend.cached(str(meta.get("namespace")), str(meta.get("name")))
        version = _int_or_none(meta.get("resourceVersion"))
        if not deleted and before and before.version and version and version < before.version:
            return  # an old event: we already know a newer version of this Deployment
        self.backend.observe_deployment(obj, deleted=deleted)
        key: PoolKey = (str(meta.get("namespace")), str((meta.get("labels") or {}).get(POOL_LABEL)))
        record = self.records.get(key)
        if record is None or record.problem is not None:
            return
        manifest = next((m for m in record.manifests.values() if m["metadata"]["name"] == meta.get("name")), None)
        if manifest is None:
            return
        if deleted:
            if not await self._pool_still_there(record):
                return
            queue = manifest["metadata"]["annotations"][QUEUE_ANNOTATION]
            replicas = before.replicas if before is not None else record.min_replicas.get(queue, 0)
            body = {**manifest, "spec": {**manifest["spec"], "replicas": replicas}}
            restored = await asyncio.to_thread(self.api.apply_deployment, body)
            self.backend.observe_deployment(restored)
            await self._event(
                record, "Warning", "DeploymentRestored", f"queue {queue}: Deployment deleted by hand, recreated"
            )
        elif not contains(obj, manifest):
            queue = manifest["metadata"]["annotations"][QUEUE_ANNOTATION]
            restored = await asyncio.to_thread(self.api.apply_deployment, manifest)
            self.backend.observe_deployment(restored)
            await self._event(record, "Warning", "DeploymentRestored", f"queue {queue}: manual edit reverted")

    async def _pool_still_there(self, record: PoolRecord) -> bool:
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{record.key[0]}/{PLURAL}/{record.key[1]}"
        try:
            live = await asyncio.to_thread(self.api.request, "GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        meta = live.get("metadata") or {}
        return bool(meta.get("uid") == record.uid and not meta.get("deletionTimestamp"))

    # --- reporting -----------------------------------------------------------------------------------

    async def report(self, result: PoolResult) -> None:
        """The scaling loop's reporter: metrics always; Events on scale decisions and on errors; status
        when something a user cares about changed."""
        record = self.records.get(result.pool)
        if record is None or result.pool not in self.served:
            return  # unregistered during the tick (paused or deleted): a paused operator writes nothing
        namespace, name = result.pool
        if self._last_poll.get(record.broker_label) != result.observed_at:
            self._last_poll[record.broker_label] = result.observed_at
            metrics.record_poll(record.broker_label, result.poll_duration)
        if result.broker_error is not None:
            metrics.record_observation_error(namespace, name)
        if result.broker_error != record.broker_error:
            if result.broker_error is not None:
                await self._event(
                    record,
                    "Warning",
                    cond.REASON_REDIS_UNREACHABLE,
                    f"cannot observe the broker: {result.broker_error}; replicas are held",
                )
            elif record.broker_error is not None:
                await self._event(record, "Normal", "BrokerReachable", "the broker answers again")
        record.broker_error = result.broker_error
        record.observed = True

        figures: dict[str, QueueFigures] = {}
        states: dict[str, dict[str, Any]] = {}
        for queue in result.queues:
            obs, decision = queue.observation, queue.decision
            current = obs.replicas if decision is not None else None
            desired = decision.desired_replicas if decision is not None else None
            scaled = queue.scaled_from is not None and queue.scale_error is None and decision is not None
            replicas = desired if scaled else current
            deployment = self.backend.deployment_name(result.pool, queue.queue)
            cached = self.backend.cached(namespace, deployment) if deployment else None
            plan = record.plans.get(queue.queue)
            metrics.record_queue(
                namespace,
                name,
                queue.queue,
                backlog=obs.backlog if obs.ok else None,
                in_flight=obs.in_flight if obs.ok else None,
                replicas=replicas,
                desired=desired,
                ready=cached.ready if cached is not None else None,
                draining=len(queue.state.draining),
                min_replicas=plan.policy.min_replicas if plan else None,
                max_replicas=plan.policy.max_replicas if plan else None,
                paused=decision.paused if decision is not None else None,
                fallback=decision.fallback_active if decision is not None else None,
            )
            if scaled and decision is not None and queue.scaled_from is not None:
                metrics.record_scale(
                    namespace,
                    name,
                    queue.queue,
                    queue.scaled_from,
                    decision.desired_replicas,
                    reason=decision.reason,
                    reaction_seconds=self._clock() - (result.observed_at - result.poll_duration),
                )
                await self._event(
                    record,
                    "Normal",
                    "Scaled",
                    f"queue {queue.queue}: {queue.scaled_from} -> {decision.desired_replicas} replicas"
                    f" ({decision.reason})",
                )
            elif queue.scale_error is not None:
                await self._event(record, "Warning", "ScaleFailed", f"queue {queue.queue}: {queue.scale_error}")
            figures[queue.queue] = QueueFigures(
                queue.queue,
                backlog=obs.backlog if obs.ok else None,
                in_flight=obs.in_flight if obs.ok else None,
                replicas=replicas,
                ready_replicas=cached.ready if cached is not None else None,
                desired_replicas=desired,
                oldest_age=obs.oldest_age if obs.ok else None,
                reason=decision.reason if decision is not None else None,
                scaled=scaled,
            )
            states[queue.queue] = queue.state.to_dict()
        await self.write_status(record, figures=figures, scaler_state=states)

    async def write_status(
        self,
        record: PoolRecord,
        *,
        figures: Mapping[str, QueueFigures] | None = None,
        scaler_state: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Write the pool's status if something worth writing changed."""
        async with record.lock:
            if record.key not in self.records:
                return
            conditions = cond.conditions_for_problem(
                record.problem, broker_error=record.broker_error, observed=record.observed
            )
            ready = any(c.type == cond.READY and c.status == "True" for c in conditions)
            metrics.record_pool(*record.key, broker_up=_broker_up(record), ready=ready)
            now = self._clock()
            new = build_status(
                record.written,
                generation=record.generation,
                queue_names=record.queue_names,
                conditions=conditions,
                figures=figures,
                scaler_state=scaler_state,
                now=now,
            )
            if not write_needed(
                record.written, new, seconds_since_write=now - record.written_at, figures_refresh=self.status_refresh
            ):
                return
            patch = merge_patch(record.written, new)
            if not patch:
                return
            try:
                await asyncio.to_thread(self.api.patch_pool_status, record.key[0], record.key[1], patch)
            except ApiError as exc:
                if exc.status == 404:  # deleted meanwhile
                    return
                raise
            record.written = new
            record.written_at = now

    async def _event(self, record: PoolRecord, type_: str, reason: str, message: str) -> None:
        log = logger.warning if type_ == "Warning" else logger.info
        log("%s/%s: %s: %s", *record.key, reason, message)
        try:
            await asyncio.to_thread(
                self.api.post_event, pool_reference(record.key[0], record.key[1], record.uid), type_, reason, message
            )
        except Exception as exc:  # an Event is worth a try, never a failure
            logger.warning("posting an Event for %s/%s failed: %s", *record.key, exc)


def _broker_up(record: PoolRecord) -> bool | None:
    """Whether the pool's broker answered its last poll; ``None`` when it was not polled (not served)."""
    return record.broker_error is None if record.observed and record.problem is None else None


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def contains(live: Any, wanted: Any) -> bool:
    """Whether applying ``wanted`` as a merge patch would leave ``live`` as it is (lists compared item by
    item, so fields the API server defaults inside list items are not drift)."""
    if isinstance(wanted, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all((k not in live) if v is None else (k in live and contains(live[k], v)) for k, v in wanted.items())
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return False
        return all(contains(a, b) for a, b in zip(live, wanted, strict=True))
    return bool(live == wanted)


__all__ = ["PoolNotServed", "PoolOperator", "contains", "deployment_name"]
