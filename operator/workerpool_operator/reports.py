"""The worker-report format: the one place both the worker entrypoint and the observer read it from.

Each worker publishes, for every queue it consumes, one field in a Redis HASH per queue::

    <global_keyprefix>workerpool:reports:<queue>   field = <worker name>   value = the record

The record (format 2) is one line of ASCII integers separated by spaces, in this order::

    2 <running> <reserved> <done> <heartbeat ms> <concurrency> <draining 0|1> <started ms> [<stopping 0|1> <version>]

``2`` names the format; the times are unix milliseconds (``started`` 0: unknown). A reader takes the
first eight numbers and ignores any that follow, so a later format adds fields at the end and keeps its
number; the number changes only when an existing field changes meaning. Added since: ``stopping`` (the worker
got SIGTERM and finishes what it runs) and ``version`` (its pod template's version, see ``kube/render.py``);
a record without them is read as not stopping, version 0 (unknown). Format 2 exists for the
observer's hot path: it decodes in half the time of a JSON object (figures in docs/benchmarks.md,
bench/bench_observe.py), and stays readable in ``redis-cli`` and by clients that decode replies as text.

Upgrades. Readers also accept format 1, the JSON object of older workers (``{"running": 2, ...}``), so an
operator upgraded before its workers' image still sees their load. During a rolling update of the
workers, old and new workers share a hash, and an old worker deletes every field it cannot read as
JSON: so a worker writes format 1 itself (marked ``"format": 1``) while a live report in the hash comes
from a worker that reads only format 1 (a JSON report without the mark), and on its first write, before
it has seen the hash (:func:`format_to_write`). An operator older than its workers' image does not read
format 2: upgrade the operator first.

Redis 7.0 has no per-field expiry, so liveness is the heartbeat: a record older than ``ttl`` seconds
is ignored by readers (the worker vanished), and writers prune stale fields of others when they
write. The whole key also gets an EXPIRE of ``ttl`` on each write, so it disappears when the last
worker is gone. A clean shutdown deletes the worker's own field.

This module is pure (no Redis calls) and imports nothing heavy: the worker image imports it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from workerpool_operator.observation import WorkerLoad

KEY_PREFIX = "workerpool:reports:"
DEFAULT_TTL = 15.0  # seconds a report stays valid without a new heartbeat
DEFAULT_INTERVAL = 2.0  # seconds between heartbeats
FORMAT = 2  # the first number of a record

_json_object = json.JSONDecoder().decode


def report_key(queue: str, global_keyprefix: str = "") -> str:
    """The Redis key of the report hash for ``queue``."""
    return f"{global_keyprefix}{KEY_PREFIX}{queue}"


def version_number(label: str | None) -> int:
    """A pod template version (the ``workerpool.dev/version`` label: hex digits) as the number a report carries;
    0 for none. Another text is hashed (CRC-32), so a label set by hand still tells versions apart."""
    if not label:
        return 0
    try:
        return int(label, 16) & 0xFFFF_FFFF_FFFF
    except ValueError:
        return zlib.crc32(label.encode()) or 1


def encode_report(load: WorkerLoad, version: int = FORMAT) -> str:
    """The record of ``load`` in format ``version``: 2, or 1 (JSON) beside workers that read only format 1.
    The worker's name is the hash field; format 1 repeats it, as older workers wrote it."""
    if version == 1:
        return json.dumps({**asdict(load), "format": 1}, separators=(",", ":"))
    fields = (
        load.running,
        load.reserved,
        load.done,
        round(load.heartbeat * 1000),
        load.concurrency,
        int(load.draining),
        round(load.started * 1000),
        int(load.stopping),
        load.version,
    )
    return f"{FORMAT} " + " ".join(map(str, fields))


def format_to_write(fields: Mapping[str | bytes, str | bytes] | None, own: str, now: float, ttl: float) -> int:
    """The format a worker writes next to the hash it last read (``None``: not read yet): 1 while a live
    report there comes from a worker that reads only format 1 (it would delete format 2 fields), else 2."""
    if fields is None:
        return 1
    for name, raw in fields.items():
        worker = name.decode() if isinstance(name, bytes) else name
        if worker == own or raw[:1] not in (b"{", "{"):
            continue
        try:
            record = _json_object(raw.decode() if isinstance(raw, bytes) else raw)
            old = "format" not in record and now - float(record.get("heartbeat", 0.0)) <= ttl
        except (ValueError, TypeError, AttributeError):
            continue  # not a report: pruned as stale, by old and new workers alike
        if old:
            return 1
    return FORMAT


def decode_report(worker: str, raw: str | bytes) -> WorkerLoad | None:
    """Parse one hash field value (format 2, or format 1's JSON); ``None`` when it is not a report we
    understand."""
    try:
        if raw[:1] in (b"{", "{"):
            return _decode_json(worker, raw)
        # The observer's hot path (thousands of records per poll): one split, integer parsing in C.
        tag, running, reserved, done, heartbeat, concurrency, draining, started, *later = map(int, raw.split())
    except (ValueError, TypeError, AttributeError):  # not a record, or a field of the wrong type
        return None
    if tag != FORMAT:
        return None
    stopping = bool(later) and later[0] == 1
    version = later[1] if len(later) > 1 else 0
    return WorkerLoad(
        worker, running, reserved, done, heartbeat / 1000, concurrency, draining == 1, started / 1000, stopping, version
    )


def _decode_json(worker: str, raw: str | bytes) -> WorkerLoad | None:
    """Format 1: what workers older than format 2 write."""
    data = _json_object(raw.decode() if isinstance(raw, bytes) else raw)
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
        stopping=bool(get("stopping", False)),
        version=int(get("version", 0)),
    )


def live_reports(
    fields: Mapping[str | bytes, str | bytes], now: float, ttl: float = DEFAULT_TTL
) -> tuple[WorkerLoad, ...]:
    """The valid, fresh reports of one hash (as a mapping of field to value), sorted by worker name."""
    return live_reports_of_reply([item for pair in fields.items() for item in pair], now, ttl)


def live_reports_of_reply(reply: Sequence[str | bytes], now: float, ttl: float = DEFAULT_TTL) -> tuple[WorkerLoad, ...]:
    """The valid, fresh reports of one hash as HGETALL returns it (field, value, field, value...), sorted by
    worker name."""
    if len(reply) == 2:  # the common case: one worker per queue
        name, raw = reply
        load = decode_report(name.decode() if isinstance(name, bytes) else name, raw)
        return (load,) if load is not None and now - load.heartbeat <= ttl else ()
    loads = []
    for name, raw in zip(reply[0::2], reply[1::2], strict=True):
        load = decode_report(name.decode() if isinstance(name, bytes) else name, raw)
        if load is not None and now - load.heartbeat <= ttl:
            loads.append(load)
    loads.sort(key=_by_worker)
    return tuple(loads)


def _by_worker(load: WorkerLoad) -> str:
    return load.worker
