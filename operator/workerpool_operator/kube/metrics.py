"""Prometheus metrics of the operator, served on a port of their own.

``WORKERPOOL_OPERATOR_METRICS_PORT`` (default 9090) chooses the port; ``0`` disables the endpoint
(the metrics are still kept, so tests can read them from :data:`REGISTRY`).
"""

from __future__ import annotations

import contextlib
import os
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PORT_ENV = "WORKERPOOL_OPERATOR_METRICS_PORT"
DEFAULT_PORT = 9090

REGISTRY = CollectorRegistry(auto_describe=True)
_QUEUE_LABELS = ("namespace", "pool", "queue")

BACKLOG = Gauge(
    "workerpool_queue_backlog", "Messages waiting in the broker (all priorities)", _QUEUE_LABELS, registry=REGISTRY
)
IN_FLIGHT = Gauge(
    "workerpool_queue_in_flight", "Tasks running or reserved, from worker reports", _QUEUE_LABELS, registry=REGISTRY
)
REPLICAS = Gauge(
    "workerpool_queue_replicas", "Current replicas of the queue's Deployment", _QUEUE_LABELS, registry=REGISTRY
)
DESIRED_REPLICAS = Gauge(
    "workerpool_queue_desired_replicas", "Replicas the scaling engine wants", _QUEUE_LABELS, registry=REGISTRY
)
POLL_SECONDS = Histogram(
    "workerpool_broker_poll_seconds",
    "Duration of one pipelined poll of a broker",
    ("broker",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
OBSERVATION_ERRORS = Counter(
    "workerpool_observation_errors_total",
    "Failed broker observations per pool",
    ("namespace", "pool"),
    registry=REGISTRY,
)
SCALE_EVENTS = Counter(
    "workerpool_scale_events_total",
    "Replica changes made by the scaler",
    (*_QUEUE_LABELS, "direction"),
    registry=REGISTRY,
)

LEADER = Gauge(
    "workerpool_operator_leader",
    "1 on the replica holding the leader Lease (or running alone), 0 on a standby",
    registry=REGISTRY,
)

_server_lock = threading.Lock()
_server_port: int | None = None


def configured_port() -> int:
    """The port from the environment; a bad value is a clear error."""
    raw = os.environ.get(PORT_ENV, str(DEFAULT_PORT)).strip()
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{PORT_ENV} must be a port number (0 disables metrics), not {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{PORT_ENV} must be between 0 and 65535, not {port}")
    return port


def serve(port: int | None = None) -> int | None:
    """Start the metrics endpoint once per process; returns its port, or ``None`` when disabled."""
    global _server_port
    wanted = configured_port() if port is None else port
    if wanted == 0:
        return None
    with _server_lock:
        if _server_port is None:
            start_http_server(wanted, registry=REGISTRY)
            _server_port = wanted
        return _server_port


def record_queue(
    namespace: str,
    pool: str,
    queue: str,
    *,
    backlog: int | None,
    in_flight: int | None,
    replicas: int | None,
    desired: int | None,
) -> None:
    """The figures of one queue after a poll; ``None`` leaves a figure as it was (failed poll)."""
    labels = (namespace, pool, queue)
    if backlog is not None:
        BACKLOG.labels(*labels).set(backlog)
    if in_flight is not None:
        IN_FLIGHT.labels(*labels).set(in_flight)
    if replicas is not None:
        REPLICAS.labels(*labels).set(replicas)
    if desired is not None:
        DESIRED_REPLICAS.labels(*labels).set(desired)


def record_scale(namespace: str, pool: str, queue: str, before: int, after: int) -> None:
    if after != before:
        SCALE_EVENTS.labels(namespace, pool, queue, "up" if after > before else "down").inc()


def record_poll(broker: str, seconds: float) -> None:
    POLL_SECONDS.labels(broker).observe(seconds)


def record_observation_error(namespace: str, pool: str) -> None:
    OBSERVATION_ERRORS.labels(namespace, pool).inc()


def forget_queue(namespace: str, pool: str, queue: str) -> None:
    """Drop a removed queue's series, so dashboards do not show stale figures."""
    for gauge in (BACKLOG, IN_FLIGHT, REPLICAS, DESIRED_REPLICAS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, pool, queue)


def sample(name: str, labels: dict[str, str]) -> float | None:
    """One sample's value from :data:`REGISTRY` (for tests and the terminal view)."""
    value = REGISTRY.get_sample_value(name, labels)
    return None if value is None else float(value)


def set_leader(is_leader: bool) -> None:
    LEADER.set(1 if is_leader else 0)
