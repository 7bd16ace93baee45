"""Failover: from SIGKILL of the leader to the next scale-up written by the new leader, with the default Lease
timings (8 s lease, 6 s renew deadline, 2 s retry) and the default 2 s poll. KEDA's operator uses 15 s / 10 s.

Two operator replicas, each a process of its own, elect through the API emulator's Lease; a burst waits in a real
Redis. For each trial: the leader scales the queue up, the test kills it (no release, as on a lost node) and adds
tasks at once; the time until the Deployment's replicas change again is the failover. Goal: p50 <= 10 s, max <= 20 s.

    .venv/bin/python -m bench.bench_failover [--trials 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.conftest import RedisServer
from tests.kube import KubeCluster
from tests.operator_helpers import (
    OperatorProcess,
    create_pool,
    create_secret,
    enqueue,
    pool_manifest,
    replicas,
    wait_for,
)

from bench.report import markdown_table, record

LEASE_NS, LEASE_NAME = "workerpool-system", "workerpool-operator"
ENV = {"WORKERPOOL_OPERATOR_LEASE": f"{LEASE_NS}/{LEASE_NAME}"}  # the default timings


def holder(kube: KubeCluster) -> str | None:
    lease = kube.objects("coordination.k8s.io/v1/leases", LEASE_NS).get(LEASE_NAME)
    return (lease or {}).get("spec", {}).get("holderIdentity") or None


def trial(kube: KubeCluster, redis: RedisServer, workdir: Path, index: int) -> float:
    """One failover, in seconds; the queue starts empty and its pool fresh."""
    name = f"shop{index}"
    queue = f"q{index}"
    queues = [{"name": queue, "concurrency": 1, "maxReplicas": 50}]
    create_pool(kube, pool_manifest(name, queues=queues, scaling={"pollIntervalSeconds": 2}))
    replicas_ = [OperatorProcess(kube, workdir / f"operator-{index}-{i}.log", **ENV) for i in range(2)]
    try:
        wait_for(lambda: holder(kube), timeout=60, message="a leader")
        deployment = f"{name}-{queue}"
        enqueue(redis.url, queue, 2)
        wait_for(lambda: replicas(kube, deployment) == 2, timeout=60, message="first scale-up")
        leader = holder(kube)
        old = next(r for r in replicas_ if f"as {leader}" in r.output())
        old.kill()
        killed = time.monotonic()
        enqueue(redis.url, queue, 3)
        wait_for(lambda: replicas(kube, deployment) == 5, timeout=60, message="the new leader's scale-up")
        return time.monotonic() - killed
    finally:
        for replica in replicas_:
            replica.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="workerpool-failover-"))
    kube = KubeCluster(workdir).start()
    redis = RedisServer(workdir=workdir / "redis").start()
    try:
        create_secret(kube, "redis", {"url": redis.url})
        times = [trial(kube, redis, workdir, i) for i in range(args.trials)]
    finally:
        redis.stop()
        kube.stop()
    times.sort()
    p50, worst = statistics.median(times), times[-1]
    rows = [
        ["trials", str(len(times))],
        ["failover p50", f"{p50:.1f} s (goal <= 10 s)"],
        ["failover max", f"{worst:.1f} s (goal <= 20 s)"],
        ["every trial", ", ".join(f"{t:.1f}" for t in times)],
    ]
    table = markdown_table(["measure", "value"], rows)
    record(
        "Failover: SIGKILL of the leader to the new leader's next scale-up",
        "Two operator processes on the API emulator, default Lease timings (8 s lease, 6 s renew deadline, 2 s "
        "retry) and 2 s poll; each trial kills the leader right after a scale-up and adds tasks at once.\n\n" + table,
    )


if __name__ == "__main__":
    main()
