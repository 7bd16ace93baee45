"""Scale: many WorkerPools with 3 queues each: time until all are Ready, then, at steady state (every queue
empty), the operator's memory, CPU per minute, API writes per minute, log lines per minute, the event
loop's lag, the broker poll time, and where the memory goes. Goal: zero writes when nothing changes.

The operator runs in its own process against the API emulator (bench/api_server.py); all pools share one
redis-server (one pipelined round trip per poll for all of them). Baseline, same run: the same operator
with no pool. ``--realistic`` makes the emulator answer with objects as big as a real API server's
(managedFields, defaulted Deployments, a controller-manager writing Deployment status at its API QPS,
``--controller-qps``, 20 as on a real cluster; 0: unbounded). The event loop's lag is measured while the pools are
created and become Ready, and again at steady state.

    .venv/bin/python -m bench.bench_operator_scale [--pools 1000] [--seconds 60] [--poll 5] [--realistic]
        [--controller-qps 20]

With ``PYTHONTRACEMALLOC=25`` in the environment the operator also traces its allocations (slower and
bigger: use that run for the memory breakdown only, not for the CPU and RSS figures).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.kube import KubeCluster

from bench.api_server import BenchApiServer
from bench.operator_harness import (
    api_writes,
    cluster_and_redis,
    create_pool,
    create_secret,
    operator_log_lines,
    operator_process,
    probe_now,
    process_cpu_seconds,
    process_rss_mib,
    scrape,
    wait_watching,
)
from bench.report import markdown_table, record
from workerpool_operator import API_GROUP, PLURAL
from workerpool_operator.local.embedded_redis import free_port

QUEUES = ["default", "mail", "reports"]
POLL_SECONDS = "workerpool_broker_poll_seconds"


def _steady(kube: KubeCluster, pid: int, seconds: float) -> dict[str, float]:
    """CPU seconds per minute, RSS (MiB), API writes and log lines per minute over ``seconds``."""
    cpu0, writes0, lines0 = process_cpu_seconds(pid), api_writes(kube), operator_log_lines(kube)
    time.sleep(seconds)
    cpu1, writes1, lines1 = process_cpu_seconds(pid), api_writes(kube), operator_log_lines(kube)
    per_minute = 60.0 / seconds
    return {
        "cpu": (cpu1 - cpu0) * per_minute,
        "rss": process_rss_mib(pid),
        "peak": process_rss_mib(pid, "VmHWM"),
        "writes": round((writes1 - writes0) * per_minute),
        "lines": round((lines1 - lines0) * per_minute),
    }


def _ready_count(kube: KubeCluster) -> int:
    """Pools Ready, counted in the emulator's store (a copy of 10,000 pools every 5 s took a tenth of its CPU)."""
    assert isinstance(kube.emulator, BenchApiServer)
    return kube.emulator.ready_count(API_GROUP, PLURAL)


def _create_pools(api: Any, redis_url: str, pools: int, poll: float) -> None:
    def one(number: int) -> None:
        namespace = f"bench-{number:05d}"  # one namespace each, as separate teams' pools would be
        create_secret(api, namespace, redis_url)
        create_pool(api, namespace, f"pool{number:05d}", QUEUES, {"pollIntervalSeconds": poll})

    with ThreadPoolExecutor(4) as workers:
        list(workers.map(one, range(pools)))


def _poll_ms(before: dict[str, float], after: dict[str, float]) -> float:
    count = after.get(f"{POLL_SECONDS}_count", 0) - before.get(f"{POLL_SECONDS}_count", 0)
    total = after.get(f"{POLL_SECONDS}_sum", 0) - before.get(f"{POLL_SECONDS}_sum", 0)
    return 1000 * total / count if count else float("nan")


def _frozen(kube: KubeCluster, operator: Any, probe: Path, seconds: float) -> dict[str, Any]:
    """The same steady state once the operator called gc.freeze() (SIGUSR2): full collections then scan only
    what was allocated since."""
    operator.send_signal(signal.SIGUSR2)
    time.sleep(5)
    probe_now(operator, probe)
    steady = _steady(kube, operator.pid, seconds)
    inside = probe_now(operator, probe)
    return {"steady": steady, "loop_lag": inside["loop_lag"], "gc_gen2": inside["gc_gen2"]}


def _wait_ready(
    kube: KubeCluster, pid: int, pools: int, started: float, timeout: float
) -> list[tuple[float, int, float, float]]:
    """Until every pool is Ready (or ``timeout`` s): (seconds, pools Ready, operator RSS MiB, CPU s) every 30 s."""
    progress: list[tuple[float, int, float, float]] = []
    while True:
        elapsed = time.monotonic() - started
        ready = _ready_count(kube)
        if not progress or elapsed - progress[-1][0] >= 30 or ready >= pools:
            progress.append((elapsed, ready, process_rss_mib(pid), process_cpu_seconds(pid)))
            print(f"{elapsed:6.0f} s: {ready:,} of {pools:,} Ready, operator RSS {progress[-1][2]:.0f} MiB", flush=True)
        if ready >= pools or elapsed > timeout:
            return progress
        time.sleep(5)


def _settle(pid: int, seconds: float) -> list[tuple[float, float]]:
    """Wait ``seconds`` after the pools are Ready, sampling the operator's RSS (MiB) every 5 s."""
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        samples.append((round(elapsed, 1), process_rss_mib(pid)))
        time.sleep(5)
    print("after Ready, operator RSS: " + ", ".join(f"{rss:.0f}" for _, rss in samples) + " MiB", flush=True)
    return samples


def run(
    pools: int,
    seconds: float,
    poll: float,
    realistic: bool,
    freeze: bool = False,
    ready_timeout: float = 7200,
    controller_qps: float | None = 20.0,
    operator_source: Path | None = None,
) -> dict[str, Any]:
    port = free_port()
    with cluster_and_redis(realistic, controller_qps=controller_qps) as (kube, redis, api):
        probe = kube.kubeconfig.parent / "probe.json"
        env = {"WORKERPOOL_OPERATOR_METRICS_PORT": str(port)}
        if operator_source is not None:  # another version's package first on the operator's path
            paths = [str(operator_source / "operator"), os.environ.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
        with operator_process(kube, probe, **env) as operator:
            operator_started = time.monotonic()
            wait_watching(kube)
            time.sleep(5)
            base = _steady(kube, operator.pid, min(seconds, 30.0))
            probe_now(operator, probe, memory=False)  # the lag and GC figures from here: the creation's

            started = time.monotonic()
            events0 = kube.emulator.events_posted  # type: ignore[union-attr]
            _create_pools(api, redis.url, pools, poll)
            created = time.monotonic() - started
            progress = _wait_ready(kube, operator.pid, pools, started, ready_timeout)
            converged = time.monotonic() - started
            ready_peak = process_rss_mib(operator.pid, "VmHWM")
            since_operator = time.monotonic() - operator_started
            creating = probe_now(operator, probe, memory=False)  # lag and GC while the pools were created
            events = kube.emulator.events_posted - events0  # type: ignore[union-attr]
            deployments = len(kube.objects("apps/v1/deployments"))
            settling = _settle(operator.pid, 35)  # past the status refresh
            backlog = kube.emulator.controller_backlog  # type: ignore[union-attr]
            settled = probe_now(operator, probe, memory=False)  # resets the lag and GC figures
            before = scrape(port)
            steady = _steady(kube, operator.pid, seconds)
            after = scrape(port)
            inside = probe_now(operator, probe)
            frozen = _frozen(kube, operator, probe, seconds) if freeze else None
            status_writes = kube.emulator.status_writes  # type: ignore[union-attr]
            controller_calls = kube.emulator.controller_calls  # type: ignore[union-attr]
            steady_events = kube.emulator.events_posted - events0 - events  # type: ignore[union-attr]
    return {
        "controller_qps": controller_qps,
        "since_operator": since_operator,
        "ready_peak": ready_peak,
        "creating": creating,
        "events": events,
        "steady_events": steady_events,
        "controller_backlog": backlog,
        "controller_calls": controller_calls,
        "pools": pools,
        "realistic": realistic,
        "poll": poll,
        "created": created,
        "converged": converged,
        "ready": progress[-1][1],
        "progress": progress,
        "settling": settling,
        "settled_pymalloc": settled.get("pymalloc"),
        "deployments": deployments,
        "status_writes": status_writes,
        "base": base,
        "steady": steady,
        "poll_ms": _poll_ms(before, after),
        "series": after.get("_series", 0),
        "inside": inside,
        "frozen": frozen,
    }


def report(result: dict[str, Any], seconds: float) -> str:
    base, steady, inside = result["base"], result["steady"], result["inside"]
    pools = result["pools"]
    lag = inside["loop_lag"]
    creating = result["creating"]["loop_lag"]
    rows: list[list[object]] = [
        ["no pool (baseline)", f"{base['cpu']:.2f}", f"{base['rss']:.0f}", base["writes"], base["lines"]],
        [
            f"{pools:,} pools x {len(QUEUES)} queues",
            f"{steady['cpu']:.2f}",
            f"{steady['rss']:.0f}",
            steady["writes"],
            steady["lines"],
        ],
        [
            "difference per pool",
            f"{(steady['cpu'] - base['cpu']) / pools * 1000:.2f} ms",
            f"{(steady['rss'] - base['rss']) / pools * 1024:.0f} KiB",
            "-",
            "-",
        ],
    ]
    owners = [[name, f"{entry['MiB']:.1f}", f"{entry['count']:,}"] for name, entry in inside["owners"].items()]
    traced = [[entry["owner"], f"{entry['MiB']:.1f}"] for entry in inside["traced"]]
    kind = "realistic API objects" if result["realistic"] else "plain API objects"
    text = (
        f"{pools:,} WorkerPools x {len(QUEUES)} queues ({result['deployments']:,} Deployments), {kind}, one "
        f"redis-server, poll every {result['poll']:g} s; operator in its own process on the API emulator"
        f"{' (PYTHONTRACEMALLOC: slower and bigger)' if os.environ.get('PYTHONTRACEMALLOC') else ''}. "
        f"Pools created in {result['created']:.0f} s; {_ready_text(result)} "
        f"({result['since_operator']:.0f} s after the operator started; {result['status_writes']:,} Deployment status "
        f"writes and {result['controller_calls']:,} API calls in all by the simulated controller-manager at "
        f"{_qps_text(result)}, {result['controller_backlog']:,} Deployments still in its queue at steady state; "
        f"{result['events']:,} Events posted until all were Ready, {result['steady_events']:,} after). "
        f"While the pools were created and became Ready: event-loop lag p99 {creating['p99_ms']:.1f} ms, max "
        f"{creating['max_ms']:.0f} ms; {result['creating']['gc_gen2']['count']} full collections, the longest "
        f"{result['creating']['gc_gen2']['max_ms']:.0f} ms; peak RSS until all were Ready "
        f"{result['ready_peak']:.0f} MiB. "
        f"{_pymalloc_text(result)}"
        f"Steady state measured over {seconds:g} s; the operator's peak RSS until then {steady['peak']:.0f} MiB.\n\n"
        + markdown_table(["case", "CPU s/min", "RSS MiB", "API writes/min", "log lines/min"], rows)
        + f"\n\nAt steady state: broker poll {result['poll_ms']:.1f} ms on average ({pools * len(QUEUES):,} "
        f"queues); event-loop lag p99 {lag['p99_ms']:.1f} ms, max {lag['max_ms']:.0f} ms "
        f"({lag['samples']} samples every 100 ms); {inside['gc_gen2']['count']} full garbage collections, "
        f"{inside['gc_gen2']['total_s']:.2f} s in all, the longest {inside['gc_gen2']['max_ms']:.0f} ms; "
        f"{inside['objects']:,} Python objects ({inside.get('frozen_objects', 0):,} frozen); "
        f"{result['series']:,} Prometheus series.\n\n"
        "Held memory by owner (deep size, each object counted once, in this order):\n\n"
        + markdown_table(["owner", "MiB", "count"], owners)
        + (
            "\n\nAllocated memory still live, by the code that allocated it (tracemalloc, "
            f"{inside['traced_total_MiB']:.0f} MiB traced):\n\n" + markdown_table(["allocated by", "MiB"], traced)
            if traced
            else ""
        )
        + f"\n\nGoal zero writes at steady state: {'met' if steady['writes'] == 0 else 'NOT met'}."
        + (_frozen_text(result["frozen"], steady, lag) if result["frozen"] else "")
    )
    return text


def _pymalloc_text(result: dict[str, Any]) -> str:
    """What Python's small-object allocator held when all were Ready and once settled: the memory it keeps from
    the system (its 1 MiB arenas, given back only when empty) against the bytes of live objects in them."""
    ready, settled = result["creating"].get("pymalloc"), result.get("settled_pymalloc")
    if not ready or not settled:
        return ""

    def held(figures: dict[str, int]) -> str:
        arenas = figures.get("arenas allocated current", 0)
        return f"{arenas} MiB of arenas, {figures.get('bytes in allocated blocks', 0) / 2**20:.0f} MiB live"

    return (
        f"Python's allocator when all were Ready: {held(ready)}, {result['creating'].get('tasks', 0):,} asyncio tasks "
        f"(kopf's per-object workers among them); once settled: {held(settled)}. "
    )


def _qps_text(result: dict[str, Any]) -> str:
    qps = result.get("controller_qps")
    return f"{qps:g} QPS" if qps else "no QPS bound"


def _ready_text(result: dict[str, Any]) -> str:
    if result["ready"] >= result["pools"]:
        return f"all Ready {result['converged']:.0f} s after the first was created"
    return f"only {result['ready']:,} Ready {result['converged']:.0f} s after the first was created (measured so)"


def _frozen_text(frozen: dict[str, Any], steady: dict[str, float], lag: dict[str, float]) -> str:
    after, after_lag, collections = frozen["steady"], frozen["loop_lag"], frozen["gc_gen2"]
    return (
        "\n\nThe same steady state after `gc.freeze()` in the operator (the objects alive then are left out of "
        f"full collections): CPU {after['cpu']:.2f} s/min (was {steady['cpu']:.2f}), RSS {after['rss']:.0f} MiB, "
        f"event-loop lag p99 {after_lag['p99_ms']:.1f} ms, max {after_lag['max_ms']:.0f} ms (was "
        f"{lag['p99_ms']:.1f} / {lag['max_ms']:.0f}); {collections['count']} full collections, "
        f"{collections['total_s']:.2f} s in all, the longest {collections['max_ms']:.0f} ms."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=5.0, help="pollIntervalSeconds of every pool")
    parser.add_argument("--realistic", action="store_true", help="objects as a real API server returns them")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--freeze", action="store_true", help="then measure again after gc.freeze() in the operator")
    parser.add_argument("--ready-timeout", type=float, default=7200, help="seconds to wait for every pool Ready")
    parser.add_argument(
        "--controller-qps", type=float, default=20.0, help="the simulated controller-manager's API QPS (0: unbounded)"
    )
    parser.add_argument(
        "--operator-source",
        type=Path,
        help="run the operator of this checkout (its operator/ folder) instead of this one's: a before/after pair, "
        "same bench script, same session",
    )
    args = parser.parse_args(argv)
    tracemalloc.stop()  # PYTHONTRACEMALLOC is for the operator's process (it inherits it), not the emulator's
    qps = args.controller_qps or None
    result = run(
        args.pools, args.seconds, args.poll, args.realistic, args.freeze, args.ready_timeout, qps, args.operator_source
    )
    if args.json:
        import json

        args.json.write_text(json.dumps(result, indent=1))
    kind = "realistic" if args.realistic else "plain"
    title = f"Operator at scale: {args.pools:,} pools, {kind} API objects"
    if args.operator_source is not None:
        commit = subprocess.run(
            ["git", "-C", str(args.operator_source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        title += f", the operator of {commit or 'another checkout'}"
    record(title, report(result, args.seconds))


if __name__ == "__main__":
    main()
