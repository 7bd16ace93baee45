"""Beat-aware capacity: the hourly beat trace's spikes, with and without the fires that Celery beat announces.

The same queue (examples/beat.yaml without its cron schedule), the same tasks, start-up 10 s. With ``--beat "0 * *
* *"`` the engine is told each next fire an hour ahead (as it reads beat's forecast from the broker) and learns
from each fire how much work the next one brings: the first spike cannot be sized, the later ones are pre-warmed.
Figures: wait p95 of the tasks each spike enqueues, replica-seconds of the whole run.

    .venv/bin/python -m bench.bench_beat_prewarm
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from bench.report import markdown_table, record
from workerpool_operator.sim.command import setup_for
from workerpool_operator.sim.simulate import simulate
from workerpool_operator.sim.trace import draw_tasks, read_trace
from workerpool_operator.spec import WorkerPool

REPO = Path(__file__).resolve().parent.parent
HOUR = 3600.0


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0.0


def main() -> None:
    obj = yaml.safe_load((REPO / "examples" / "beat.yaml").read_text())
    del obj["spec"]["queues"][0]["scaling"]["schedules"]  # no cron schedule: beat's announcements alone
    setup = setup_for(WorkerPool.from_object(obj), "hourly")
    trace = read_trace(str(REPO / "examples" / "traces" / "beat.csv"))
    tasks = draw_tasks(trace, "exp:1", 1)
    rows = []
    for label, beat in (("without announcements", ()), ("with beat's announcements", ("0 * * * *",))):
        result = simulate(tasks, setup, "ours", startup_delay=10, trace_end=trace.end, beat=beat)
        spikes = [
            p95([w for (arrival, _), w in zip(tasks, result.waits, strict=True) if h * HOUR <= arrival < h * HOUR + 10])
            for h in (1, 2, 3)
        ]
        rows.append([label, *(f"{s:.1f} s" for s in spikes), f"{result.replica_seconds:,.0f}"])
    table = markdown_table(["run", "spike 1 wait p95", "spike 2", "spike 3", "replica-seconds"], rows)
    record(
        "Beat-aware capacity on the hourly beat trace",
        "examples/traces/beat.csv through examples/beat.yaml's queue without its cron schedule, start-up 10 s. "
        "The first spike teaches the engine its size; the next ones are pre-warmed one start-up delay early.\n\n"
        + table,
    )


if __name__ == "__main__":
    main()
