"""Prometheus metrics of the operator, served on a port of their own.

The operator's settings choose the port (``metrics_port``, ``WORKERPOOL_OPERATOR_METRICS_PORT``: 9847 by
default, not Prometheus's own 9090); ``0`` disables the endpoint (the metrics are still kept, so tests can read
them from :data:`REGISTRY`). A port that cannot be bound is one logged line, never a failure: scaling goes on.

Names follow Prometheus's conventions (base units, ``_total`` counters, ``_info`` for build facts) and
share celery-exporter's ``queue_name`` label, so one dashboard can filter both by queue. Every series is
listed in docs/operations.md ("Metrics"). ``_created`` series are off: no one graphs them.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from workerpool_operator import __version__

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9847  # the settings' default (kube/settings.py)

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `*_created` series beside counters and histograms (process-wide setting)

REGISTRY = CollectorRegistry(auto_describe=True)
# process_* (CPU, memory, file descriptors, start time), python_info and python_gc_*, as every Python
# exporter has them; registered in our registry rather than the library's default one.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

POOL_LABELS = ("namespace", "pool")
QUEUE_LABELS = ("namespace", "pool", "queue_name")  # celery-exporter's label for a queue


class GaugeTable:
    """Gauges that share their labels, kept as one row of values per label set and turned into samples only
    when Prometheus scrapes (a custom collector). With a labelled ``Gauge`` child per series (a lock and a
    value object each), the metrics of 10,000 pools (320,000 gauge series, and the counters beside them) took
    273 MiB; with rows, 41 MiB. A value of ``None`` is no series (not known yet)."""

    def __init__(self, labels: tuple[str, ...], columns: tuple[tuple[str, str], ...]) -> None:
        self.labels = labels
        self.columns = columns  # (name, help) per gauge
        self.rows: dict[tuple[str, ...], list[float | None]] = {}

    def row(self, key: tuple[str, ...]) -> list[float | None]:
        found = self.rows.get(key)
        if found is None:
            found = self.rows[key] = [None] * len(self.columns)
        return found

    def remove(self, key: tuple[str, ...]) -> None:
        self.rows.pop(key, None)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, help_, labels=self.labels) for name, help_ in self.columns]

    def collect(self) -> Iterator[Metric]:
        families = self.describe()
        for key, row in list(self.rows.items()):  # the scrape runs in the server's thread: a snapshot
            for family, value in zip(families, row, strict=True):
                if value is not None:
                    family.add_metric(key, value)
        yield from families


BUILD_INFO = Info("workerpool_build", "The operator's version", registry=REGISTRY)
BUILD_INFO.info({"version": __version__, "python_version": platform.python_version()})
LEADER = Gauge(
    "workerpool_operator_leader",
    "1 on the operator replica holding the leader Lease (the one that scales), 0 on standbys",
    registry=REGISTRY,
)

QUEUE_GAUGES = GaugeTable(
    QUEUE_LABELS,
    (
        ("workerpool_queue_backlog", "Messages waiting in the broker (all priorities)"),
        ("workerpool_queue_in_flight", "Tasks running or reserved, from worker reports"),
        ("workerpool_queue_replicas", "Replicas of the queue's Deployment (spec.replicas)"),
        ("workerpool_queue_ready_replicas", "Ready replicas of the queue's Deployment"),
        ("workerpool_queue_desired_replicas", "Replicas the scaling engine wants"),
        ("workerpool_queue_min_replicas", "The queue's minReplicas"),
        ("workerpool_queue_max_replicas", "The queue's maxReplicas"),
        ("workerpool_queue_paused", "1 while scaling of the queue is paused (scaling.paused)"),
        ("workerpool_queue_fallback_active", "1 while the queue is held by its fallback after failed observations"),
        ("workerpool_queue_workers_draining", "Workers asked to stop taking tasks, still finishing"),
    ),
)
REGISTRY.register(QUEUE_GAUGES)

# The waits a queue's tasks get (engine/wait_watch.py): seconds, so kept as floats, in a table of their own.
WAIT_GAUGES = GaugeTable(
    QUEUE_LABELS,
    (
        (
            "workerpool_queue_oldest_task_age_seconds",
            "Seconds the oldest waiting task has waited: from its message's timestamp when the producer stamps it "
            "(queues with a target wait), else estimated; 0 when nothing waits",
        ),
        (
            "workerpool_queue_wait_p95_seconds",
            "p95 of the oldest waiting task's age over the last 5 minutes' polls that found tasks waiting",
        ),
        ("workerpool_queue_target_wait_seconds", "The queue's targetWaitSeconds (no series without one)"),
        (
            "workerpool_queue_wait_above_target",
            "1 while the oldest task's age has been above the queue's target for longer than a start-up delay",
        ),
    ),
)
REGISTRY.register(WAIT_GAUGES)

POOL_GAUGES = GaugeTable(
    POOL_LABELS,
    (
        ("workerpool_broker_up", "1 when the pool's broker answered the last poll, else 0"),
        ("workerpool_pool_ready", "1 when the pool's Ready condition is True, else 0"),
    ),
)
REGISTRY.register(POOL_GAUGES)

POLL_SECONDS = Histogram(
    "workerpool_broker_poll_seconds",
    "Duration of one pipelined poll of a broker",
    ("broker",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
OBSERVATION_ERRORS = Counter(
    "workerpool_observation_errors_total", "Failed broker observations per pool", POOL_LABELS, registry=REGISTRY
)
SCALE_EVENTS = Counter(
    "workerpool_scale_events_total",
    "Replica changes made by the scaler, by direction and kind of reason",
    (*QUEUE_LABELS, "direction", "reason"),
    registry=REGISTRY,
)
REACTION_SECONDS = Histogram(
    "workerpool_scale_reaction_seconds",
    "From the start of the poll that saw the demand to the replica change written to the API",
    ("direction",),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "workerpool_kube_api_requests_total",
    "The operator's own Kubernetes API requests (kopf's watches aside), by HTTP method and status code",
    ("method", "code"),
    registry=REGISTRY,
)
CANCELLED_TASKS = Counter(
    "workerpool_scale_down_cancelled_tasks_total",
    "Tasks cancelled because a scale-down removed the worker running them (should stay 0)",
    QUEUE_LABELS,
    registry=REGISTRY,
)
CAUSES = ("scale_down", "stopped_at_grace", "worker_lost")
INTERRUPTED_TASKS = Counter(
    "workerpool_tasks_interrupted_total",
    "Tasks a worker held (running or prefetched) when it stopped without finishing them, by cause: scale_down (a "
    "removal of ours), stopped_at_grace (killed at the end of its grace period), worker_lost (killed: OOM, node "
    "lost). acks_late tasks come back after the broker's visibility timeout",
    (*QUEUE_LABELS, "cause"),
    registry=REGISTRY,
)
PROTECTED_PODS = Counter(
    "workerpool_pod_protection_writes_total",
    "Writes of the busy-pod marks (karpenter.sh/do-not-disrupt, cluster-autoscaler safe-to-evict): protect or release",
    (*QUEUE_LABELS, "action"),
    registry=REGISTRY,
)

# The engine's reasons start with one of these; the label keeps the kind, never the figures.
_REASON_KINDS = (
    ("wake from zero", "wake_from_zero"),
    ("scale up to min replicas", "min_replicas"),
    ("scale down to max replicas", "max_replicas"),
    ("scale to zero", "idle"),
    ("scale up", "demand"),
    ("scale down", "demand"),
    ("fallback", "fallback"),
    ("observation failed", "observation_failed"),
    ("paused", "paused"),
)


def reason_kind(reason: str) -> str:
    """The kind of a scaling reason, for the ``reason`` label: a short fixed word, never the figures."""
    for prefix, kind in _REASON_KINDS:
        if reason.startswith(prefix):
            return kind
    return "other"


_server_lock = threading.Lock()
_server_port: int | None = None


def serve(port: int, address: str = "0.0.0.0") -> int | None:
    """Start the metrics endpoint once per process on ``port`` (the settings' ``metrics_port``); returns its port,
    or ``None`` when ``port`` is 0 or cannot be bound (one error line says so; the operator goes on without
    metrics)."""
    global _server_port
    wanted = port
    if wanted == 0:
        return None
    with _server_lock:
        if _server_port is None:
            try:
                start_http_server(wanted, addr=address, registry=REGISTRY)
            except OSError as error:
                logger.error(
                    "metrics: cannot listen on port %d (%s); serving no metrics, scaling goes on. Set"
                    " WORKERPOOL_OPERATOR_METRICS_PORT (the chart's metrics.port) to a free port, or 0 to turn"
                    " metrics off",
                    wanted,
                    error.strerror or error,
                )
                return None
            _server_port = wanted
        return _server_port


def set_leader(is_leader: bool) -> None:
    LEADER.set(1 if is_leader else 0)


def record_queue(
    namespace: str,
    pool: str,
    queue: str,
    *,
    backlog: int | None,
    in_flight: int | None,
    replicas: int | None,
    desired: int | None,
    ready: int | None = None,
    draining: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    paused: bool | None = None,
    fallback: bool | None = None,
) -> None:
    """The figures of one queue after a poll; ``None`` leaves a figure as it was (failed poll)."""
    figures = (backlog, in_flight, replicas, ready, desired, min_replicas, max_replicas, paused, fallback, draining)
    key = (namespace, pool, queue)
    row = QUEUE_GAUGES.rows.get(key)
    if row is None:
        row = QUEUE_GAUGES.row(key)
        CANCELLED_TASKS.labels(*key)  # a counter that should read 0 is there to read 0
    for index, value in enumerate(figures):
        if value is not None:  # not known: no series yet, or the last value stays
            row[index] = int(value)


def record_waits(
    namespace: str,
    pool: str,
    queue: str,
    *,
    oldest: float | None,
    p95: float | None,
    target: float | None,
    above_target: bool,
) -> None:
    """A queue's waits after a poll: ``None`` leaves the age and the p95 as they were (not known this poll); the
    target's series exist only while the queue has a target."""
    key = (namespace, pool, queue)
    rows = WAIT_GAUGES.rows
    if oldest == 0.0 and p95 == 0.0 and target is None:
        rows[key] = _IDLE_WAITS  # most queues, most of the time: one shared row
        return
    row = rows.get(key)
    if row is None or row is _IDLE_WAITS:
        row = rows[key] = list(row or (None, None, None, None))
    if oldest is not None:
        row[0] = oldest
    if p95 is not None:
        row[1] = p95
    row[2] = target
    row[3] = None if target is None else 1 if above_target else 0


_IDLE_WAITS: list[float | None] = [0.0, 0.0, None, None]  # never changed: record_waits copies it first


def record_cancelled_tasks(namespace: str, pool: str, queue: str, count: int) -> None:
    if count > 0:
        CANCELLED_TASKS.labels(namespace, pool, queue).inc(count)
        INTERRUPTED_TASKS.labels(namespace, pool, queue, "scale_down").inc(count)


def record_scale(
    namespace: str,
    pool: str,
    queue: str,
    before: int,
    after: int,
    *,
    reason: str = "",
    reaction_seconds: float | None = None,
) -> None:
    """A replica change the scaler wrote; ``reaction_seconds`` from the start of the poll that asked for it."""
    if after == before:
        return
    direction = "up" if after > before else "down"
    SCALE_EVENTS.labels(namespace, pool, queue, direction, reason_kind(reason)).inc()
    if reaction_seconds is not None:
        REACTION_SECONDS.labels(direction).observe(max(0.0, reaction_seconds))


def record_api_request(method: str, status: int) -> None:
    API_REQUESTS.labels(method.upper(), str(status)).inc()


def record_poll(broker: str, seconds: float) -> None:
    POLL_SECONDS.labels(broker).observe(seconds)


def record_observation_error(namespace: str, pool: str) -> None:
    OBSERVATION_ERRORS.labels(namespace, pool).inc()


def record_pool(namespace: str, pool: str, *, broker_up: bool | None, ready: bool) -> None:
    """The pool's health: its broker answered the last poll (``None``: not polled), its Ready condition."""
    row = POOL_GAUGES.row((namespace, pool))
    if broker_up is not None:
        row[0] = 1 if broker_up else 0
    row[1] = 1 if ready else 0
    OBSERVATION_ERRORS.labels(namespace, pool)


def record_interrupted_tasks(namespace: str, pool: str, queue: str, cause: str, count: int) -> None:
    if count > 0:
        INTERRUPTED_TASKS.labels(namespace, pool, queue, cause).inc(count)


def record_protection_write(namespace: str, pool: str, queue: str, action: str) -> None:
    PROTECTED_PODS.labels(namespace, pool, queue, action).inc()


def forget_queue(namespace: str, pool: str, queue: str) -> None:
    """Drop a removed queue's series, so dashboards do not show stale figures."""
    QUEUE_GAUGES.remove((namespace, pool, queue))
    WAIT_GAUGES.remove((namespace, pool, queue))
    with contextlib.suppress(KeyError):
        CANCELLED_TASKS.remove(namespace, pool, queue)
    for counter, kinds in ((INTERRUPTED_TASKS, CAUSES), (PROTECTED_PODS, ("protect", "release"))):
        for kind in kinds:
            with contextlib.suppress(KeyError):
                counter.remove(namespace, pool, queue, kind)


def forget_pool(namespace: str, pool: str, queues: tuple[str, ...] | list[str] = ()) -> None:
    """Drop a deleted pool's gauges (its queues' too)."""
    for queue in queues:
        forget_queue(namespace, pool, queue)
    POOL_GAUGES.remove((namespace, pool))


def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample's value from :data:`REGISTRY` (for tests and the terminal view)."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return None if value is None else float(value)
