"""What ``simulate`` prints and draws: the summary table, the timeline CSV and the plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence

from workerpool_operator.sim.simulate import TIMELINE_COLUMNS, SimResult


def summary_rows(results: Sequence[SimResult]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("", *(r.label for r in results))]
    rows.append(("tasks done", *(f"{r.finished:,} of {r.tasks:,}" for r in results)))
    rows.append(("task wait p50", *(f"{r.wait_percentile(50):.1f} s" for r in results)))
    rows.append(("task wait p95", *(f"{r.wait_percentile(95):.1f} s" for r in results)))
    rows.append(("task wait max", *(f"{r.max_wait:.1f} s" for r in results)))
    rows.append(("replica-seconds", *(f"{r.replica_seconds:,.0f}" for r in results)))
    rows.append(("÷ physical minimum", *(f"{r.cost_ratio:.2f}x" for r in results)))
    rows.append(("mean replicas", *(f"{r.replica_seconds / max(r.duration, 1e-9):.2f}" for r in results)))
    rows.append(("peak replicas", *(str(r.peak_replicas) for r in results)))
    rows.append(("scale events", *(str(r.scale_events) for r in results)))
    rows.append(("workers drained", *(str(r.drains) for r in results)))
    rows.append(("tasks killed", *(str(r.killed) for r in results)))
    rows.append(("  redelivered", *(str(r.redelivered) for r in results)))
    rows.append(("  lost", *(str(r.lost) for r in results)))
    rows.append(("simulated", *(f"{r.duration / 3600:.2f} h" for r in results)))
    return rows


def format_summary(results: Sequence[SimResult]) -> str:
    rows = summary_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def write_timeline(path: str, results: Sequence[SimResult]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TIMELINE_COLUMNS)
        for result in results:
            for row in result.timeline:
                writer.writerow(
                    (result.label, f"{row.time:.3f}", row.backlog, row.in_flight, row.replicas, row.ready, row.pods,
                     row.draining, row.desired, row.reason)
                )  # fmt: skip


def plot_timeline(path: str, results: Sequence[SimResult], title: str) -> None:
    """A PNG of backlog and replicas over time, one line per policy."""
    from matplotlib.figure import Figure  # optional dependency, imported only for --plot
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 6.5), layout="constrained")
    backlog_axes, replica_axes = figure.subplots(2, 1, sharex=True)
    span = max((r.duration for r in results), default=0.0)
    scale, unit = (3600.0, "hours") if span > 3 * 3600 else (60.0, "minutes")
    colors = {"ours": "tab:blue", "keda": "tab:orange"}
    for result in results:
        times = [row.time / scale for row in result.timeline]
        color = colors.get(result.policy)
        layer = 3 if result.policy == "ours" else 2  # ours on top: it is the one being tried
        label = f"{result.label} (wait p95 {result.wait_percentile(95):.1f} s, {result.replica_seconds:,.0f} replica-s)"
        backlog_axes.plot(
            times, [row.backlog for row in result.timeline], color=color, lw=1.0, label=label, zorder=layer
        )
        replica_axes.step(times, [row.pods for row in result.timeline], where="post", color=color, lw=1.2,
                          label=f"{result.label}: pods (all)", zorder=layer)  # fmt: skip
        replica_axes.step(times, [row.ready for row in result.timeline], where="post", color=color, lw=0.8,
                          ls=":", label=f"{result.label}: ready", zorder=layer)  # fmt: skip
    if results and results[0].trace_end < span:
        for axes in (backlog_axes, replica_axes):
            axes.axvline(results[0].trace_end / scale, color="grey", lw=0.8, ls="--")
    backlog_axes.set_ylabel("tasks waiting")
    backlog_axes.set_title(title)
    backlog_axes.legend(loc="upper right", fontsize="small")
    replica_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    replica_axes.set_ylabel("pods")
    replica_axes.set_xlabel(f"time ({unit})")
    replica_axes.legend(loc="upper right", fontsize="small")
    for axes in (backlog_axes, replica_axes):
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
        axes.set_xlim(0, span / scale if span else 1)
    figure.savefig(path, dpi=110)
