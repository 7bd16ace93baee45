"""``workerpool-operator demo``: the local runtime, the demo pool and a load generator, for about a minute.

Starts an embedded Redis, runs ``examples/demo/workerpool.yaml`` (a prefork queue for CPU-bound tasks, a gevent
queue for I/O-bound ones), sends bursts to both, and stops once the load is done, every task completed and both
queues are back to zero (or at ``--duration``). Then prints what happened, counted from what the tasks wrote:
tasks sent and completed (exactly once), how long they waited, and the peak workers per queue; with ``--plot``
it draws backlog and workers over time.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import redis

from workerpool_operator import exit_codes
from workerpool_operator.local import demo_app
from workerpool_operator.local.loadgen import LoadPlan, SendResult, demo_plan, send_plan
from workerpool_operator.local.runtime import (
    LocalError,
    LocalRuntime,
    load_pool,
    plan_pool,
    redis_for,
    stop_on_signals,
)
from workerpool_operator.local.view import Sample
from workerpool_operator.scaling_types import PoolResult

DEMO_FILE = Path("examples") / "demo" / "workerpool.yaml"


def demo_file() -> Path:
    """The demo's WorkerPool: from the current directory, else from the checkout this package lives in."""
    candidates = [Path.cwd() / DEMO_FILE, Path(__file__).resolve().parents[3] / DEMO_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise LocalError(
        f"the demo's WorkerPool ({DEMO_FILE}) was not found: run the demo from the repository", exit_codes.BAD_INPUT
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (``q`` in 0..100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class QueueSummary:
    queue: str
    sent: int = 0
    completed: int = 0  # distinct sent tasks that completed
    duplicates: int = 0  # sent tasks that completed more than once
    wait_p50: float | None = None
    wait_p95: float | None = None
    peak_workers: int = 0
    final_workers: int = 0
    waiting: int = 0  # still in the queue at the end (an interrupted demo puts unfinished tasks back)
    scale_ups: int = 0
    scale_downs: int = 0


@dataclass
class DemoSummary:
    elapsed: float
    queues: list[QueueSummary] = field(default_factory=list)
    send_error: str | None = None
    interrupted: bool = False  # stopped before the end (Ctrl-C or --duration)
    logs: Path | None = None  # the workers' logs, kept after the demo

    @property
    def ok(self) -> bool:
        """Every task completed exactly once (or, when interrupted, is back in its queue: nothing lost)."""
        return self.send_error is None and all(
            q.duplicates == 0 and q.completed + (q.waiting if self.interrupted else 0) == q.sent for q in self.queues
        )


def summarize(
    client: redis.Redis, sent: SendResult, runtime: LocalRuntime, elapsed: float, final: dict[str, int]
) -> DemoSummary:
    completions: dict[bytes, bytes] = client.hgetall(demo_app.COMPLETIONS_KEY)  # type: ignore[assignment]
    counts = {key.decode(): int(value) for key, value in completions.items()}
    summary = DemoSummary(elapsed=elapsed, send_error=sent.error)
    for queue, figures in runtime.dashboard.queues.items():
        ids = sent.sent.get(queue, [])
        waits_raw: list[bytes] = client.lrange(demo_app.WAITS_KEY.format(queue=queue), 0, -1)  # type: ignore[assignment]
        waits = [float(w) for w in waits_raw]
        ups = downs = 0
        for _at, message in runtime.dashboard.all_events:
            if message.startswith(f"{queue}: scale up"):
                ups += 1
            elif message.startswith(f"{queue}: scale down"):
                downs += 1
        summary.queues.append(
            QueueSummary(
                queue=queue,
                sent=len(ids),
                completed=sum(1 for task_id in ids if counts.get(task_id, 0) >= 1),
                duplicates=sum(1 for task_id in ids if counts.get(task_id, 0) > 1),
                wait_p50=percentile(waits, 50),
                wait_p95=percentile(waits, 95),
                peak_workers=figures.peak_workers,
                final_workers=final.get(queue, 0),
                waiting=int(client.llen(queue)),  # type: ignore[arg-type]
                scale_ups=ups,
                scale_downs=downs,
            )
        )
    return summary


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}s"


def print_summary(summary: DemoSummary, out: TextIO, plot: Path | None) -> None:
    lines = [
        "",
        f"demo {'stopped after' if summary.interrupted else 'finished in'} {summary.elapsed:.0f}s",
        "",
        f"  {'queue':<8}{'sent':>7}{'completed':>11}{'dupes':>7}{'wait p50':>10}{'wait p95':>10}"
        f"{'peak workers':>14}{'scale ups/downs':>17}{'at the end':>12}",
    ]
    for q in summary.queues:
        lines.append(
            f"  {q.queue:<8}{q.sent:>7}{q.completed:>11}{q.duplicates:>7}{_seconds(q.wait_p50):>10}"
            f"{_seconds(q.wait_p95):>10}{q.peak_workers:>14}{f'{q.scale_ups}/{q.scale_downs}':>17}"
            f"{f'{q.final_workers} workers':>12}"
        )
    total_sent = sum(q.sent for q in summary.queues)
    total_done = sum(q.completed for q in summary.queues)
    lines.append("")
    if summary.interrupted:
        waiting = sum(q.waiting for q in summary.queues)
        verdict = "nothing lost" if summary.ok else "SOME TASKS ARE MISSING"
        lines.append(
            f"stopped early: {total_done} of {total_sent} completed, {waiting} back in their queue ({verdict})"
        )
    elif summary.ok:
        lines.append(f"every task completed exactly once: {total_done} of {total_sent}")
    else:
        lines.append(f"NOT every task completed exactly once: {total_done} of {total_sent} completed")
    if summary.send_error:
        lines.append(f"the load generator stopped early: {summary.send_error}")
    if plot is not None:
        lines.append(f"plot: {plot}")
    if summary.logs is not None:
        lines.append(f"worker logs: {summary.logs}")
    lines.append("next: workerpool-operator local -f examples/demo/workerpool.yaml (your own pool: your YAML)")
    out.write("\n".join(lines) + "\n")
    out.flush()


def write_plot(timeline: Sequence[Sample], queues: Sequence[str], path: Path, title: str) -> None:
    """Backlog, in-flight and workers over time, one panel per queue (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min((s.at for s in timeline), default=0.0)
    fig, axes = plt.subplots(len(queues), 1, figsize=(10, 3.2 * len(queues)), sharex=True, squeeze=False)
    for ax, queue in zip(axes[:, 0], queues, strict=True):
        points = [s for s in timeline if s.queue == queue]
        t = [s.at - start for s in points]
        ax.fill_between(t, [s.backlog for s in points], step="post", alpha=0.3, color="tab:orange", label="backlog")
        ax.step(t, [s.in_flight for s in points], where="post", color="tab:red", lw=1, label="in flight")
        ax.set_ylabel("tasks")
        ax.set_title(f"queue {queue}", loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        workers_ax = ax.twinx()
        workers_ax.step(t, [s.workers for s in points], where="post", color="tab:blue", lw=2, label="workers")
        workers_ax.set_ylabel("workers", color="tab:blue")
        workers_ax.set_ylim(bottom=0, top=max([s.workers for s in points] + [1]) + 1)
        workers_ax.yaxis.get_major_locator().set_params(integer=True)
        handles = ax.get_legend_handles_labels()[0] + workers_ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run_demo(
    *,
    duration: float = 60.0,
    plot: Path | None = None,
    redis_url: str | None = None,
    live: bool | None = None,
    out: TextIO | None = None,
    plan: LoadPlan | None = None,
    file: Path | None = None,
) -> DemoSummary:
    out = out or sys.stdout
    workerpool = load_pool(file or demo_file())
    with redis_for(redis_url) as (url, description):
        pool = plan_pool(workerpool, url, loglevel="warning")
        queues = list(pool.plans)
        if plan is None:
            plan = demo_plan(queues[0], queues[-1])
        client = redis.Redis.from_url(url)
        client.delete(demo_app.COMPLETIONS_KEY, *(demo_app.WAITS_KEY.format(queue=q) for q in queues))

        stop, force = asyncio.Event(), asyncio.Event()
        sending_stop = threading.Event()
        sent = SendResult()
        started = time.monotonic()

        finished = asyncio.Event()  # the load is done, every task completed, every worker gone

        async def check_done(result: PoolResult) -> None:
            if sender.done() and not runtime.backend.all_workers() and _all_completed(client, sent):
                finished.set()
                stop.set()
            elif time.monotonic() - started >= duration:
                stop.set()

        title = f"workerpool-operator demo · {len(plan.phases)} bursts over {plan.duration:.0f}s · {description}"
        runtime = LocalRuntime(pool, url, title=title, live=live, out=out, on_result=check_done)
        with stop_on_signals(stop, force):
            async with runtime:
                sender = asyncio.ensure_future(asyncio.to_thread(send_plan, url, plan, sending_stop, result=sent))
                try:
                    await runtime.run(stop)
                finally:
                    sending_stop.set()
                    await sender
                    final = {q: len(runtime.backend.workers(pool.key, q)) for q in queues}
                    await runtime.shutdown(force)
            if runtime.failure:
                raise LocalError(runtime.failure)
            summary = summarize(client, sent, runtime, time.monotonic() - started, final)
            summary.interrupted = not finished.is_set()
            summary.logs = runtime.workdir / "logs"
        client.close()
    if plot is not None:
        write_plot(runtime.dashboard.timeline, queues, plot, f"WorkerPool {workerpool.name}: autoscaling on demand")
    print_summary(summary, out, plot)
    return summary


def _all_completed(client: redis.Redis, sent: SendResult) -> bool:
    total = len(sent.ids)
    return total > 0 and int(client.hlen(demo_app.COMPLETIONS_KEY)) >= total  # type: ignore[arg-type]


def main(args: Any) -> int:
    """Entry from the CLI (``args`` from argparse)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = asyncio.run(
            run_demo(
                duration=args.duration,
                plot=Path(args.plot) if args.plot else None,
                redis_url=args.redis,
                live=args.live,
            )
        )
    except LocalError as error:
        print(f"workerpool-operator demo: {error}", file=sys.stderr)
        return error.code
    return exit_codes.OK if summary.ok else exit_codes.FAILED
