"""Scale: many WorkerPools with 3 queues each: operator memory, CPU per minute and API writes per minute at
steady state (nothing changes: every queue is empty). Goal: zero writes when nothing changes.

The operator runs in its own process against the API emulator; all pools share one redis-server (one
pipelined round trip per poll for all of them). Baseline, same run: the same operator with no pool.

    .venv/bin/python -m bench.bench_operator_scale [--pools 1000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import time

from bench.operator_harness import (
    api_writes,
    cluster_and_redis,
    create_pool,
    create_secret,
    operator_process,
    process_cpu_seconds,
    process_rss_mib,
    wait_watching,
)
from bench.report import markdown_table, record
from workerpool_operator import API_GROUP, API_VERSION, PLURAL

QUEUES = ["default", "mail", "reports"]


def _steady(kube, pid: int, seconds: float) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """CPU seconds per minute, RSS (MiB) and API writes per minute over ``seconds``."""
    cpu0, writes0 = process_cpu_seconds(pid), api_writes(kube)
    time.sleep(seconds)
    cpu1, writes1 = process_cpu_seconds(pid), api_writes(kube)
    per_minute = 60.0 / seconds
    return (cpu1 - cpu0) * per_minute, process_rss_mib(pid), round((writes1 - writes0) * per_minute)


def _all_ready(kube, pools: int) -> int:  # type: ignore[no-untyped-def]
    ready = 0
    for pool in kube.objects(f"{API_GROUP}/{API_VERSION}/{PLURAL}").values():
        conditions = (pool.get("status") or {}).get("conditions") or []
        ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    with cluster_and_redis() as (kube, redis, api), operator_process(kube) as operator:
        wait_watching(kube)
        time.sleep(5)
        base_cpu, base_rss, base_writes = _steady(kube, operator.pid, args.seconds)

        started = time.monotonic()
        for i in range(args.pools):
            namespace = f"bench-{i:04d}"  # one namespace each: the emulator lists without label selectors
            create_secret(api, namespace, redis.url)
            create_pool(api, namespace, f"pool{i:04d}", QUEUES, {})
        while (ready := _all_ready(kube, args.pools)) < args.pools:
            if time.monotonic() - started > 1800:
                raise RuntimeError(f"only {ready} of {args.pools} pools Ready after 30 minutes")
            time.sleep(1)
        converged = time.monotonic() - started
        deployments = len(kube.objects("apps/v1/deployments"))
        time.sleep(35)  # past the status refresh of figures: from here on, nothing changes
        cpu, rss, writes = _steady(kube, operator.pid, args.seconds)

    rows: list[list[object]] = [
        ["no pool (baseline)", f"{base_cpu:.2f}", f"{base_rss:.0f}", base_writes],
        [f"{args.pools} pools x {len(QUEUES)} queues", f"{cpu:.2f}", f"{rss:.0f}", writes],
        [
            "difference per pool",
            f"{(cpu - base_cpu) / args.pools * 1000:.2f} ms",
            f"{(rss - base_rss) / args.pools * 1024:.0f} KiB",
            "-",
        ],
    ]
    body = (
        f"{args.pools} WorkerPools x {len(QUEUES)} queues ({deployments} Deployments), one redis-server, default poll "
        f"interval; operator in its own process on the API emulator. All pools Ready {converged:.0f} s after the "
        f"first was created. Steady state measured over {args.seconds:g} s.\n\n"
        + markdown_table(["case", "CPU s/min", "RSS MiB", "API writes/min"], rows)
        + f"\n\nGoal zero writes at steady state: {'met' if writes == 0 else 'NOT met'}."
    )
    record("Operator at scale: steady state", body)


if __name__ == "__main__":
    main()
