"""Calibrate the simulator against reality: the same short trace through the local runtime (real Redis, real
Celery workers started through the worker entrypoint, the operator's own observer, engine, drain requests and
loop) and through ``simulate``, with the start-up delay and the workers' exit time measured in the same run.

Two traces: ``bursts`` (4 minutes, two bursts of 1 s tasks, workers ready in 2 to 3 s: how fast this machine
starts them) and ``spiky`` (8 minutes of short tasks with four 5-second spikes, workers behind a pod-like
start-up of 8 to 12 s, ``bench/calibration_app.py``): the case where the engine's view of the workers, their
reports every 2 s, and when a removed worker stops costing matter most. The pool drains (the default).

It prints predicted against measured task wait p50/p95, replica-seconds and scale events; the aim is +-25 % on
wait p95 and replica-seconds. A benchmark, not a test: run it on a quiet machine.

    .venv/bin/python -m bench.bench_calibrate [--traces bursts,spiky] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from bench import calibration_app
from bench.report import markdown_table, record
from workerpool_operator.local import demo_app
from workerpool_operator.local.runtime import LocalRuntime, plan_pool, redis_for
from workerpool_operator.scaling_types import PoolResult
from workerpool_operator.sim.command import setup_for
from workerpool_operator.sim.simulate import SimResult, simulate
from workerpool_operator.sim.trace import draw_tasks, parse_trace
from workerpool_operator.spec import WorkerPool

QUEUE = "calib"


@dataclass(frozen=True)
class Case:
    """One calibration trace and the pool it runs through."""

    trace: str
    what: str
    startup: str  # CALIBRATION_STARTUP for the workers ("": as fast as this machine starts them)
    max_replicas: int
    scaling: dict[str, Any] = field(default_factory=dict)


CASES = {
    # Four minutes: quiet, a burst, quiet, a sharper burst, quiet; tasks of about a second (threads pool: a sleep).
    "bursts": Case(
        """time,rate,service_time
0,0.5,"uniform:0.5,1.5"
40,6,"uniform:0.5,1.5"
70,0.5,"uniform:0.5,1.5"
130,12,"uniform:0.5,1.5"
145,0.5,"uniform:0.5,1.5"
240,0,
""",
        "tasks of 0.5 to 1.5 s; bursts of 6/s for 30 s and 12/s for 15 s",
        "",
        6,
        {"idleSecondsBeforeZero": 30},
    ),
    # Eight minutes of short tasks at 1/s with four spikes of 50/s for 5 s; pod-like start-ups.
    "spiky": Case(
        """time,rate,service_time
0,1,"uniform:0.3,0.7"
60,50,"uniform:0.3,0.7"
65,1,"uniform:0.3,0.7"
170,50,"uniform:0.3,0.7"
175,1,"uniform:0.3,0.7"
290,50,"uniform:0.3,0.7"
295,1,"uniform:0.3,0.7"
400,50,"uniform:0.3,0.7"
405,1,"uniform:0.3,0.7"
480,0,
""",
        "tasks of 0.3 to 0.7 s at 1/s, and spikes of 50/s for 5 s at 60, 170, 290 and 400 s",
        "uniform:8,12",
        10,
    ),
}
POOL: dict[str, Any] = {
    "apiVersion": "workerpool.dev/v1alpha1",
    "kind": "WorkerPool",
    "metadata": {"name": "calibration"},
    "spec": {
        "broker": {"url": "redis://127.0.0.1:6379/0"},
        "app": calibration_app.APP,
        "template": {"image": "local", "terminationGracePeriodSeconds": 30},
        "queues": [{"name": QUEUE, "pool": "threads", "concurrency": 4, "maxReplicas": 6}],
        "scaling": {},
    },
}


def pool_for(case: Case) -> WorkerPool:
    body = copy.deepcopy(POOL)
    body["spec"]["queues"][0]["maxReplicas"] = case.max_replicas
    body["spec"]["scaling"] = dict(case.scaling)
    return WorkerPool.from_object(body)


@dataclass
class Measured:
    waits: list[float] = field(default_factory=list)
    replica_seconds: float = 0.0
    scale_events: int = 0
    startups: list[float] = field(default_factory=list)  # scale-up to the new worker's first report
    exits: list[float] = field(default_factory=list)  # SIGTERM to the worker's exit (seen every 0.25 s)


def send(url: str, tasks: list[tuple[float, float]], start: float, stop: threading.Event) -> None:
    """Send each task at its arrival time (``demo.fetch`` sleeps its duration and records its wait)."""
    app = demo_app.app
    app.conf.broker_url = url
    with app.connection_for_write() as connection:
        for arrival, duration in tasks:
            delay = start + arrival - time.time()
            if delay > 0 and stop.wait(delay):
                return
            app.send_task(
                demo_app.IO_TASK, args=[duration, time.time()], queue=QUEUE, connection=connection, retry=True
            )


async def measure(pool: WorkerPool, tasks: list[tuple[float, float]], limit: float) -> Measured:
    measured = Measured()
    with redis_for(None) as (url, _):
        client = redis.Redis.from_url(url)
        local = plan_pool(pool, url, loglevel="warning")
        stop, sending_stop = asyncio.Event(), threading.Event()
        scale_ups: list[float] = []
        seen: set[str] = set()

        async def on_result(result: PoolResult) -> None:
            for queue in result.queues:
                if queue.scaled_from is not None:
                    measured.scale_events += 1
                    if queue.decision is not None and queue.decision.desired_replicas > queue.scaled_from:
                        scale_ups.append(result.observed_at)
                for worker in queue.observation.workers if queue.observation else ():
                    if worker.worker not in seen:
                        seen.add(worker.worker)
                        first = worker.started or result.observed_at
                        earlier = [t for t in scale_ups if t <= first]
                        if earlier:
                            measured.startups.append(first - earlier[-1])

        runtime = LocalRuntime(local, url, title="calibration", live=False, out=open_devnull(), on_result=on_result)
        async with runtime:
            start = time.time() + 1.0
            sender = asyncio.ensure_future(asyncio.to_thread(send, url, tasks, start, sending_stop))
            looping = asyncio.ensure_future(runtime.run(stop))
            last = time.time()
            stopping: dict[str, float] = {}  # worker -> when it was sent SIGTERM (monotonic)
            while time.time() - start < limit:
                await asyncio.sleep(0.25)
                now = time.time()
                pods = runtime.backend.all_workers()  # replicas and workers still stopping: what a cluster bills
                measured.replica_seconds += len(pods) * (now - last)
                last = now
                alive = {pod.name for pod in pods}
                for name in [name for name in stopping if name not in alive]:
                    measured.exits.append(time.monotonic() - stopping.pop(name))
                for pod in pods:
                    if pod.terminating_since is not None and pod.name not in stopping:
                        stopping[pod.name] = pod.terminating_since
                done = int(client.llen(demo_app.WAITS_KEY.format(queue=QUEUE)))  # type: ignore[arg-type]
                if sender.done() and done >= len(tasks) and not runtime.backend.workers(local.key, QUEUE):
                    break
            stop.set()
            sending_stop.set()
            await sender
            await looping
        raw = client.lrange(demo_app.WAITS_KEY.format(queue=QUEUE), 0, -1)
        measured.waits = [float(value) for value in raw]  # type: ignore[union-attr]
        client.close()
    return measured


def open_devnull() -> Any:
    import os

    return open(os.devnull, "w")  # the runtime writes its log lines here until the end


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else 0.0


def off_by(predicted: float, measured: float, unit: str = "") -> str:
    if abs(measured) < 1.0:  # a ratio of two near-zero waits says nothing: the difference does
        return f"{predicted - measured:+.1f}{unit}"
    return f"{(predicted - measured) / measured:+.0%}"


def calibrate(name: str, case: Case, seed: int, timeout: float) -> str:
    trace = parse_trace(case.trace, name)
    tasks = draw_tasks(trace, "exp:1", seed)
    pool = pool_for(case)
    os.environ[calibration_app.STARTUP_VARIABLE] = case.startup
    measured = asyncio.run(measure(pool, tasks, timeout))
    startup = statistics.median(measured.startups) if measured.startups else 5.0
    low, high = (min(measured.startups), max(measured.startups)) if measured.startups else (startup, startup)
    spread = f"uniform:{low:.2f},{high:.2f}" if high > low else f"const:{startup:.2f}"
    exit_seconds = statistics.median(measured.exits) if measured.exits else 0.0
    setup = setup_for(pool, QUEUE)
    options: dict[str, Any] = {"trace_end": trace.end, "exit_seconds": exit_seconds}
    predicted: SimResult = simulate(tasks, setup, "ours", startup_delay=spread, **options)
    median_run: SimResult = simulate(tasks, setup, "ours", startup_delay=f"const:{startup:.2f}", **options)
    live: SimResult = simulate(tasks, setup, "ours", startup_delay=spread, report_interval=0.0, **options)
    rows = [
        ["tasks done", f"{predicted.finished} of {predicted.tasks}", f"{len(measured.waits)} of {len(tasks)}", "-"],
        *[
            [f"wait p{q}", f"{predicted.wait_percentile(q):.1f} s", f"{percentile(measured.waits, q):.1f} s",
             off_by(predicted.wait_percentile(q), percentile(measured.waits, q), " s")]
            for q in (50, 95)
        ],
        ["replica-seconds", f"{predicted.replica_seconds:,.0f}", f"{measured.replica_seconds:,.0f}",
         off_by(predicted.replica_seconds, measured.replica_seconds)],
        ["scale events", str(predicted.scale_events), str(measured.scale_events),
         off_by(predicted.scale_events, measured.scale_events)],
    ]  # fmt: skip
    table = markdown_table(["", "simulate (predicted)", "local runtime (measured)", "predicted vs measured"], rows)
    p95_ok = abs(predicted.wait_percentile(95) - percentile(measured.waits, 95)) <= 0.25 * max(
        percentile(measured.waits, 95), 1.0
    )
    cost_ok = abs(predicted.replica_seconds - measured.replica_seconds) <= 0.25 * measured.replica_seconds
    return (
        f"**{name}**: a {trace.end:.0f} s trace ({len(tasks)} {case.what}), at most {case.max_replicas} workers. "
        f"Start-up measured from a scale-up to the new worker's `started` time: median {startup:.1f} s over "
        f"{len(measured.startups)} workers, from {low:.1f} to {high:.1f} s (`simulate` drew each pod's from "
        f"`{spread}`); SIGTERM to exit: median {exit_seconds:.1f} s over {len(measured.exits)} workers (simulate's "
        f"`exit_seconds`).\n\n{table}\n\n"
        f"Aim +-25 % on wait p95: {'met' if p95_ok else 'missed'}; on replica-seconds: "
        f"{'met' if cost_ok else 'missed'}. With the median as a constant start-up instead, simulate predicts "
        f"wait p95 {median_run.wait_percentile(95):.1f} s and {median_run.replica_seconds:,.0f} replica-seconds; "
        f"with reports read live (the simulator before its reports every 2 s), wait p95 "
        f"{live.wait_percentile(95):.1f} s and {live.replica_seconds:,.0f} replica-seconds."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", default=",".join(CASES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    sections = [calibrate(name, CASES[name], args.seed, args.timeout) for name in args.traces.split(",") if name]
    body = (
        "Each trace through the local runtime: real redis-server, real Celery workers (threads pool, concurrency 4, "
        "prefetch multiplier 1) through the worker entrypoint, reporting every 2 s; the operator's observer, "
        "engine (the defaults: policy throughput, draining) and loop, polling every 2 s. Then the same tasks "
        "through `simulate` with the start-ups and exit time measured in that run.\n\n" + "\n\n".join(sections)
    )
    record("Simulator calibration: simulate against the local runtime", body)


if __name__ == "__main__":
    main()
