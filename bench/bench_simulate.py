"""The simulator's speed on a 24-hour trace, and our policy against the KEDA model on every shipped trace.

Targets (issue 5): a 24-hour trace simulates in under 10 s; on the shipped traces, with default settings,
our policy beats the KEDA model on task-wait p95 and on replica-seconds, or docs/simulator.md says why not.
The speed baseline, measured in the same run, is drawing the trace's tasks (what any replay must do).

    .venv/bin/python -m bench.bench_simulate [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.report import markdown_table, record
from workerpool_operator.sim.simulate import DEFAULT_SERVICE_TIME, QueueSetup, SimResult, simulate
from workerpool_operator.sim.trace import draw_tasks, read_trace
from workerpool_operator.spec import WorkerPool

TRACES = Path(__file__).resolve().parent.parent / "examples" / "traces"
# The queue each trace's header suggests; everything else is the WorkerPool's defaults.
QUEUES = {
    "burst": {"name": "burst", "concurrency": 8, "maxReplicas": 20},
    "daily": {"name": "daily", "concurrency": 8, "maxReplicas": 20},
    "spiky": {"name": "spiky", "concurrency": 16, "maxReplicas": 20},
    "long": {"name": "long", "concurrency": 2, "maxReplicas": 10},
}


def queue_setup(queue: dict[str, object]) -> QueueSetup:
    pool = WorkerPool.from_object(
        {
            "apiVersion": "workerpool.dev/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": "bench"},
            "spec": {
                "broker": {"url": "redis://redis:6379/0"},
                "app": "bench.celery:app",
                "template": {"image": "registry.example/bench:1"},
                "queues": [queue],
            },
        }
    )
    name = str(queue["name"])
    spec = pool.spec
    return QueueSetup(name, spec.policy_for(name), spec.queue(name).concurrency, spec.poll_interval_for(name))


def run(trace_name: str, seed: int) -> tuple[SimResult, SimResult, float, float]:
    trace = read_trace(str(TRACES / f"{trace_name}.csv"))
    setup = queue_setup(QUEUES[trace_name])
    start = time.process_time()
    tasks = draw_tasks(trace, DEFAULT_SERVICE_TIME, seed)
    drawn = time.process_time() - start
    start = time.process_time()
    ours = simulate(tasks, setup, "ours", trace_end=trace.end)
    took = time.process_time() - start
    keda = simulate(tasks, setup, "keda", trace_end=trace.end)
    return ours, keda, took, drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per trace (the table shows seed 1)")
    args = parser.parse_args()

    speed_rows, compare_rows, notes = [], [], []
    for trace_name in QUEUES:
        runs = [run(trace_name, seed) for seed in range(1, args.seeds + 1)]
        ours, keda, _, drawn = runs[0]
        setup = queue_setup(QUEUES[trace_name])
        if trace_name == "daily":
            timings = [r[2] for r in runs]
            speed_rows.append(
                [
                    f"{trace_name} ({ours.tasks:,} tasks, {ours.duration / 3600:.1f} h)",
                    f"{drawn:.2f}",
                    f"{min(timings):.2f}",
                    f"{statistics.median(timings):.2f}",
                    f"{ours.duration / min(timings):,.0f}x",
                    "< 10 s",
                ]
            )
        wins_wait = sum(1 for o, k, _, _ in runs if o.wait_percentile(95) <= k.wait_percentile(95))
        wins_cost = sum(1 for o, k, _, _ in runs if o.replica_seconds <= k.replica_seconds)
        compare_rows.append(
            [
                f"{trace_name} (concurrency {setup.concurrency}, max {setup.policy.max_replicas})",
                f"{ours.tasks:,}",
                f"{ours.wait_percentile(95):.1f} / {keda.wait_percentile(95):.1f}",
                f"{ours.wait_percentile(50):.1f} / {keda.wait_percentile(50):.1f}",
                f"{ours.replica_seconds:,.0f} / {keda.replica_seconds:,.0f}",
                f"{ours.scale_events} / {keda.scale_events}",
                f"{wins_wait} of {len(runs)}",
                f"{wins_cost} of {len(runs)}",
            ]
        )
        p95_o = statistics.median(r[0].wait_percentile(95) for r in runs)
        p95_k = statistics.median(r[1].wait_percentile(95) for r in runs)
        cost_o = statistics.median(r[0].replica_seconds for r in runs)
        cost_k = statistics.median(r[1].replica_seconds for r in runs)
        notes.append(
            f"- {trace_name}: median over seeds: wait p95 {p95_o:.1f} s vs {p95_k:.1f} s, "
            f"replica-seconds {cost_o:,.0f} vs {cost_k:,.0f}"
        )

    speed = markdown_table(
        ["trace", "draw tasks (CPU s, baseline)", "simulate, best (CPU s)", "median (CPU s)", "simulated / real",
         "target"],
        speed_rows,
    )  # fmt: skip
    compare = markdown_table(
        ["trace", "tasks", "wait p95 (s) ours / keda", "wait p50 (s) ours / keda", "replica-seconds ours / keda",
         "scale events ours / keda", "ours p95 <= keda", "ours cost <= keda"],
        compare_rows,
    )  # fmt: skip
    body = (
        "Speed: one policy (ours) over the 24-hour trace, "
        f"{args.seeds} seeds.\n\n{speed}\n\n"
        "Our policy against the KEDA model (docs/simulator.md), default settings, pod start-up 20 s, "
        f"seed 1 in the table; the last two columns count the seeds (1..{args.seeds}) where ours is at least as "
        f"good.\n\n{compare}\n\n" + "\n".join(notes)
    )
    record("Simulator: speed, and our policy against the KEDA model", body)


if __name__ == "__main__":
    main()
