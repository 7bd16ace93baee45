"""Our policy against the KEDA model on every shipped trace, judged on the goal of issue 13; and the
simulator's speed on the 24-hour trace.

The goal, per trace, with the defaults a user gets: task wait p95 <= 0.5x the KEDA model's; replica-seconds
<= max(0.5x the KEDA model's, 1.5x the physical minimum); no task killed by a scale-down; every task done.
The settings are those of the independent model the issue measured with: prefetch multiplier 1, pod start-up
10 s, grace 30 s; tasks are acks_late, so what KEDA's scale-downs kill comes back after the visibility
timeout (1 h) instead of being lost. The second table repeats the comparison with start-up delays spread over
10 to 30 s, the third with Celery's default early acknowledgement (a busy worker prefetches, a killed task is
lost). The speed baseline, measured in the same run, is drawing the trace's tasks.

A 30 s grace is not a fair setting for tasks of up to 40 minutes: our scale-downs drain (up to
``drainTimeoutSeconds``, 3,600 s by default) while KEDA's pods are killed 30 s after SIGTERM. So each long-task
trace (``LONG_TASK_TRACES``) gets a second row where both sides' pods have a ``LONG_GRACE`` grace, longer than
any of their tasks, as a user of KEDA running such tasks would set it.

The README's simulator table is the first table's figures (``README_ROWS``, ``readme_cells``):
tests/test_readme_table.py re-runs every row and compares it with the README's text, so the README, this
bench and the engine cannot disagree without a test failing.

    .venv/bin/python -m bench.bench_simulate [--traces burst,long] [--startup 10] [--spread uniform:10,30]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import markdown_table, record
from workerpool_operator.sim.command import DEFAULT_SERVICE_TIME, setup_for, without_draining
from workerpool_operator.sim.simulate import QueueSetup, SimResult, simulate
from workerpool_operator.sim.trace import draw_tasks, read_trace
from workerpool_operator.spec import WorkerPool

TRACES = Path(__file__).resolve().parent.parent / "examples" / "traces"
# The queue each trace's header suggests (at most 20 replicas); everything else is the WorkerPool's defaults.
CONCURRENCY = {"burst": 8, "daily": 8, "spiky": 16, "long": 2}
NAMES = (
    "burst", "daily", "spiky", "long", "long-tasks", "spikes", "ramp", "flood", "mixed", "beat",
    "trickle", "heavy-tailed",
)  # fmt: skip
# Tasks of minutes: 5 to 40 (long, long-tasks), 2 to 15 (mixed), up to 15 (heavy-tailed).
LONG_TASK_TRACES = ("long", "long-tasks", "mixed", "heavy-tailed")
LONG_GRACE = 2400.0  # seconds: longer than every task of those traces (the longest, on long-tasks: 2,395 s)
STARTUP = "10"  # pod start-up of the main table (and the README's)
SEED = 1  # the tasks drawn from the trace and the start-up delays


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the comparison: a trace, and the pods' grace where it is not the pool's default (30 s)."""

    trace: str
    grace: float | None = None

    @property
    def label(self) -> str:
        return self.trace if self.grace is None else f"{self.trace}, grace {self.grace:,.0f} s"


def rows(names: Sequence[str]) -> list[Row]:
    """A row per trace, and after each long-task trace its row with the long grace."""
    table: list[Row] = []
    for name in names:
        table += [Row(name), Row(name, LONG_GRACE)] if name in LONG_TASK_TRACES else [Row(name)]
    return table


README_ROWS = tuple(rows(NAMES))  # the README's simulator table, in its order


def queue_setup(trace: str, target_wait: float | None = None, grace: float | None = None) -> QueueSetup:
    queue: dict[str, Any] = {"name": "bench", "concurrency": CONCURRENCY.get(trace, 4), "maxReplicas": 20}
    if target_wait is not None:
        queue["scaling"] = {"targetWaitSeconds": target_wait}
    template: dict[str, Any] = {"image": "registry.example/bench:1"}
    if grace is not None:
        template["terminationGracePeriodSeconds"] = int(grace)
    pool = WorkerPool.from_object(
        {
            "apiVersion": "workerpool.dev/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": "bench"},
            "spec": {
                "broker": {"url": "redis://redis:6379/0"},
                "app": "bench.celery:app",
                "template": template,
                "queues": [queue],
            },
        }
    )
    return setup_for(pool, "bench")


class Run:
    """Both policies (and, when asked for, ours without draining) on one row."""

    def __init__(self, row: Row, startup: str = STARTUP, acks_late: bool = True) -> None:
        parsed = read_trace(str(TRACES / f"{row.trace}.csv"))
        start = time.process_time()
        self.tasks = draw_tasks(parsed, DEFAULT_SERVICE_TIME, SEED)
        self.drawn = time.process_time() - start
        self.setup = queue_setup(row.trace, grace=row.grace)
        self.options: dict[str, Any] = {
            "startup_delay": startup, "trace_end": parsed.end, "acks_late": acks_late, "seed": SEED,
        }  # fmt: skip
        start = time.process_time()
        self.ours: SimResult = simulate(self.tasks, self.setup, "ours", **self.options)
        self.took = time.process_time() - start
        self.keda: SimResult = simulate(self.tasks, self.setup, "keda", **self.options)

    @functools.cached_property
    def plain(self) -> SimResult:
        return simulate(self.tasks, without_draining(self.setup), "ours", **self.options)

    def verdict(self) -> tuple[bool, bool, bool, bool]:
        ours, keda = self.ours, self.keda
        wait = ours.wait_percentile(95) <= 0.5 * keda.wait_percentile(95)
        cost = ours.replica_seconds <= max(0.5 * keda.replica_seconds, 1.5 * ours.physical_minimum)
        return wait, cost, ours.killed == 0, ours.finished == ours.tasks

    def row(self, row: Row) -> list[str]:
        ours, keda = self.ours, self.keda
        wait, cost, killed, done = self.verdict()
        bound = max(0.5 * keda.replica_seconds, 1.5 * ours.physical_minimum)
        ratio = ours.wait_percentile(95) / keda.wait_percentile(95) if keda.wait_percentile(95) else 0.0
        name = f"{row.trace} (c{self.setup.concurrency})"
        return [
            name if row.grace is None else f"{name}, grace {row.grace:,.0f} s",
            f"{ours.tasks:,}",
            f"{ours.wait_percentile(95):.1f} / {keda.wait_percentile(95):.1f} ({ratio:.2f}x) {_mark(wait)}",
            f"{ours.replica_seconds:,.0f} / {keda.replica_seconds:,.0f}",
            f"<= {bound:,.0f} {_mark(cost)}",
            f"{ours.cost_ratio:.2f}x",
            f"{ours.killed} / {self.plain.killed} / {keda.killed} {_mark(killed)}",
            f"{ours.finished:,} / {keda.finished:,} {_mark(done)}",
            f"{ours.scale_events} / {keda.scale_events}",
        ]


def readme_cells(run: Run) -> list[str]:
    """A README row's figures, as the README writes them: wait p95 and replica-seconds (ours ÷ the physical
    minimum), ours / KEDA; tasks killed by scale-downs, ours / ours without draining / KEDA."""
    ours, keda = run.ours, run.keda
    return [
        f"{_wait(ours.wait_percentile(95))} s / {_wait(keda.wait_percentile(95))} s",
        f"{ours.replica_seconds:,.0f} / {keda.replica_seconds:,.0f} ({ours.cost_ratio:.1f}×)",  # noqa: RUF001 (the README's sign)
        f"{ours.killed} / {run.plain.killed} / {keda.killed}",
    ]


def _wait(seconds: float) -> str:
    return f"{seconds:,.0f}" if seconds >= 1000 else f"{seconds:.1f}"


def _mark(met: bool) -> str:
    return "met" if met else "**missed**"


HEADER = [
    "trace (concurrency)",
    "tasks",
    "wait p95 (s) ours / keda",
    "replica-seconds ours / keda",
    "goal",
    "ours ÷ physical minimum",
    "killed: ours / ours without draining / keda",
    "done: ours / keda",
    "scale events ours / keda",
]


TARGETS = (10.0, 60.0, 300.0)
BURSTY = ("burst", "spiky", "spikes", "flood", "beat")  # bursty short-task traces: at 60 s, at most half the cost


class Targets:
    """Our policy on one trace at the defaults and with each target wait, judged on issue 22's 'Done when'."""

    def __init__(self, trace: str, startup: str, defaults: SimResult, seconds: float) -> None:
        parsed = read_trace(str(TRACES / f"{trace}.csv"))
        tasks = draw_tasks(parsed, DEFAULT_SERVICE_TIME, 1)
        options: dict[str, Any] = {"startup_delay": startup, "trace_end": parsed.end, "acks_late": True}
        self.trace, self.defaults, self.startup = trace, defaults, seconds
        self.runs = {t: simulate(tasks, queue_setup(trace, t), "ours", **options) for t in TARGETS}

    def verdict(self) -> dict[str, bool]:
        runs, defaults = self.runs, self.defaults
        costs = [defaults.replica_seconds] + [runs[t].replica_seconds for t in TARGETS]
        return {
            "wait": all(runs[t].wait_percentile(95) <= t for t in TARGETS if t >= 2 * self.startup),
            "done": all(r.finished == r.tasks and r.killed == 0 for r in runs.values()),
            "cost": all(later <= earlier for earlier, later in itertools.pairwise(costs)),
            "half": self.trace not in BURSTY or runs[60.0].replica_seconds <= 0.5 * defaults.replica_seconds,
        }

    def row(self) -> list[str]:
        verdict, defaults = self.verdict(), self.defaults
        cells = [f"{self.trace}", f"{defaults.wait_percentile(95):.1f} s, {defaults.replica_seconds:,.0f}"]
        for t in TARGETS:
            run = self.runs[t]
            ratio = run.replica_seconds / defaults.replica_seconds if defaults.replica_seconds else 0.0
            cells.append(f"{run.wait_percentile(95):.1f} s, {run.replica_seconds:,.0f} ({ratio:.2f}x)")
        cells += [_mark(verdict[key]) for key in ("wait", "done", "cost", "half")]
        return cells


TARGET_HEADER = [
    "trace",
    "defaults: wait p95, replica-seconds",
    *[f"target {t:g} s: wait p95, replica-seconds (÷ defaults)" for t in TARGETS],
    "wait p95 <= target (targets >= 2 start-ups)",
    "every task done, none killed",
    "cost falls as the target grows, never above the defaults",
    "at 60 s, <= half the defaults (bursty traces)",
]


def compare_targets(runs: dict[Row, Run], startup: str) -> tuple[str, list[str]]:
    seconds = float(startup) if startup.replace(".", "", 1).isdigit() else 0.0
    results = [Targets(row.trace, startup, run.ours, seconds) for row, run in runs.items() if row.grace is None]
    missed = [
        f"{r.trace} ({', '.join(key for key, met in r.verdict().items() if not met)})"
        for r in results
        if not all(r.verdict().values())
    ]
    return markdown_table(TARGET_HEADER, [r.row() for r in results]), missed


def compare(table: Sequence[Row], startup: str, acks_late: bool = True) -> tuple[str, list[str], dict[Row, Run]]:
    runs = {row: Run(row, startup, acks_late) for row in table}
    missed = [row.label for row, run in runs.items() if not all(run.verdict())]
    return markdown_table(HEADER, [run.row(row) for row, run in runs.items()]), missed, runs


def readme_table(runs: dict[Row, Run]) -> str:
    """The README's table as this run gives it (the first column there describes each trace in words)."""
    header = ["trace", "task wait p95, ours / KEDA", "replica-seconds, ours / KEDA (ours ÷ physical minimum)",
              "tasks killed by scale-downs, ours / ours without draining / KEDA"]  # fmt: skip
    return markdown_table(header, [[row.label, *readme_cells(run)] for row, run in runs.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", default=",".join(NAMES))
    parser.add_argument("--startup", default=STARTUP, help=f"pod start-up of the main table ({STARTUP})")
    parser.add_argument("--spread", default="uniform:10,30", help="pod start-up of the second table")
    args = parser.parse_args()
    table = rows([n for n in args.traces.split(",") if n])
    main_table, missed, runs = compare(table, args.startup)
    spread_table, spread_missed, _ = compare(table, args.spread)
    early_table, early_missed, _ = compare(table, args.startup, acks_late=False)
    body = (
        f"Pod start-up {args.startup} s, prefetch multiplier 1, grace 30 s, acks_late tasks, at most 20 replicas, "
        f"every other setting the WorkerPool's default (policy throughput, drainTimeoutSeconds 3600); seed {SEED}. "
        f"Rows marked grace {LONG_GRACE:,.0f} s: the same trace with both sides' pods given that grace "
        "(terminationGracePeriodSeconds), longer than any of its tasks, so KEDA's scale-downs no longer kill "
        "what they interrupt; ours drains either way.\n\n"
        f"{main_table}\n\nGoal missed on: {'; '.join(missed) or 'none'}.\n\n"
        f"The same with pod start-up delays drawn from `{args.spread}`:\n\n{spread_table}\n\n"
        f"Goal missed on: {'; '.join(spread_missed) or 'none'}.\n\n"
        f"The same with pod start-up {args.startup} s and Celery's default early acknowledgement: a busy worker "
        "reserves as many tasks again as it runs, and a task killed at the end of the grace period is lost (so "
        f"KEDA's 'done' falls short):\n\n{early_table}\n\n"
        f"Goal missed on: {'; '.join(early_missed) or 'none'}. Why, where a trace misses: "
        "[simulator.md](simulator.md#results-on-the-shipped-traces)."
    )
    target_table, target_missed = compare_targets(runs, args.startup)
    body += (
        f"\n\nWith `targetWaitSeconds` of {', '.join(f'{t:g}' for t in TARGETS)} s on the same queues (pod start-up "
        f"{args.startup} s, acks_late; the defaults' column is the first table's):\n\n{target_table}\n\n"
        f"Missed: {'; '.join(target_missed) or 'none'}."
    )
    body += f"\n\nThe README's table (the first table's figures):\n\n{readme_table(runs)}"
    if Row("daily") in runs:
        daily = runs[Row("daily")]
        speed = markdown_table(
            ["trace", "draw tasks (CPU s, baseline)", "simulate ours (CPU s)", "simulated / real", "target"],
            [[f"daily ({daily.ours.tasks:,} tasks, {daily.ours.duration / 3600:.1f} h)", f"{daily.drawn:.2f}",
              f"{daily.took:.2f}", f"{daily.ours.duration / daily.took:,.0f}x", "< 10 s"]],
        )  # fmt: skip
        body += f"\n\nSpeed:\n\n{speed}"
    record("Simulator: our policy against the KEDA model, and speed", body)


if __name__ == "__main__":
    main()
