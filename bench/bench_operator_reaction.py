"""Reaction time: from a burst of tasks landing in Redis to the Deployment's replicas changing.

The operator runs in its own process against the API emulator, with the default poll interval. Each trial
pushes one burst of real Celery messages at a random moment (not in step with the poll timer) and waits
until the Deployment's replica count moves. Goal: p50 under one poll interval (the baseline, same run);
KEDA's defaults take 15 to 45 s (30 s polling plus the HPA's 15 s sync).

    .venv/bin/python -m bench.bench_operator_reaction [--trials 30]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from tests.operator_helpers import enqueue

from bench.operator_harness import cluster_and_redis, create_pool, create_secret, operator_process, wait_watching
from bench.report import markdown_table, record
from workerpool_operator.spec import DEFAULT_POLL_INTERVAL

NS = "bench"


def _replicas(kube, name: str) -> int | None:  # type: ignore[no-untyped-def]
    found = kube.objects("apps/v1/deployments", NS).get(name)
    return None if found is None else int(found["spec"].get("replicas", 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args(argv)
    interval = DEFAULT_POLL_INTERVAL
    latencies: list[float] = []
    with cluster_and_redis() as (kube, redis, api), operator_process(kube):
        wait_watching(kube)
        create_secret(api, NS, redis.url)
        scaling = {
            "scaleUp": {"pods": 1000, "percent": 1000, "periodSeconds": 0},
            "scaleDownStabilizationSeconds": 3600,
        }
        create_pool(api, NS, "shop", ["default"], scaling)  # concurrency 1: one replica per task
        deadline = time.monotonic() + 60
        while _replicas(kube, "shop-default") is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no Deployment after 60 s")
            time.sleep(0.05)
        rng = random.Random(6)
        pushed = 0
        for _ in range(args.trials):
            time.sleep(rng.uniform(0, interval))
            before = _replicas(kube, "shop-default")
            burst = rng.randint(1, 5)
            enqueue(redis.url, "default", burst)
            pushed += burst
            landed = time.monotonic()
            while _replicas(kube, "shop-default") == before:
                if time.monotonic() - landed > 30:
                    raise RuntimeError("replicas did not move within 30 s")
                time.sleep(0.005)
            latencies.append(time.monotonic() - landed)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    rows = [
        ["p50", f"{p50:.2f} s", f"{p50 / interval:.2f}"],
        ["p99", f"{p99:.2f} s", f"{p99 / interval:.2f}"],
        ["max", f"{latencies[-1]:.2f} s", f"{latencies[-1] / interval:.2f}"],
    ]
    body = (
        f"{args.trials} bursts of 1 to 5 real Celery messages at random moments; operator in its own process on the "
        f"API emulator; poll interval {interval:g} s (the default, the baseline).\n\n"
        + markdown_table(["reaction (burst in Redis -> Deployment replicas changed)", "time", "x poll interval"], rows)
        + f"\n\nGoal p50 < 1 poll interval: {'met' if p50 < interval else 'NOT met'}. "
        "For comparison, KEDA's defaults react in 15 to 45 s (30 s polling, then the HPA's 15 s sync)."
    )
    record("Operator reaction time", body)


if __name__ == "__main__":
    main()
