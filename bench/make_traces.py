"""Write the hostile traces of examples/traces/ from fixed seeds: the same files on every run.

    .venv/bin/python -m bench.make_traces [--out examples/traces]

Each trace is made for a queue of concurrency 4 (the header says so). Each trace draws from its own seeded stream,
so adding one leaves the others' files as they were. Rate traces (``time,rate,service_time``)
leave the draw of arrivals to the simulator's seed; explicit ones (``time,duration``) are drawn here, with
durations rounded to the millisecond, so that very short tasks round to 0.000 as in a real trace.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterable
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "examples" / "traces"
Row = tuple[float, float, str]


def rate_trace(header: str, rows: Iterable[Row], end: float) -> str:
    lines = [f"# {line}" for line in header.strip().splitlines()]
    lines.append("time,rate,service_time")
    lines += [f"{time:g},{rate:g},{service}" for time, rate, service in rows]
    lines.append(f"{end:g},0,")
    return "\n".join(lines) + "\n"


def task_trace(header: str, tasks: Iterable[tuple[float, float]]) -> str:
    lines = [f"# {line}" for line in header.strip().splitlines()]
    lines.append("time,duration")
    lines += [f"{time:.3f},{duration:.3f}" for time, duration in sorted(tasks)]
    return "\n".join(lines) + "\n"


def poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    times, time = [], start + rng.expovariate(rate)
    while time < end:
        times.append(time)
        time += rng.expovariate(rate)
    return times


def long_tasks(rng: random.Random) -> str:
    tasks = [(t, rng.uniform(300, 2400)) for t in poisson(rng, 1 / 90, 0, 6 * 3600)]
    return task_trace(
        """Six hours of long tasks: one every 90 s on average (Poisson), each running 5 to 40 minutes (uniform).
About 15 slots busy on average. Try it with a queue of concurrency 4. Made by bench/make_traces.py.""",
        tasks,
    )


def spikes(rng: random.Random) -> str:
    rows: list[Row] = [(0, 2, "exp:0.2")]
    time = 0.0
    while True:
        time += rng.uniform(180, 360)
        if time > 2 * 3600 - 60:
            break
        rows += [(round(time), 200, "exp:0.2"), (round(time) + 10, 2, "exp:0.2")]
    return rate_trace(
        """Two hours of short tasks (0.2 s on average) at 2/s, with a spike of 200 tasks/s for 10 s every 3 to 6
minutes: each spike is over before a new pod could start. Try it with a queue of concurrency 4.
Made by bench/make_traces.py.""",
        rows,
        2 * 3600,
    )


def ramp(_: random.Random) -> str:
    rows: list[Row] = [(minute * 60, round(0.2 + 29.8 * minute / 120, 2), "exp:1") for minute in range(121)]
    rows += [(7200 + minute * 60, round(30 - minute, 2), "exp:1") for minute in range(1, 30)]
    return rate_trace(
        """A slow ramp: 1 s tasks arriving at 0.2/s, rising by a quarter of a task per second every minute to
30/s over two hours, then falling back within half an hour. Try it with a queue of concurrency 4.
Made by bench/make_traces.py.""",
        rows,
        9000,
    )


def flood(_: random.Random) -> str:
    rows: list[Row] = [(0, 0.5, "exp:0.5"), (1800, 100, "exp:0.5"), (2400, 0, "")]
    return rate_trace(
        """A flood that stops: 0.5 s tasks at 0.5/s for half an hour, then 100/s for ten minutes, then nothing
for twenty minutes. Try it with a queue of concurrency 4. Made by bench/make_traces.py.""",
        rows,
        3600,
    )


def mixed(rng: random.Random) -> str:
    short = [(t, rng.expovariate(1 / 0.5)) for t in poisson(rng, 3, 0, 3600)]
    long = [(t, rng.uniform(120, 900)) for t in poisson(rng, 1 / 120, 0, 3600)]
    return task_trace(
        """Short and long tasks on one queue: for an hour, 0.5 s tasks (exponential) at 3/s and, among them,
2-to-15-minute tasks at one every 2 minutes. Durations are rounded to the millisecond: some are 0.000.
Try it with a queue of concurrency 4. Made by bench/make_traces.py.""",
        short + long,
    )


def beat(_: random.Random) -> str:
    rows: list[Row] = []
    for hour in range(4):
        start = hour * 3600
        if hour:
            rows.append((start, 600, "exp:1"))
            rows.append((start + 5, 1, "exp:1"))
        else:
            rows.append((0, 1, "exp:1"))
    return rate_trace(
        """Four hours of 1 s tasks at 1/s, and at the top of every hour after the first a Celery beat job that
enqueues 3,000 tasks within 5 s. Try it with a queue of concurrency 4, and with
scaling.schedules [{cron: "0 * * * *", durationSeconds: 300, replicas: 20}] to pre-warm for it.
Made by bench/make_traces.py.""",
        rows,
        4 * 3600,
    )


def trickle(rng: random.Random) -> str:
    tasks = [(t, rng.uniform(3, 20)) for t in poisson(rng, 1 / 60, 0, 2 * 3600)]
    return task_trace(
        """A trickle: for two hours, one task a minute on average (Poisson), each running 3 to 20 s (uniform).
A worker kept warm between tasks idles most of the time; one started for each task makes it wait a start-up.
Try it with a queue of concurrency 4. Made by bench/make_traces.py.""",
        tasks,
    )


def heavy_tailed(rng: random.Random) -> str:
    tasks = [(t, min(900.0, rng.lognormvariate(0.0, 2.0))) for t in poisson(rng, 1.0, 0, 2 * 3600)]
    return task_trace(
        """Heavy-tailed durations: for two hours, one task a second on average (Poisson), lasting a lognormal time
with a median of 1 s (sigma 2: one in 20 over 27 s, one in 100 over 100 s), cut at 15 minutes.
Try it with a queue of concurrency 4. Made by bench/make_traces.py.""",
        tasks,
    )


TRACES: dict[str, Callable[[random.Random], str]] = {
    "long-tasks": long_tasks,
    "spikes": spikes,
    "ramp": ramp,
    "flood": flood,
    "mixed": mixed,
    "beat": beat,
    "trickle": trickle,
    "heavy-tailed": heavy_tailed,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for name, make in TRACES.items():
        path = args.out / f"{name}.csv"
        path.write_text(make(random.Random(f"{name}:1")))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
