"""Throughput of trivial tasks through `workerpool-worker` against a plain `celery worker`, same settings, same run.

Goal: ratio >= 0.97 (probe files and load reports must not cost throughput). For each pool, the two
kinds of worker take turns draining the same number of pre-queued one-INCR tasks from a private
redis-server; throughput is measured from the first to the last task counted. The ratio is taken
between the best runs (as timeit does: interference only slows a run), the medians' ratio is shown too.

    .venv/bin/python -m bench.bench_worker [--tasks 3000] [--rounds 6] [--pools prefork,threads,gevent]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO, RedisServer
from tests.worker_process import APP, entrypoint_env, producer

from bench.report import markdown_table, record

GOAL = 0.97
CONCURRENCY = {"prefork": 2, "threads": 4, "solo": 1, "gevent": 20, "eventlet": 20}


def command(kind: str, pool: str) -> list[str]:
    if kind == "entrypoint":
        return [sys.executable, "-m", "workerpool_operator.worker.main", "--", "--without-mingle", "--without-gossip"]
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        APP,
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(CONCURRENCY[pool]),
        "--queues",
        "bench",
        "--loglevel",
        "warning",
        "--without-mingle",
        "--without-gossip",
    ]


def one_run(kind: str, pool: str, server: RedisServer, tasks: int, workdir: Path) -> float:
    """Tasks per second for one worker draining ``tasks`` pre-queued tasks."""
    client = server.client()
    client.flushall()
    app = producer(server.url)
    with app.producer_or_acquire() as publisher:
        for _ in range(tasks):
            app.send_task("count", queue="bench", producer=publisher)
    env = entrypoint_env(server.url, workdir / f"state-{kind}")
    env |= {
        "WORKERPOOL_POOL": pool,
        "WORKERPOOL_CONCURRENCY": str(CONCURRENCY[pool]),
        "WORKERPOOL_QUEUES": "bench",
        "WORKERPOOL_LOGLEVEL": "warning",
        "CELERY_BROKER_URL": server.url,  # the plain worker's broker (the entrypoint gets WORKERPOOL_BROKER_URL)
    }
    log = workdir / f"{kind}-{pool}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command(kind, pool), env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        first = last = None
        while time.monotonic() < deadline:
            done = int(client.get("test:count") or 0)
            now = time.perf_counter()
            if first is None and done >= 1:
                first = (now, done)
            if done >= tasks:
                last = (now, done)
                break
            if process.poll() is not None:
                raise RuntimeError(f"{kind} worker exited: {log.read_text()[-2000:]}")
            time.sleep(0.002)
        if first is None or last is None:
            raise RuntimeError(f"{kind} worker did not finish {tasks} tasks")
        return (last[1] - first[1]) / (last[0] - first[0])
    finally:
        process.terminate()
        process.wait(60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pools", default="prefork,threads,gevent")
    args = parser.parse_args(argv)
    os.environ.setdefault("C_FORCE_ROOT", "1")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir=workdir / "redis").start()
        try:
            for pool in args.pools.split(","):
                plain: list[float] = []
                ours: list[float] = []
                for i in range(args.rounds):  # alternate, first one then the other first: drift hits both alike
                    for kind in ("plain", "entrypoint") if i % 2 == 0 else ("entrypoint", "plain"):
                        (plain if kind == "plain" else ours).append(one_run(kind, pool, server, args.tasks, workdir))
                best_ratio = max(ours) / max(plain)
                median_ratio = statistics.median(ours) / statistics.median(plain)
                verdict = "meets" if best_ratio >= GOAL else "misses"
                rows.append(
                    [
                        pool,
                        CONCURRENCY[pool],
                        f"{max(plain):.0f} / {statistics.median(plain):.0f}",
                        f"{max(ours):.0f} / {statistics.median(ours):.0f}",
                        f"{best_ratio:.3f}",
                        f"{median_ratio:.3f}",
                        f"{verdict} {GOAL}",
                    ]
                )
                print(f"{pool}: plain {plain} entrypoint {ours} best ratio {best_ratio:.3f}", flush=True)
        finally:
            server.stop()

    header = [
        "pool",
        "concurrency",
        "plain celery worker, tasks/s (best / median)",
        "workerpool-worker, tasks/s (best / median)",
        "ratio of bests",
        "ratio of medians",
        "goal (bests)",
    ]
    body = (
        f"{args.tasks} pre-queued one-INCR tasks per run, {args.rounds} runs per kind in ABBA order; the goal is "
        "judged on the best run of each (other work on a shared machine only ever slows a run down); "
        "both workers `--without-mingle --without-gossip`, default prefetch, reports every 2 s.\n\n"
        + markdown_table(header, rows)
    )
    record("Worker entrypoint throughput vs plain celery worker", body)


if __name__ == "__main__":
    main()
