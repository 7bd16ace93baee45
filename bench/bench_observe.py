"""Observer benchmark: one broker with 3,000 queues, and 10 brokers of which one never answers.

    .venv/bin/python -m bench.bench_observe [--queues 3000] [--polls 30]

Part 1 measures one poll of every queue (LLEN of 4 priority lists + HGETALL of the report hash each,
plus TIME) with the observer, against the naive loop (one awaited LLEN per key) and redis-py's own
Pipeline, all in the same run on the same data; and the extra cost of reading the oldest task's age (one
LINDEX per list, and the transfer of each waiting list's oldest message, about 1.3 kB here): of every queue
(``read_oldest_age``), and of a tenth of them (``aged``: the scaling loop names the queues with a target wait).
Part 2 measures how long the 9 healthy brokers take to arrive when a 10th accepts connections and
never answers, against the same 9 alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

import redis
import redis.asyncio as aredis

from bench.report import markdown_table, record
from workerpool_operator import reports
from workerpool_operator.brokers import BrokerConfig
from workerpool_operator.observation import WorkerLoad
from workerpool_operator.observe import Observer

STALL_TIMEOUT = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    args += ["--appendonly", "no", "--logfile", str(workdir / f"redis-{port}.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(10)


def celery_message(queue: str, priority: int, sent_at: float) -> bytes:
    """A message shaped like the ones kombu stores (about 900 bytes), with a producer timestamp."""
    body = {
        "body": "W1sxLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbH1d",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "shop.tasks.send_email", "id": "0" * 36, "retries": 0, "argsrepr": "(1, 2)"},
        "properties": {
            "correlation_id": "0" * 36,
            "reply_to": "0" * 36,
            "timestamp": sent_at,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": "0" * 36,
        },
    }
    return json.dumps(body).encode() + b" " * 400


def json_report(load: WorkerLoad) -> str:
    """A report in format 1 (JSON), as workers older than format 2 write it."""
    return json.dumps(asdict(load), separators=(",", ":"))


def populate(port: int, config: BrokerConfig, queues: list[str]) -> int:
    """Messages on some priority lists of most queues, and reports for a third of them. Returns the total."""
    client = redis.Redis(port=port)
    total = 0
    with client.pipeline(transaction=False) as pipe:
        for number, queue in enumerate(queues):
            for step, key in enumerate(config.priority_keys(queue)):
                count = (number + step) % 4
                if count:
                    pipe.lpush(key, *[celery_message(queue, step * 3, time.time() - number % 60)] * count)
                    total += count
        pipe.execute()
    write_reports(client, queues, reports.encode_report)
    client.close()
    return total


def write_reports(client: redis.Redis, queues: list[str], encode: Callable[[WorkerLoad], str]) -> None:
    """One worker's report on every third queue, with a heartbeat of now (what workers write every 2 s)."""
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for number, queue in enumerate(queues):
            if number % 3 == 0:
                load = WorkerLoad("worker-a", 2, 3, number, now, 4, False, now - 600)
                pipe.hset(reports.report_key(queue), "worker-a", encode(load))
        pipe.execute()


async def timed(
    poll: Callable[[], Awaitable[object]], rounds: int, between: Callable[[], object] | None = None
) -> list[float]:
    await poll()  # warm: connection, plan
    times = []
    for _ in range(rounds):
        if between is not None:
            between()  # not timed
        started = time.perf_counter()
        await poll()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def interleaved(
    cases: Mapping[str, tuple[Callable[[], Awaitable[object]], Callable[[], object]]], rounds: int
) -> dict[str, list[float]]:
    """ms per poll of each case, the cases taking turns; each case's preparation runs before its poll. Also
    (under ``<name> cpu``) the CPU ms this process spent in each poll: the observer's own work (packing,
    parsing, decoding), which other work on the machine slows less than the wall clock."""
    times: dict[str, list[float]] = {key: [] for name in cases for key in (name, f"{name} cpu")}
    for round_number in range(rounds + 1):  # round 0 warms: connections, plans
        for name, (poll, prepare) in cases.items():
            prepare()  # not timed
            started, cpu = time.perf_counter(), time.process_time()
            await poll()
            if round_number:
                times[name].append((time.perf_counter() - started) * 1000)
                times[f"{name} cpu"].append((time.process_time() - cpu) * 1000)
    return times


async def one_broker(port: int, queue_count: int, polls: int) -> tuple[str, dict[str, float]]:
    config = BrokerConfig(url=f"redis://127.0.0.1:{port}/0")
    queues = [f"queue-{number:04d}" for number in range(queue_count)]
    total = populate(port, config, queues)
    keys = [key for queue in queues for key in config.priority_keys(queue)]
    writer = redis.Redis(port=port)

    def change_every_queue() -> None:
        # one more message on every queue: no observation can be kept from the previous poll
        nonlocal total
        with writer.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.lpush(queue, b"m")
            pipe.execute()
        total += len(queues)

    def without_reports() -> None:
        change_every_queue()
        writer.delete(*[reports.report_key(queue) for queue in queues[::3]])

    def with_reports(encode: Callable[[WorkerLoad], str]) -> Callable[[], None]:
        def change() -> None:  # every queue, and every report with a new heartbeat, as between two real polls
            change_every_queue()
            write_reports(writer, queues, encode)

        return change

    def poller(observer: Observer, reported: int, aged: list[str] | None = None) -> Callable[[], Awaitable[object]]:
        read = {config: aged} if aged else None
        every = aged is None and observer.read_oldest_age

        async def observe() -> object:
            observation = (await observer.observe({config: queues}, timeout=30, aged=read))[config]
            assert observation.ok, observation.error
            assert sum(q.backlog for q in observation.queues.values()) == total
            seen = sum(len(q.workers) for q in observation.queues.values())
            assert seen == reported, f"{seen} live reports read, {reported} written"
            with_age = {name for name, q in observation.queues.items() if q.oldest_age is not None}
            assert with_age == (set(queues) if every else set(aged or ())), "the ages of the queues asked for"
            return observation

        return observe

    async with (
        Observer() as observer,
        Observer() as old,
        Observer() as bare,
        Observer(read_oldest_age=True) as aged,
        Observer() as tenth,
    ):
        reported = len(queues[::3])
        # The three polls the goal compares take turns, round after round, each observer with its own
        # previous poll: whatever else runs on the machine slows them alike.
        compared = await interleaved(
            {
                "bare_changing": (poller(bare, 0), without_reports),
                "pipelined": (poller(observer, reported), with_reports(reports.encode_report)),
                "old_format": (poller(old, reported), with_reports(json_report)),
                "with_age": (poller(aged, reported), with_reports(reports.encode_report)),
                "tenth_aged": (poller(tenth, reported, queues[::10]), with_reports(reports.encode_report)),
            },
            polls,
        )
        write_reports(writer, queues, reports.encode_report)
        observe = poller(observer, reported)
        still = await timed(observe, polls)
        changing = await timed(observe, polls, between=change_every_queue)

        client = aredis.Redis(port=port, protocol=2)

        async def naive() -> object:
            seen = 0
            for key in keys:
                seen += await client.llen(key)
            assert seen == total
            return seen

        async def redis_py_pipeline() -> object:
            pipe = client.pipeline(transaction=False)
            pipe.time()
            for queue in queues:
                for key in config.priority_keys(queue):
                    pipe.llen(key)
                pipe.hgetall(reports.report_key(queue))
            return await pipe.execute(raise_on_error=False)

        pipeline = await timed(redis_py_pipeline, 5)
        loop = await timed(naive, 3)
        writer.delete(*[reports.report_key(queue) for queue in queues])
        no_reports = await timed(poller(bare, 0), polls)
        await client.aclose()
    writer.close()

    measured = {
        "bare": ("observer, no worker reports, nothing changed (the baseline)", no_reports),
        "bare_changing": ("observer, no worker reports, every queue changed", compared["bare_changing"]),
        "pipelined": (
            "observer, every queue and every report changed (a new heartbeat each)",
            compared["pipelined"],
        ),
        "old_format": (
            "the same, reports in format 1 (JSON: workers older than the operator)",
            compared["old_format"],
        ),
        "changing": ("observer, every queue changed, reports as in the previous poll", changing),
        "still": ("observer, nothing changed since the previous poll", still),
        "with_age": (
            "the same, with the oldest task's age of every queue (read_oldest_age: +1 LINDEX per list)",
            compared["with_age"],
        ),
        "tenth_aged": (
            f"the same, with the oldest task's age of a tenth of the queues ({len(queues[::10]):,}: with a target)",
            compared["tenth_aged"],
        ),
        "redis_py_pipeline": ("redis-py Pipeline.execute, same commands", pipeline),
        "naive": (f"naive: one awaited LLEN per key ({len(keys):,} keys, no HGETALL)", loop),
    }
    figures = {name: statistics.median(times) for name, (_, times) in measured.items()}
    figures["pipelined_p95"] = sorted(compared["pipelined"])[int(0.95 * (polls - 1))]
    rows = [
        [label, f"{figures[name]:.1f}", f"{figures[name] / figures['bare']:.2f}x", len(times)]
        for name, (label, times) in measured.items()
    ]
    cpu = {
        name: statistics.median(compared[f"{name} cpu"])
        for name in ("bare_changing", "pipelined", "old_format", "with_age", "tenth_aged")
    }
    figures |= {f"{name}_cpu": value for name, value in cpu.items()}
    cpu_rows = [
        [measured[name][0], f"{value:.1f}", f"{value / cpu['bare_changing']:.2f}x"] for name, value in cpu.items()
    ]
    text = (
        f"{queue_count:,} queues x {len(config.priority_keys('q'))} priority lists on one broker, "
        f"one worker report on every third queue ({reported:,}) except where the row says none; "
        f"median ms per poll; p95 of the first observer row {figures['pipelined_p95']:.1f} ms; goal: under 20 ms "
        "per poll with reports, every queue and report changed.\n\n"
        + markdown_table(["method", "ms per poll (median)", "vs no reports", "polls"], rows)
        + "\n\nThe observer's own CPU time per poll (median; the same polls as the first rows):\n\n"
        + markdown_table(["method", "CPU ms per poll", "vs no reports, every queue changed"], cpu_rows)
    )
    return text, figures


async def ten_brokers(ports: list[int], rounds: int) -> tuple[str, dict[str, float]]:
    healthy = [BrokerConfig(url=f"redis://127.0.0.1:{port}/0") for port in ports]
    queues = [f"queue-{number:03d}" for number in range(100)]
    for port, config in zip(ports, healthy, strict=True):
        populate(port, config, queues)
    with socket.socket() as stall:
        stall.bind(("127.0.0.1", 0))
        stall.listen(64)  # accepts (the kernel does), never answers
        stalled = BrokerConfig(url=f"redis://127.0.0.1:{stall.getsockname()[1]}/0")
        wanted = {config: queues for config in [stalled, *healthy]}
        alone_times, arrival_times, whole_times = [], [], []
        async with Observer() as observer:
            await observer.observe(wanted, timeout=STALL_TIMEOUT)  # warm every pool
            for _ in range(rounds):
                started = time.perf_counter()
                alone = await observer.observe({config: queues for config in healthy}, timeout=STALL_TIMEOUT)
                alone_times.append((time.perf_counter() - started) * 1000)
                assert all(observation.ok for observation in alone.values())

                started = time.perf_counter()
                arrived = 0
                async for config, observation in observer.observe_as_completed(wanted, timeout=STALL_TIMEOUT):
                    if config is stalled:
                        assert observation.error == f"timed out after {STALL_TIMEOUT:g} s"
                        whole_times.append((time.perf_counter() - started) * 1000)
                    else:
                        assert observation.ok, observation.error
                        arrived += 1
                        if arrived == len(healthy):
                            arrival_times.append((time.perf_counter() - started) * 1000)
    figures = {
        "alone": statistics.median(alone_times),
        "with_stalled": statistics.median(arrival_times),
        "stalled": statistics.median(whole_times),
    }
    rows = [
        ["9 healthy brokers alone", f"{figures['alone']:.1f}"],
        ["9 healthy brokers, a stalled 10th polled with them", f"{figures['with_stalled']:.1f}"],
        ["the stalled broker's timeout error", f"{figures['stalled']:.0f}"],
    ]
    text = (
        f"10 brokers (9 real redis-server, 1 socket that accepts and never answers), 100 queues each, "
        f"timeout {STALL_TIMEOUT:g} s, {rounds} rounds, median ms until the 9 healthy observations arrived "
        f"(`observe_as_completed`); `observe()` returns all 10 together after the stalled one's timeout.\n\n"
        + markdown_table(["case", "ms (median)"], rows)
    )
    return text, figures


async def main_async(queue_count: int, polls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        ports = [stack.enter_context(redis_server(Path(tmp))) for _ in range(9)]
        part1, one = await one_broker(ports[0], queue_count, polls)
        redis.Redis(port=ports[0]).flushall()
        part2, ten = await ten_brokers(ports, rounds)
    goal = one["pipelined"] < 20
    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    body = (
        f"Load average at the end of the run: {load} (2 CPUs shared with other work).\n\n"
        f"### {queue_count:,} queues on one broker\n\n{part1}\n\n"
        f"Goal (< 20 ms per poll with reports, every queue and report changed): "
        f"{'met' if goal else 'NOT met'}, {one['pipelined']:.1f} ms. Reading the reports costs "
        f"{one['pipelined'] - one['bare_changing']:.1f} ms per poll in format 2 and "
        f"{one['old_format'] - one['bare_changing']:.1f} ms in format 1 (JSON) "
        f"({(one['old_format'] - one['bare_changing']) / max(one['pipelined'] - one['bare_changing'], 0.1):.1f}x), "
        f"over the poll without reports where every queue changed; in the observer's own CPU time "
        f"{one['pipelined_cpu'] - one['bare_changing_cpu']:.1f} ms and "
        f"{one['old_format_cpu'] - one['bare_changing_cpu']:.1f} ms. The observer is "
        f"{one['naive'] / one['bare']:.0f}x faster than the naive loop and "
        f"{one['redis_py_pipeline'] / one['pipelined']:.1f}x faster than redis-py's Pipeline. Reading the oldest "
        f"task's age adds {one['with_age'] - one['pipelined']:.1f} ms per poll for every queue (every one has tasks "
        f"waiting here: a message's transfer per waiting list), {one['tenth_aged'] - one['pipelined']:.1f} ms for a "
        f"tenth of them (in CPU time {one['with_age_cpu'] - one['pipelined_cpu']:.1f} ms and "
        f"{one['tenth_aged_cpu'] - one['pipelined_cpu']:.1f} ms): the operator reads it only for the queues with a "
        "target wait.\n\n"
        f"### 10 brokers, one stalled\n\n{part2}\n\nThe 9 healthy brokers arrive "
        f"{ten['with_stalled'] / ten['alone']:.2f}x as late as without the stalled one "
        f"({ten['with_stalled'] / (STALL_TIMEOUT * 1000):.1%} of its timeout)."
    )
    record("Observer: one round trip per broker, brokers in parallel", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queues", type=int, default=3000)
    parser.add_argument("--polls", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main_async(arguments.queues, arguments.polls, arguments.rounds))


if __name__ == "__main__":
    main()
