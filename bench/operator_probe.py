"""The operator as `kopf run -m workerpool_operator.kube.handlers` runs it, plus what the scale benchmark reads
from inside it: the event loop's lag, garbage-collector pauses, and on SIGUSR1 where the memory is.

    python -m bench.operator_probe OUT.json run [kopf run options...]

On SIGUSR1 it writes OUT.json: the loop lag and GC pauses since the last dump, pymalloc's arenas against its live
bytes (fragmentation), the number of asyncio tasks, the deep size of what each
owner holds (our pool records field by field, the replica cache, the scaling loop, the observer and its
request plans, kopf's per-object memories, the Prometheus registry), and, when tracemalloc runs
(``PYTHONTRACEMALLOC=N`` in the environment), the traced memory grouped by the code that allocated it.
Deep sizes count each object once, for the first owner measured (in the order listed in the output).
When OUT.json.reset exists at the SIGUSR1, the dump is only the loop lag and GC pauses (and starts them
anew): the memory walk allocates, and the RSS measured after it would count its high-water mark.
On SIGUSR2 it calls ``gc.freeze()`` (an experiment: see :func:`freeze`).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kopf

LAG_EVERY = 0.1  # seconds between the lag probe's wake-ups

_lags: list[float] = []
_gc_pauses: list[float] = []
_gc_started = 0.0
_tasks: set[asyncio.Task[None]] = set()
_out = Path(sys.argv[1]) if __name__ == "__main__" else Path("probe.json")

# Allocation sites, most specific first: the first frame (from the innermost) that matches names the owner.
_SITES = [
    ("workerpool_operator/kube/render.py", "our rendered Deployment manifests"),
    ("workerpool_operator/kube/pools.py", "our pool records"),
    ("workerpool_operator/kube/backend.py", "our API client and replica cache"),
    ("workerpool_operator/kube/metrics.py", "Prometheus label sets"),
    ("prometheus_client/", "Prometheus label sets"),
    ("workerpool_operator/spec.py", "parsed specs (pydantic)"),
    ("pydantic", "parsed specs (pydantic)"),
    ("workerpool_operator/observe.py", "the observer (replies, plans)"),
    ("hiredis", "the observer (replies, plans)"),
    ("workerpool_operator/scaling_loop.py", "the scaling loop"),
    ("workerpool_operator/engine.py", "the scaling loop"),
    ("workerpool_operator/kube/status.py", "status building"),
    ("kopf/_cogs/clients/watching.py", "kopf watch streams (parsed events)"),
    ("kopf/_core/reactor/queueing.py", "kopf per-object queues"),
    ("kopf/_core/reactor/inventory.py", "kopf per-object memories"),
    ("kopf/_core/engines/daemons.py", "kopf daemons"),
    ("kopf/", "kopf, other"),
    ("kubernetes/", "kubernetes client"),
    ("urllib3/", "kubernetes client"),
    ("aiohttp/", "aiohttp"),
    ("asyncio/", "asyncio"),
]
_GENERIC = ("json/", "copy.py", "typing.py", "dataclasses.py", "<frozen", "abc.py", "functools.py", "enum.py")


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if info.get("generation") != 2:
        return
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _gc_pauses.append(time.perf_counter() - _gc_started)


# --- deep sizes ---------------------------------------------------------------------------------------------


def _skip(obj: object) -> bool:
    if isinstance(obj, type | types.ModuleType | types.FunctionType | types.MethodType | types.BuiltinFunctionType):
        return True
    return isinstance(
        obj, asyncio.AbstractEventLoop | asyncio.Future | asyncio.Lock | asyncio.Event | threading.Thread
    ) or type(obj).__module__.startswith(("kubernetes.", "urllib3", "aiohttp", "logging", "redis."))


def deep_size(roots: Iterable[object], seen: set[int]) -> int:
    """Bytes held by ``roots`` and everything they reach that ``seen`` does not hold yet."""
    total = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or _skip(obj):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, str | bytes | int | float | bool) or obj is None:
            continue
        else:
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if isinstance(slot, str) and hasattr(obj, slot):
                        stack.append(getattr(obj, slot))
    return total


def _instances(kind: type | tuple[type, ...]) -> list[Any]:
    return [obj for obj in _all_objects() if isinstance(obj, kind)]


def _all_objects() -> list[Any]:
    """Every object the collector tracks, those a ``gc.freeze()`` moved out of its walks included (it hides them
    from ``gc.get_objects()``); frozen again after."""
    frozen = gc.get_freeze_count()
    if not frozen:
        return gc.get_objects()
    gc.unfreeze()
    try:
        return gc.get_objects()
    finally:
        gc.freeze()


def owners() -> dict[str, dict[str, Any]]:
    """Deep size (MiB) and count per owner, in the order they are measured (each object counted once). Finds
    the operator's parts by their classes, so it measures this version's layout and the one before (records
    with ``manifests`` and ``body``, or with ``body`` and a ``plan`` holding ``deployments``)."""
    from kopf._core.reactor.inventory import ResourceMemories

    from workerpool_operator.kube import metrics, pools
    from workerpool_operator.kube.backend import KubeBackend
    from workerpool_operator.observe import Observer, PollPlan
    from workerpool_operator.scaling_loop import ScalingLoop

    seen: set[int] = set()
    found: dict[str, dict[str, Any]] = {}

    def measure(name: str, roots: list[Any], count: int | None = None) -> None:
        found[name] = {"MiB": deep_size(roots, seen) / 2**20, "count": len(roots) if count is None else count}

    services = [cls for name in ("PoolService", "PoolOperator") if (cls := getattr(pools, name, None))]
    records = [record for service in _instances(tuple(services)) for record in service.records.values()]
    manifests = [getattr(record, "manifests", None) or getattr(record.plan, "deployments", None) for record in records]
    measure("pool records: rendered Deployments (with last-applied)", [m for m in manifests if m], len(records))
    measure("pool records: the WorkerPool body", [record.body for record in records], len(records))
    written = [getattr(record, "written", None) for record in records]
    if any(w is not None for w in written):
        measure("pool records: the status last written", written, len(records))
    measure("pool records: everything else (plans, policies...)", list(records))
    reporter_class = getattr(importlib.import_module("workerpool_operator.kube.reporter"), "StatusReporter", None)
    reporters = _instances(reporter_class) if reporter_class is not None else []
    if reporters:
        pools_written = [getattr(r, "_pools", {}) for r in reporters]
        measure("status reporter (the status last written or seen)", pools_written, sum(map(len, pools_written)))
    backends = _instances(KubeBackend)
    measure("replica cache (KubeBackend)", [vars(backend) for backend in backends], len(backends))
    loops = _instances(ScalingLoop)
    measure("scaling loop registrations", [loop._pools for loop in loops], sum(len(loop._pools) for loop in loops))
    observers = _instances(Observer)
    # What observers keep between polls (their connections and logged failures; ``_brokers`` in older layouts).
    measure("observer: last observations", [vars(observer) for observer in observers])
    plans = _instances(PollPlan)
    measure("observer: cached request plans", plans)
    measure("Prometheus registry (label sets)", [metrics.REGISTRY])
    memories = _instances(ResourceMemories)
    measure("kopf per-object memories", [m._items for m in memories], sum(len(m._items) for m in memories))
    return found


def allocation_sites(limit: int = 40) -> list[dict[str, Any]]:
    """tracemalloc's traced memory by owner (see _SITES), largest first."""
    if not tracemalloc.is_tracing():
        return []
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    sizes: dict[str, int] = {}
    for trace in snapshot.traces:
        owner = "other"
        for frame in reversed(trace.traceback):  # innermost first
            if any(marker in frame.filename for marker in _GENERIC):
                continue
            owner = next((name for marker, name in _SITES if marker in frame.filename), "")
            if owner:
                break
        owner = owner or "other"
        sizes[owner] = sizes.get(owner, 0) + trace.size
    ranked = sorted(sizes.items(), key=lambda item: -item[1])[:limit]
    return [{"owner": name, "MiB": size / 2**20} for name, size in ranked]


def pymalloc() -> dict[str, int]:
    """pymalloc's own figures, from ``sys._debugmallocstats`` (which writes to the C stderr): its arenas (the
    memory it holds from the system) against the bytes in live blocks, so fragmentation shows."""
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    figures = {}
    for line in text.splitlines():
        name, sep, value = line.rpartition("=")
        if sep and name.strip() and value.strip().replace(",", "").isdigit():
            figures[name.strip().lstrip("# ").strip()] = int(value.strip().replace(",", ""))
    return figures


def dump() -> None:
    started = time.perf_counter()
    lags = sorted(_lags)
    reset = _out.with_name(_out.name + ".reset")
    light = reset.exists()
    report: dict[str, Any] = {
        "loop_lag": {
            "samples": len(lags),
            "max_ms": 1000 * lags[-1] if lags else None,
            "p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))] if lags else None,
            "mean_ms": 1000 * sum(lags) / len(lags) if lags else None,
        },
        "gc_gen2": {"count": len(_gc_pauses), "total_s": sum(_gc_pauses), "max_ms": 1000 * max(_gc_pauses, default=0)},
        "pymalloc": pymalloc(),
        "tasks": len(asyncio.all_tasks()),  # kopf's per-object workers among them
    }
    if not light:
        report |= {
            "frozen_objects": gc.get_freeze_count(),  # before _all_objects(), which freezes everything again
            "objects": len(_all_objects()),
            "owners": owners(),
            "traced": allocation_sites(),
            "traced_total_MiB": tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else None,
        }
    reset.unlink(missing_ok=True)
    report["probe_seconds"] = time.perf_counter() - started
    _out.write_text(json.dumps(report, indent=1))
    _lags.clear()
    _gc_pauses.clear()


def freeze() -> None:
    """The experiment of SIGUSR2: move every object alive now out of the collector's reach (``gc.freeze``), so
    full collections scan only what was allocated since."""
    gc.collect()
    gc.freeze()


@kopf.on.startup()
async def probe(**_: Any) -> None:
    """Measure the loop's lag in the background; dump on SIGUSR1 (between two lag samples)."""
    loop = asyncio.get_running_loop()
    requested = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, requested.set)
    loop.add_signal_handler(signal.SIGUSR2, freeze)

    async def sample() -> None:
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_EVERY)
            _lags.append(max(0.0, loop.time() - started - LAG_EVERY))
            if requested.is_set():
                requested.clear()
                try:
                    dump()
                except Exception:  # said in the answer, or the bench would wait for it in vain
                    _out.write_text(json.dumps({"error": traceback.format_exc()}))
                _lags.clear()  # the dump itself stalled the loop

    _tasks.add(asyncio.create_task(sample(), name="probe"))


def main() -> None:
    gc.callbacks.append(_gc_callback)
    from kopf.cli import main as kopf_main

    sys.argv = ["kopf", *sys.argv[2:]]
    kopf_main()


if __name__ == "__main__":
    main()
