"""The scaling loop's own stall: how long one tick over many pools holds the event loop, in-process.

A tick observes every due queue, decides each and reports each pool. Whatever of that runs without giving the event
loop a turn delays everything else the operator does (watch events, Lease renewals, wake-ups) by as much. Here the
real :class:`ScalingLoop`, :class:`Observer` and engine run over ``--pools`` pools of 3 queues on a real
redis-server (empty queues), with a backend that answers from memory and a result handler that does nothing, so
the figure is the loop's part alone; a 5 ms heartbeat beside it measures the lag. Every pool is due at once (the
worst tick: a start-up, or pools created together).

    .venv/bin/python -m bench.bench_loop_stall [--pools 10000] [--ticks 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import RedisServer

from bench.report import markdown_table, record
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.engine import ScalingPolicy
from workerpool_operator.observe import DrainWriter, Observer
from workerpool_operator.scaling_loop import ScalingLoop
from workerpool_operator.scaling_types import PoolKey, PoolResult, QueuePlan

QUEUES = ("emails", "reports", "images")


class MemoryBackend:
    async def current_replicas(self, pool: PoolKey, queue: str) -> int | None:
        return 0

    async def scale(self, pool: PoolKey, queue: str, replicas: int, remove_first: Sequence[str]) -> None:
        return None


async def heartbeat(lags: list[float], stop: asyncio.Event, period: float = 0.005) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(period)
        lags.append(time.perf_counter() - started - period)


async def measure(url: str, pools: int, ticks: int) -> tuple[list[float], list[float]]:
    """(each tick's duration, the heartbeat's lags during the ticks) in seconds."""

    async def report(result: PoolResult) -> None:
        return None

    broker = BrokerConfig(url=url)
    async with Observer() as observer:
        loop = ScalingLoop(MemoryBackend(), report, observer, DrainWriter(observer.connections), observe_timeout=30.0)
        for i in range(pools):
            loop.register(
                ("bench", f"pool{i}"),
                broker,
                {f"{queue}{i}": QueuePlan(ScalingPolicy(), 2.0) for queue in QUEUES},
            )
        await loop.run_once()  # connections made, plans packed
        durations: list[float] = []
        lags: list[float] = []
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(lags, stop))
        for _ in range(ticks):
            loop.make_all_due()
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            await loop.run_once()
            durations.append(time.perf_counter() - started)
        stop.set()
        await beat
    return durations, lags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir)).start()
        try:
            durations, lags = asyncio.run(measure(server.url, args.pools, args.ticks))
        finally:
            server.stop()
    lags.sort()
    row = [
        f"{args.pools:,} pools x {len(QUEUES)} queues, all due",
        f"{statistics.median(durations) * 1000:.0f} / {max(durations) * 1000:.0f}",
        f"{lags[int(0.99 * (len(lags) - 1))] * 1000:.0f} / {lags[-1] * 1000:.0f}",
    ]
    header = ["tick", "tick duration median / max (ms)", "event-loop lag during the ticks p99 / max (ms)"]
    record("Scaling loop: one tick's stall", f"{args.ticks} ticks.\n\n" + markdown_table(header, [row]))


if __name__ == "__main__":
    main()
