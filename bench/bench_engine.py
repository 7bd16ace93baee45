"""How long `decide` takes for many queues at once: one scaling tick of a large operator.

Target (issue 5, again issue 22): 10,000 queues in under 50 ms. The baseline, measured in the same run, is the least any
engine must do per queue: read backlog and in-flight and compute ceil(demand / target). The ratio says what
the policy (window, step limit, idle clock, reasons, state) costs on top of that.

    .venv/bin/python -m bench.bench_engine [--queues 10000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time

from bench.report import markdown_table, record
from workerpool_operator.engine import POLICIES, QueueState, ScalingPolicy, decide
from workerpool_operator.observation import QueueObservation, WorkerLoad


def reports(queue: int, busy: list[int], done: list[int], draining: bool, step: int) -> tuple[WorkerLoad, ...]:
    """Worker reports of one queue at one poll: ``done`` counters move on by 3 tasks a poll; each worker reports
    every 2 s at a phase of its own (its heartbeat), as the worker entrypoint does."""
    return tuple(
        WorkerLoad(
            f"q{queue}-w{j}", running=b, done=d + 3 * step, heartbeat=899.0 + 2.0 * step + (j % 7) * 0.25,
            started=500.0, draining=draining and j == 0,
        )
        for j, (b, d) in enumerate(zip(busy, done, strict=True))
    )  # fmt: skip


def workload(queues: int, seed: int = 1) -> tuple[list[QueueObservation], list[QueueState], list[ScalingPolicy]]:
    """Queues in every situation: asleep, waking, scaling up, holding in the window, scaling down, draining,
    failing; half on each policy, half of those with a target wait of 60 s, with estimates learned from earlier
    reports (each worker's heartbeat moving on by 2 s a poll, as the operator reads them)."""
    rng = random.Random(seed)
    policies = [
        ScalingPolicy(max_replicas=20, target_per_replica=t, min_replicas=m, policy=p, target_wait=w)
        for t in (1, 4, 8, 200)
        for m in (0, 1)
        for p in POLICIES
        for w in (None, 60.0)
    ]
    observations, states, chosen = [], [], []
    for i in range(queues):
        policy = policies[i % len(policies)]
        replicas = rng.choice([0, 0, 1, 2, 3, 5, 8, 13, 20])
        busy = [rng.randint(0, policy.target_per_replica) for _ in range(replicas)]
        done = [rng.randint(0, 5000) for _ in range(replicas)]
        draining = rng.random() < 0.1

        workers = reports(i, busy, done, draining, 5)
        backlog = rng.choice([0, 0, 0, rng.randint(1, 50), rng.randint(50, 5000)])
        error = "timeout" if rng.random() < 0.02 else None
        observations.append(QueueObservation(f"q{i}", backlog, sum(busy), workers, error=error, replicas=replicas))
        # a state as a few earlier polls leave it
        state = QueueState()
        since = rng.choice([900.0, 949.0, 1000.0])  # windows run out, half run out, still running
        for step in range(4):
            demand = rng.randint(0, policy.target_per_replica * replicas // 2)
            then = reports(i, busy, done, draining, step)
            earlier = QueueObservation(f"q{i}", demand, sum(busy), then, replicas=replicas)
            _, state = decide(earlier, state, policy, since + 2.0 * step)
        states.append(state)
        chosen.append(policy)
    return observations, states, chosen


def baseline(observations: list[QueueObservation], policies: list[ScalingPolicy]) -> list[int]:
    return [-(-(o.backlog + o.in_flight) // p.target_per_replica) for o, p in zip(observations, policies, strict=True)]


def engine(observations: list[QueueObservation], states: list[QueueState], policies: list[ScalingPolicy]) -> list[int]:
    now = 1010.0
    return [decide(o, s, p, now)[0].desired_replicas for o, s, p in zip(observations, states, policies, strict=True)]


def best_and_median(run: object, rounds: int) -> tuple[float, float]:
    """Process CPU time (ms), so that other work on a shared machine does not count against the engine."""
    timings = []
    for _ in range(rounds):
        start = time.process_time()
        run()  # type: ignore[operator]
        timings.append(time.process_time() - start)
    return min(timings) * 1000, statistics.median(timings) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    observations, states, policies = workload(args.queues)
    base_best, base_median = best_and_median(lambda: baseline(observations, policies), args.rounds)
    best, median = best_and_median(lambda: engine(observations, states, policies), args.rounds)
    by_policy = {}
    for name in POLICIES:
        pinned = [dataclasses.replace(p, policy=name) for p in policies]
        by_policy[name] = best_and_median(lambda pinned=pinned: engine(observations, states, pinned), args.rounds)
    directions = {"up": 0, "down": 0, "none": 0}
    for o, s, p in zip(observations, states, policies, strict=True):
        directions[decide(o, s, p, 1010.0)[0].direction] += 1
    per_queue = 1000 / args.queues
    table = markdown_table(
        ["case", f"best of {args.rounds} (CPU ms)", "median (CPU ms)", "per queue (µs)", "target"],
        [
            [
                "baseline: ceil(demand/target)",
                f"{base_best:.1f}",
                f"{base_median:.1f}",
                f"{base_best * per_queue:.2f}",
                "-",
            ],
            ["decide(), half on each policy", f"{best:.1f}", f"{median:.1f}", f"{best * per_queue:.2f}", "< 50 ms"],
            *[
                [f"decide(), every queue on {name}", f"{b:.1f}", f"{m:.1f}", f"{b * per_queue:.2f}", "-"]
                for name, (b, m) in by_policy.items()
            ],
        ],
    )
    verdict = "meets" if median < 50 else "misses"
    body = (
        f"`decide` for {args.queues:,} queues (mixed: {directions['up']} scaling up, {directions['down']} down, "
        f"{directions['none']} holding, drains included; half on each policy and half with a target wait of 60 s, "
        f"which only throughput uses; 2 % failed observations; workers report every 2 s)."
        f"\n\n{table}\n\n"
        f"decide / baseline: {best / base_best:.1f}x. The median {verdict} the 50 ms target on this machine."
    )
    record("Scaling engine: decide() for many queues", body)


if __name__ == "__main__":
    main()
