"""Reconcile, step one: what a WorkerPool asks for, in one pass over its spec. Pure: no I/O, no clock.

``plan(obj, secrets)`` turns a WorkerPool object and the Secrets it names (read beforehand, see
:func:`secrets_named`) into a :class:`PoolPlan`: the broker to observe, the Deployment of every queue the operator
renders, the Deployment each other queue names (``scaleTargetRef``: scaled, never rendered), how each queue is
scaled, and the workloads that are not scaled (beat, Flower and its Service). Everything a user can get wrong here
is a :class:`PlanError` carrying the condition reason and message to show; applying the plan (``reconcile.py``)
only does I/O.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.kube import conditions as cond
from workerpool_operator.kube.components import render_components
from workerpool_operator.kube.render import POOL_LABEL, render_deployments
from workerpool_operator.reports import version_number
from workerpool_operator.scaling_types import PoolKey, QueuePlan
from workerpool_operator.spec import SecretKeyRef, SpecError, WorkerPool
from workerpool_operator.worker_env import VERSION_LABEL
from workerpool_operator.worker_groups import grouping

SecretData = Mapping[str, bytes] | None  # a Secret's data, None when the Secret does not exist


class PlanError(Exception):
    """The pool cannot be served as it stands; ``retry`` when a change outside the spec may fix it (a Secret)."""

    def __init__(self, reason: str, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.problem = cond.Problem(reason, message)
        self.retry = retry


class Manifests(Mapping[str, dict[str, Any]]):
    """Rendered manifests by key (queue name, or component), held as compact JSON text, compressed: each access
    returns a new dict, so no caller can change what the plan holds.

    Why text: a plan lives as long as its pool, and a Deployment as dicts is about 150 objects the garbage
    collector walks in every full collection, where its text is one object it never walks. At 10,000 pools the
    manifests as dicts were 338 MiB and most of the 3.1 million objects of the process; full collections
    stalled the event loop for up to 8 s (docs/benchmarks.md, "Operator at scale"). A manifest is decoded when
    it is applied or compared with a live object (tens of microseconds). Compressed (zlib), a queue's Deployment
    takes about a fifth of its text (its keys repeat); it is decompressed only with those rare uses."""

    __slots__ = ("_texts", "kinds", "names")

    def __init__(self, manifests: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        items = (manifests or {}).items()
        self._texts = {key: _packed(manifest) for key, manifest in items}
        self.names = {key: str(manifest["metadata"]["name"]) for key, manifest in items}
        self.kinds = {key: str(manifest["kind"]) for key, manifest in items}

    def __getitem__(self, key: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(zlib.decompress(self._texts[key]))
        return manifest

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Manifests):
            return self._texts == other._texts
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # a mapping: not hashable

    def __repr__(self) -> str:
        return f"Manifests({', '.join(f'{k}={self.kinds[k]}/{self.names[k]}' for k in self._texts)})"

    @property
    def stored_bytes(self) -> int:
        """What the manifests take as stored (compressed text)."""
        return sum(map(len, self._texts.values()))

    def named(self, kind: str, name: str) -> str | None:
        """The key of the manifest of that kind and name, if the plan has one."""
        return next((key for key, n in self.names.items() if n == name and self.kinds[key] == kind), None)


def _packed(manifest: Mapping[str, Any]) -> bytes:
    return zlib.compress(json.dumps(manifest, separators=(",", ":")).encode())


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """Everything the operator does for one WorkerPool, decided before any API call."""

    key: PoolKey
    uid: str
    generation: int
    broker: BrokerConfig
    deployments: Manifests  # queue -> Deployment manifest (without spec.replicas)
    queues: Mapping[str, QueuePlan]  # queue -> policy and poll interval, in spec order
    uses_secrets: bool  # the broker URL or CA come from Secrets (re-read now and then)
    components: Manifests = field(default_factory=Manifests)  # beat, flower, flower-service
    beat_app: str | None = None  # the app beat runs for (None: no beat)
    targets: Mapping[str, str] = field(default_factory=dict)  # queue -> the Deployment it scales (scaleTargetRef)
    shared: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # Celery queue -> the groups counting it
    versions: Mapping[str, int] = field(default_factory=dict)  # queue -> its pod template's version, as reported

    @property
    def beat_identity(self) -> tuple[str, str, str | None, str] | None:
        """What two beats must not share: the app, and the broker (URL, sentinel master, key prefix)."""
        if self.beat_app is None:
            return None
        return (self.beat_app, self.broker.url, self.broker.sentinel_master, self.broker.global_keyprefix)

    def component_name(self, key: str) -> str | None:
        return self.components.names.get(key)

    def owned_names(self, kind: str) -> set[str]:
        """The names of every object of ``kind`` the plan has (queue Deployments and components), and of the
        Deployments it scales without rendering: never deleted as left over, whatever their labels say."""
        names = {name for key, name in self.components.names.items() if self.components.kinds[key] == kind}
        if kind == "Deployment":
            names |= set(self.deployments.names.values()) | set(self.targets.values())
        return names

    @property
    def queue_names(self) -> list[str]:
        return list(self.queues)

    @property
    def deployment_names(self) -> dict[str, str]:
        """Every queue's Deployment: rendered, or named by ``scaleTargetRef``."""
        return {**self.deployments.names, **self.targets}

    def shadow(self, queue: str) -> bool:
        return queue in self.queues and self.queues[queue].shadow

    def bounds(self, queue: str) -> tuple[int, int]:
        policy = self.queues[queue].policy
        return policy.min_replicas, policy.max_replicas


def parse(obj: Mapping[str, Any]) -> WorkerPool:
    """The typed pool; a spec the model refuses is a :class:`PlanError` that no retry fixes."""
    try:
        return WorkerPool.from_object(obj)
    except SpecError as exc:
        raise PlanError(cond.REASON_INVALID_SPEC, str(exc), retry=False) from None


def secrets_named(pool: WorkerPool) -> list[str]:
    """The Secrets the pool reads (broker URL, CA), each once."""
    refs = [pool.spec.broker.url_from, pool.spec.broker.ca_from]
    return list(dict.fromkeys(ref.name for ref in refs if ref is not None))


def plan(obj: Mapping[str, Any], secrets: Mapping[str, SecretData]) -> PoolPlan:
    """The plan of a WorkerPool object, its Secrets read (``secrets[name]``; absent or ``None``: not found)."""
    pool = parse(obj)
    meta = obj.get("metadata") or {}
    broker = pool.spec.broker
    url = broker.url if broker.url_from is None else _secret_text(pool.namespace, broker.url_from, secrets)
    ca_pem = None if broker.ca_from is None else _secret_text(pool.namespace, broker.ca_from, secrets)
    if not url:
        raise PlanError(cond.REASON_INVALID_BROKER_URL, "the broker URL is empty")
    try:
        config = broker.to_config(url, ca_pem)
    except (SpecError, ValueError) as exc:
        raise PlanError(cond.REASON_INVALID_BROKER_URL, f"invalid broker URL: {exc}") from None
    uid = str(meta.get("uid") or "")
    spec = pool.spec
    rendered = render_deployments(pool, uid=uid)
    deployments = Manifests(rendered)
    components = Manifests(render_components(pool, uid=uid))
    targets = {q.name: q.scale_target_ref.name for q in spec.queues if q.scale_target_ref is not None}
    _check_targets(targets, deployments, components)
    queues = {q.name: spec.plan_for(q.name) for q in spec.queues}
    return PoolPlan(
        key=(pool.namespace, pool.name),
        uid=uid,
        generation=pool.generation,
        broker=config,
        deployments=deployments,
        queues=queues,
        uses_secrets=broker.url_from is not None or broker.ca_from is not None,
        components=components,
        beat_app=spec.app if spec.beat is not None else None,
        targets=targets,
        shared=grouping({name: queue.celery_queues for name, queue in queues.items()}).shared,
        versions={q: _version(d) for q, d in rendered.items()},
    )


def _version(deployment: Mapping[str, Any]) -> int:
    """The version a Deployment's workers report (its pod template's label, ``reports.version_number``)."""
    return version_number(deployment["spec"]["template"]["metadata"]["labels"][VERSION_LABEL])


def _check_targets(targets: Mapping[str, str], deployments: Manifests, components: Manifests) -> None:
    """A ``scaleTargetRef`` must not name a Deployment the pool renders itself (the model cannot tell: the
    rendered names depend on the pool's name)."""
    rendered = {name: f"queue {queue}" for queue, name in deployments.names.items()}
    rendered |= {name: key for key, name in components.names.items() if components.kinds[key] == "Deployment"}
    for queue, name in targets.items():
        if name in rendered:
            message = (
                f"queue {queue}: scaleTargetRef names Deployment {name}, which this pool renders for "
                f"{rendered[name]}: name another Deployment, or drop scaleTargetRef"
            )
            raise PlanError(cond.REASON_INVALID_SPEC, message, retry=False)


def _secret_text(namespace: str, ref: SecretKeyRef, secrets: Mapping[str, SecretData]) -> str:
    data = secrets.get(ref.name)
    if data is None:
        raise PlanError(cond.REASON_SECRET_NOT_FOUND, f"Secret {namespace}/{ref.name} not found")
    if ref.key not in data:
        raise PlanError(cond.REASON_SECRET_KEY_NOT_FOUND, f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
    try:
        return data[ref.key].decode().strip()
    except UnicodeDecodeError:
        message = f"Secret {namespace}/{ref.name} key {ref.key!r} is not text"
        raise PlanError(cond.REASON_INVALID_BROKER_URL, message) from None


def removed_deployments(owned: Collection[Mapping[str, Any]], plan: PoolPlan) -> list[Mapping[str, Any]]:
    """The Deployments labelled as the pool's that the plan no longer has (a queue taken out of the spec, beat
    or Flower turned off)."""
    return removed_objects(owned, plan, "Deployment")


def removed_objects(owned: Collection[Mapping[str, Any]], plan: PoolPlan, kind: str) -> list[Mapping[str, Any]]:
    """The objects of ``kind`` labelled as the pool's that the plan no longer has."""
    keep = plan.owned_names(kind)
    return [
        d
        for d in owned
        if ((d.get("metadata") or {}).get("labels") or {}).get(POOL_LABEL) == plan.key[1]
        and (d.get("metadata") or {}).get("name") not in keep
    ]
