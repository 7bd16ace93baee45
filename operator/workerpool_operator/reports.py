"""The worker-report format: the one place both the worker entrypoint and the observer read it from.

Each worker publishes, for every queue it consumes, one field in a Redis HASH per queue::

    <global_keyprefix>workerpool:reports:<queue>   field = <worker name>   value = JSON record

The record holds running and reserved counts, tasks done, the heartbeat time, the concurrency, whether
the worker is draining and when it became ready.
Redis 7.0 has no per-field expiry, so liveness is the heartbeat: a record older than ``ttl`` seconds
is ignored by readers (the worker vanished), and writers prune stale fields of others when they
write. The whole key also gets an EXPIRE of ``ttl`` on each write, so it disappears when the last
worker is gone. A clean shutdown deletes the worker's own field.

This module is pure (no Redis calls) and imports nothing heavy: the worker image imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict

from workerpool_operator.observation import WorkerLoad

KEY_PREFIX = "workerpool:reports:"
DEFAULT_TTL = 15.0  # seconds a report stays valid without a new heartbeat
DEFAULT_INTERVAL = 2.0  # seconds between heartbeats


def report_key(queue: str, global_keyprefix: str = "") -> str:
    """The Redis key of the report hash for ``queue``."""
    return f"{global_keyprefix}{KEY_PREFIX}{queue}"


def encode_report(load: WorkerLoad) -> str:
    return json.dumps(asdict(load), separators=(",", ":"))


_decode_json = json.JSONDecoder().decode


def decode_report(worker: str, raw: str | bytes) -> WorkerLoad | None:
    """Parse one hash field value; ``None`` when it is not a report we understand."""
    try:
        data = _decode_json(raw.decode() if isinstance(raw, bytes) else raw)
        get = data.get
        return WorkerLoad(
            worker=worker,
            running=int(get("running", 0)),
            reserved=int(get("reserved", 0)),
            done=int(get("done", 0)),
            heartbeat=float(get("heartbeat", 0.0)),
            concurrency=int(get("concurrency", 0)),
            draining=bool(get("draining", False)),
            started=float(get("started", 0.0)),
        )
    except (ValueError, TypeError, AttributeError):  # not JSON, not an object, or a field of the wrong type
        return None


def live_reports(
    fields: Mapping[str | bytes, str | bytes], now: float, ttl: float = DEFAULT_TTL
) -> tuple[WorkerLoad, ...]:
    """The valid, fresh reports of one hash (as returned by HGETALL), sorted by worker name."""
    loads = []
    for name, raw in fields.items():
        worker = name.decode() if isinstance(name, bytes) else name
        load = decode_report(worker, raw)
        if load is not None and now - load.heartbeat <= ttl:
            loads.append(load)
    return tuple(sorted(loads, key=lambda w: w.worker))
