"""How long `decide` takes for many queues at once: one scaling tick of a large operator.

Target (issue 5, again issue 22): 10,000 queues in under 50 ms. The baseline, measured in the same run, is the least any
engine must do per queue: read backlog and in-flight and compute ceil(demand / target). The ratio says what
the policy (window, step limit, idle clock, reasons, state) costs on top of that.

It times the pure Python engine, then builds the package as the operator image does (the engine compiled by
mypyc, setup.py) and times that in a fresh interpreter, by the same functions on the same workload.

    .venv/bin/python -m bench.bench_engine [--queues 10000] [--rounds 15] [--pure-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import markdown_table, record
from workerpool_operator.engine import POLICIES, QueueState, ScalingPolicy, decide
from workerpool_operator.observation import QueueObservation, WorkerLoad

REPO = Path(__file__).resolve().parent.parent


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


def measure(
    observations: list[QueueObservation], states: list[QueueState], policies: list[ScalingPolicy], rounds: int
) -> dict[str, tuple[float, float]]:
    """(best, median) CPU ms of the baseline and of decide() on the workload, mixed and per policy."""
    figures = {
        "baseline": best_and_median(lambda: baseline(observations, policies), rounds),
        "mixed": best_and_median(lambda: engine(observations, states, policies), rounds),
    }
    for name in POLICIES:
        pinned = [dataclasses.replace(p, policy=name) for p in policies]
        figures[name] = best_and_median(lambda pinned=pinned: engine(observations, states, pinned), rounds)
    return figures


def build_compiled(root: Path) -> tuple[Path, Path]:
    """The package built as the operator image builds it (``WORKERPOOL_OPERATOR_COMPILE=1``, setup.py: pip with
    build isolation) from a copy of the source in ``root`` (no build/ folder left in the checkout, none of its
    reused), and installed in a folder of its own: (the wheel, that folder). tests/test_engine_compiled.py too."""
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "operator", source / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--quiet"]

    def run(*args: str, **env: str) -> None:
        done = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=600, env={**os.environ, **env})
        if done.returncode:
            raise RuntimeError(f"pip {args[0]} failed:\n{done.stderr}")

    run("wheel", "--no-deps", "-w", str(root / "dist"), str(source), WORKERPOOL_OPERATOR_COMPILE="1")
    (wheel,) = (root / "dist").glob("*.whl")
    site = root / "site"
    run("install", "--no-deps", "--target", str(site), str(wheel))
    return wheel, site


def compiled_figures(queues: int, rounds: int) -> tuple[dict[str, tuple[float, float]], str]:
    """The same measurement in a fresh interpreter that loads the compiled engine (``build_compiled``). Returns the
    figures and the compiled decide module's file name (to show which engine ran)."""
    with tempfile.TemporaryDirectory() as folder:
        _, site = build_compiled(Path(folder))
        run = subprocess.run(
            [sys.executable, "-m", "bench.bench_engine", "--queues", str(queues), "--rounds", str(rounds), "--json"],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(site)},
            cwd=REPO,
        )
    answer = json.loads(run.stdout)
    return {k: tuple(v) for k, v in answer["figures"].items()}, answer["engine"]  # type: ignore[misc]


def rows(figures: dict[str, tuple[float, float]], queues: int, label: str) -> list[list[str]]:
    per_queue = 1000 / queues

    def row(case: str, key: str, target: str = "-") -> list[str]:
        best, median = figures[key]
        return [f"{case}{label}", f"{best:.1f}", f"{median:.1f}", f"{best * per_queue:.2f}", target]

    return [
        row("baseline: ceil(demand/target)", "baseline"),
        row("decide(), half on each policy", "mixed", "< 50 ms"),
        *[row(f"decide(), every queue on {name}", name) for name in POLICIES],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pure-only", action="store_true", help="do not build and time the compiled engine")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # (the compiled run's answer)
    args = parser.parse_args()
    observations, states, policies = workload(args.queues)
    if args.json:
        engine_file = sys.modules[decide.__module__].__file__
        figures = measure(observations, states, policies, args.rounds)
        print(json.dumps({"figures": figures, "engine": Path(engine_file or "").name}))
        return
    directions = {"up": 0, "down": 0, "none": 0}
    for o, s, p in zip(observations, states, policies, strict=True):
        directions[decide(o, s, p, 1010.0)[0].direction] += 1
    pure = measure(observations, states, policies, args.rounds)
    table_rows = rows(pure, args.queues, ", pure Python" if not args.pure_only else "")
    compiled_note = ""
    if not args.pure_only:
        compiled, engine_file = compiled_figures(args.queues, args.rounds)
        table_rows += rows(compiled, args.queues, ", compiled (the operator image)")
        compiled_note = (
            f" Compiled: the package built as the operator image builds it (`WORKERPOOL_OPERATOR_COMPILE=1`, "
            f"setup.py), timed by the same functions in a fresh interpreter that loaded `{engine_file}`; "
            f"pure / compiled: {pure['mixed'][0] / compiled['mixed'][0]:.2f}x (best), compiled decide / its "
            f"baseline: {compiled['mixed'][0] / compiled['baseline'][0]:.1f}x. The compiled median "
            f"{'meets' if compiled['mixed'][1] < 50 else 'misses'} the 50 ms target."
        )
    table = markdown_table(
        ["case", f"best of {args.rounds} (CPU ms)", "median (CPU ms)", "per queue (µs)", "target"], table_rows
    )
    best, median = pure["mixed"]
    verdict = "meets" if median < 50 else "misses"
    body = (
        f"`decide` for {args.queues:,} queues (mixed: {directions['up']} scaling up, {directions['down']} down, "
        f"{directions['none']} holding, drains included; half on each policy and half with a target wait of 60 s, "
        f"which only throughput uses; 2 % failed observations; workers report every 2 s)."
        f"\n\n{table}\n\n"
        f"decide / baseline: {best / pure['baseline'][0]:.1f}x. The pure Python median {verdict} the 50 ms target "
        f"on this machine.{compiled_note}"
    )
    record("Scaling engine: decide() for many queues", body)


if __name__ == "__main__":
    main()
